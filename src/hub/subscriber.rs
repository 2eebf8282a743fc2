//! One local subscriber of a channel: its session and queue, where its frames go
//! right now (live, or a bounded buffer while it reads history), and the durable
//! sequence it has seen. The hub decides when a frame reaches it; this file says what
//! a subscriber does with one.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;

use super::Fanout;
use crate::connection::outbox::Outbox;

/// A node-local session number (the public session name is derived from it).
pub type SessionId = u64;

/// A durable frame's offset and epoch.
pub type Seq = (u64, Arc<str>);

/// Where a subscriber's frames go right now.
#[derive(Clone)]
pub(super) enum Route {
    /// Straight into the connection's queue.
    Live,
    /// Held back while the session reads history (recovery): frames wait here and
    /// are released, deduplicated by offset, once history has been sent.
    Buffer(Arc<std::sync::Mutex<RecoveryBuffer>>),
}

/// Live frames that arrived during a recovery. Bounded by the outbox size: a burst
/// larger than that during one recovery is treated like a slow consumer (4008).
pub struct RecoveryBuffer {
    /// Each frame with its durable offset and epoch.
    pub frames: Vec<(Option<Seq>, Utf8Bytes)>,
    pub overflowed: bool,
    pub(super) limit: usize,
}

/// One local subscriber of a channel.
#[derive(Clone)]
pub struct Subscriber {
    pub session: SessionId,
    pub outbox: Outbox,
    pub(super) route: Route,
    /// Durable channels: the epoch and the last offset this subscriber has (from its
    /// history or live frames). Frames at or below it are skipped; a frame beyond the
    /// next offset, or from another epoch, is a gap this subscriber cannot see filled,
    /// so it is closed with 4008 and recovers.
    pub(super) seq: Option<(Arc<str>, u64)>,
}

impl Subscriber {
    pub fn live(session: SessionId, outbox: Outbox) -> Self {
        Self {
            session,
            outbox,
            route: Route::Live,
            seq: None,
        }
    }

    /// A subscriber whose frames are buffered until [`Hub::go_live`].
    pub fn buffered(
        session: SessionId,
        outbox: Outbox,
        limit: usize,
    ) -> (Self, Arc<std::sync::Mutex<RecoveryBuffer>>) {
        let buffer = Arc::new(std::sync::Mutex::new(RecoveryBuffer {
            frames: Vec::new(),
            overflowed: false,
            limit,
        }));
        (
            Self {
                session,
                outbox,
                route: Route::Buffer(buffer.clone()),
                seq: None,
            },
            buffer,
        )
    }
}

/// What a subscriber does with a durable frame, given what it already has.
pub(super) enum Next {
    Deliver,
    Skip,
    Gap,
}

pub(super) fn next_in_sequence(
    seq: &mut Option<(Arc<str>, u64)>,
    off: u64,
    epoch: &Arc<str>,
) -> Next {
    match seq {
        Some((e, last)) if e == epoch => {
            if off <= *last {
                Next::Skip
            } else if off == *last + 1 {
                *last = off;
                Next::Deliver
            } else {
                Next::Gap
            }
        }
        Some(_) => Next::Gap,
        None => {
            *seq = Some((epoch.clone(), off));
            Next::Deliver
        }
    }
}

/// Holds a frame for a subscriber that is reading history (bounded; see
/// [`RecoveryBuffer`]).
pub(super) fn buffer_frame(
    buffer: &std::sync::Mutex<RecoveryBuffer>,
    seq: Option<Seq>,
    frame: &Utf8Bytes,
    out: &mut Fanout,
) {
    let mut b = buffer.lock().unwrap_or_else(|p| p.into_inner());
    if b.frames.len() < b.limit {
        b.frames.push((seq, frame.clone()));
        out.queued += 1;
    } else {
        b.overflowed = true;
        out.dropped += 1;
    }
}
