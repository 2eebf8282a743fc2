//! The end of a recovery inside the hub: a subscriber that read history while its
//! live frames were buffered switches to live delivery, its buffered frames released
//! after what history gave it, without a frame slipping between the two
//! (docs/ARCHITECTURE.md decision 6).

use std::sync::Arc;

use super::subscriber::{Next, RecoveryBuffer, Route, next_in_sequence};
use super::{ChannelState, Hub, SessionId};
use crate::connection::frame::Frame;
use crate::connection::outbox::{Flush, Pushed};

/// The outcome of [`Hub::go_live`].
#[derive(Debug, PartialEq, Eq)]
pub enum GoLive {
    /// Buffered frames newer than the history were queued (this many).
    Released(usize),
    /// The buffer or the queue overflowed: the connection is closing with 4008.
    Overflowed,
    /// The subscriber is no longer there.
    Gone,
}

impl Hub {
    /// Switches a recovering subscriber to live delivery. `from` is the epoch and last
    /// offset it already has (its history, or the position it was answered); buffered
    /// frames after it are queued first. It runs under the channel's write guard, so
    /// no dispatch of this channel can slip a frame between the buffer and the queue.
    pub fn go_live(&self, channel: &str, session: SessionId, from: Option<(&str, u64)>) -> GoLive {
        let Some(mut entry) = self.channels.get_mut(channel) else {
            return GoLive::Gone;
        };
        // The batch was buffered for this subscriber already: release it first.
        let mut flushes = self.release_batch_locked(channel, &mut entry);
        let live = self.go_live_locked(channel, &mut entry, session, from, &mut flushes);
        drop(entry);
        self.write(flushes);
        live
    }

    fn go_live_locked(
        &self,
        channel: &str,
        entry: &mut ChannelState,
        session: SessionId,
        from: Option<(&str, u64)>,
        flushes: &mut Vec<Flush>,
    ) -> GoLive {
        let Some(sub) = entry.subscribers.iter_mut().find(|s| s.session == session) else {
            return GoLive::Gone;
        };
        let Route::Buffer(buffer) = std::mem::replace(&mut sub.route, Route::Live) else {
            return GoLive::Released(0);
        };
        sub.seq = from.map(|(e, o)| (Arc::from(e), o));
        let buffer = std::mem::replace(
            &mut *buffer.lock().unwrap_or_else(|p| p.into_inner()),
            RecoveryBuffer {
                frames: Vec::new(),
                overflowed: false,
                limit: 0,
            },
        );
        if buffer.overflowed {
            if sub
                .outbox
                .control()
                .close(crate::error::CloseReason::SlowConsumer)
            {
                tracing::info!(
                    channel,
                    session,
                    buffered = buffer.frames.len(),
                    limit = buffer.limit,
                    "slow consumer: recovery buffer overflowed while reading history; \
                     closing with 4008"
                );
            }
            return GoLive::Overflowed;
        }
        let node_has = entry.position.as_ref().map(|(_, o)| *o);
        let mut released = 0;
        for (seq, frame) in buffer.frames {
            if let Some((off, epoch)) = &seq {
                match next_in_sequence(&mut sub.seq, *off, epoch) {
                    Next::Deliver => {}
                    Next::Skip => continue,
                    Next::Gap => {
                        let at = (*off, &**epoch, node_has);
                        self.close_for_gap(channel, sub, at, "recovery buffer");
                        return GoLive::Overflowed;
                    }
                }
            }
            let (pushed, flush) = sub.outbox.enqueue(Frame::Text(frame));
            flushes.extend(flush);
            if pushed != Pushed::Queued {
                if pushed == Pushed::Overflowed {
                    let (queued, capacity) = sub.outbox.depth();
                    tracing::info!(
                        channel,
                        session,
                        queued,
                        capacity,
                        released,
                        "slow consumer: queue full releasing the recovery buffer; \
                         closing with 4008"
                    );
                }
                return GoLive::Overflowed;
            }
            released += 1;
        }
        GoLive::Released(released)
    }
}
