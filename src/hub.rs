//! The hub: which local sessions are subscribed to which channel, and the fan-out of
//! one encoded frame to all of them.
//!
//! The hub knows nothing of Redis; [`crate::subscriptions`] decides when the node
//! subscribes on the backplane. Fan-out is synchronous and never awaits: under the
//! channel's guard it only appends the shared frame to each subscriber's bounded queue
//! (which fixes every connection's order); the socket writes happen after the guard is
//! released ([`Flush::run_all`]), so no dashmap guard is held across an `.await` or a
//! system call.
//!
//! With write coalescing on, a plain channel's frames are not queued one by one: they
//! are framed back to back into the channel's batch, and the coalescer's tick hands
//! that one buffer to every subscriber ([`Hub::release_batch`]), so a delivery costs
//! one queue entry and one write per channel and tick, whatever the channel's rate.

mod batch;
pub mod coalesce;
mod going_live;
mod subscriber;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;

use crate::metrics::Metrics;

use self::batch::Batch;
use self::coalesce::Coalescer;
pub use self::going_live::GoLive;
use self::subscriber::{Next, Route, buffer_frame, next_in_sequence};
pub use self::subscriber::{RecoveryBuffer, Seq, SessionId, Subscriber};
use crate::connection::frame::Frame;
use crate::connection::outbox::{Flush, Pushed};

#[derive(Default)]
struct ChannelState {
    subscribers: Vec<Subscriber>,
    /// The backplane confirmed the node's subscription to this channel.
    confirmed: bool,
    /// The epoch and newest offset delivered on this node (durable channels), for
    /// duplicate suppression and gap detection.
    position: Option<(Arc<str>, u64)>,
    /// Coalescing: plain frames for the live subscribers since the last tick. Bounded
    /// by the coalescer's batch limits; a full batch is released at once.
    batch: Option<Batch>,
    /// The channel is on the coalescer's list for the next tick.
    listed: bool,
}

/// The outcome of one fan-out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    pub queued: u64,
    pub dropped: u64,
    /// The frame was not delivered: it does not follow the last delivered offset (or
    /// belongs to another epoch). The caller must have the gap checked.
    pub gap: bool,
}

pub struct Hub {
    channels: DashMap<Arc<str>, ChannelState>,
    metrics: Arc<Metrics>,
    /// Write coalescing, when configured: fan-outs defer their writes to its tick.
    coalescer: Option<Arc<Coalescer>>,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            channels: DashMap::new(),
            metrics,
            coalescer: None,
        }
    }

    /// A hub whose fan-outs are written on `coalescer`'s tick instead of at once.
    pub fn with_coalescer(metrics: Arc<Metrics>, coalescer: Arc<Coalescer>) -> Self {
        Self {
            coalescer: Some(coalescer),
            ..Self::new(metrics)
        }
    }

    /// Adds a subscriber (the caller guarantees it is not already subscribed).
    /// Returns whether the backplane subscription is already confirmed.
    pub fn add(&self, channel: &Arc<str>, sub: Subscriber) -> bool {
        let mut entry = self.channels.entry(channel.clone()).or_insert_with(|| {
            self.metrics.channels.increment(1.0);
            ChannelState::default()
        });
        // What was published before it joined is not its to receive.
        let flushes = self.release_batch_locked(channel, &mut entry);
        entry.subscribers.push(sub);
        let confirmed = entry.confirmed;
        drop(entry);
        self.write(flushes);
        confirmed
    }

    /// Removes a session from a channel. Returns true when the channel has no local
    /// subscriber left (its entry stays, confirmed, until [`Hub::remove_if_empty`]).
    pub fn remove(&self, channel: &str, session: SessionId) -> bool {
        let Some(mut entry) = self.channels.get_mut(channel) else {
            return false;
        };
        // What was published while it was subscribed is still its to receive.
        let flushes = self.release_batch_locked(channel, &mut entry);
        if let Some(i) = entry.subscribers.iter().position(|s| s.session == session) {
            entry.subscribers.swap_remove(i);
        }
        let empty = entry.subscribers.is_empty();
        drop(entry);
        self.write(flushes);
        empty
    }

    /// Drops the channel's entry if nobody subscribed meanwhile. Atomic with [`Hub::add`].
    pub fn remove_if_empty(&self, channel: &str) -> bool {
        let removed = self
            .channels
            .remove_if(channel, |_, st| st.subscribers.is_empty())
            .is_some();
        if removed {
            self.metrics.channels.decrement(1.0);
        }
        removed
    }

    pub fn is_confirmed(&self, channel: &str) -> bool {
        self.channels.get(channel).is_some_and(|e| e.confirmed)
    }

    pub fn set_confirmed(&self, channel: &str, confirmed: bool) {
        if let Some(mut e) = self.channels.get_mut(channel) {
            e.confirmed = confirmed;
        }
    }

    /// Marks every channel unconfirmed (the backplane lost its subscriptions).
    pub fn unconfirm_all(&self) {
        for mut e in self.channels.iter_mut() {
            e.confirmed = false;
        }
    }

    /// Names of all channels with an entry (for re-subscribing after a reconnect).
    pub fn channel_names(&self) -> Vec<Arc<str>> {
        self.channels.iter().map(|e| e.key().clone()).collect()
    }

    pub fn contains(&self, channel: &str) -> bool {
        self.channels.contains_key(channel)
    }

    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.channels
            .get(channel)
            .map(|e| e.subscribers.len())
            .unwrap_or(0)
    }

    /// The durable position delivered on this node.
    pub fn position(&self, channel: &str) -> Option<(Arc<str>, u64)> {
        self.channels.get(channel).and_then(|e| e.position.clone())
    }

    /// Fans one frame out to every local subscriber of `channel`.
    ///
    /// `seq` is a durable frame's offset and epoch. The channel's position on this node
    /// moves only with frames actually fanned out: a frame at or below it is a
    /// duplicate (a gap fill raced the live path) and skipped; a frame that skips
    /// offsets, or comes from another epoch, is held back and reported as a gap, so
    /// that the gap filler delivers it in order from history.
    pub fn dispatch(
        &self,
        channel: &str,
        frame: &Utf8Bytes,
        seq: Option<(u64, &str)>,
        since: Instant,
    ) -> Fanout {
        let Some((off, epoch)) = seq else {
            // The exclusive guard also orders concurrent fan-outs of one channel (the
            // memory engine publishes from many tasks): every subscriber sees one order.
            let Some(mut entry) = self.channels.get_mut(channel) else {
                return Fanout::default();
            };
            if let Some(c) = &self.coalescer {
                return self.batch(c, &mut entry, frame, since);
            }
            // At most one flush per subscriber: sized once, never regrown.
            let mut flushes = Vec::with_capacity(entry.subscribers.len());
            let wire = Frame::framed_text(frame);
            let out = self.fan_out_plain(channel, &entry, frame, &wire, &mut flushes);
            drop(entry);
            return self.finish(out, flushes, since);
        };
        let Some(mut entry) = self.channels.get_mut(channel) else {
            return Fanout::default();
        };
        // Durable frames are not batched (each subscriber keeps its own sequence); a
        // plain batch of the same channel goes first, to keep one order.
        let earlier = self.release_batch_locked(channel, &mut entry);
        if let Some(c) = &self.coalescer {
            // (Only a coalescing hub has batches.)
            c.defer(earlier);
        }
        match &entry.position {
            Some((e, last)) if &**e == epoch => {
                if off <= *last {
                    return Fanout::default();
                }
                if off > *last + 1 {
                    return Fanout {
                        gap: true,
                        ..Fanout::default()
                    };
                }
            }
            Some(_) => {
                return Fanout {
                    gap: true,
                    ..Fanout::default()
                };
            }
            None => {}
        }
        let epoch: Arc<str> = epoch.into();
        // For the log line of a gap close: None means this is the first durable frame
        // the channel's entry on this node sees.
        let node_had = entry.position.as_ref().map(|(_, o)| *o);
        entry.position = Some((epoch.clone(), off));
        let mut flushes = Vec::with_capacity(entry.subscribers.len());
        let wire = Frame::framed_text(frame);
        let at = (off, &epoch, node_had);
        let out = self.fan_out_durable(channel, &mut entry, frame, &wire, at, &mut flushes);
        drop(entry);
        self.finish(out, flushes, since)
    }

    /// Writes flushes now, or on the coalescer's tick when there is one.
    fn write(&self, flushes: Vec<Flush>) {
        if flushes.is_empty() {
            return;
        }
        match &self.coalescer {
            Some(c) => c.defer(flushes),
            None => Flush::run_all(flushes),
        }
    }

    /// Writes what the fan-out queued (the guard is released by now) and counts it.
    fn finish(&self, out: Fanout, flushes: Vec<Flush>, since: Instant) -> Fanout {
        self.write(flushes);
        if out.queued > 0 && self.coalescer.is_none() {
            self.metrics
                .delivery_latency
                .record(since.elapsed().as_secs_f64());
        }
        self.count(out)
    }

    /// The loop of non-blocking appends; the caller holds the channel's guard across
    /// it, and across nothing else (no await, no other map, no write).
    /// `frame` is the message, `wire` the same framed once for the sockets.
    fn fan_out_plain(
        &self,
        channel: &str,
        state: &ChannelState,
        frame: &Utf8Bytes,
        wire: &Frame,
        flushes: &mut Vec<Flush>,
    ) -> Fanout {
        let mut out = Fanout::default();
        for sub in &state.subscribers {
            match &sub.route {
                Route::Live => self.push(channel, sub, wire, &mut out, flushes),
                Route::Buffer(buffer) => buffer_frame(buffer, None, frame, &mut out),
            }
        }
        out
    }

    /// As [`Hub::fan_out_plain`], keeping each subscriber's own sequence. `at` is the
    /// frame's offset and epoch, and the channel's offset on this node before it.
    fn fan_out_durable(
        &self,
        channel: &str,
        state: &mut ChannelState,
        frame: &Utf8Bytes,
        wire: &Frame,
        at: (u64, &Arc<str>, Option<u64>),
        flushes: &mut Vec<Flush>,
    ) -> Fanout {
        let (off, epoch, node_had) = at;
        let mut out = Fanout::default();
        for sub in &mut state.subscribers {
            match &sub.route {
                Route::Live => match next_in_sequence(&mut sub.seq, off, epoch) {
                    Next::Deliver => self.push(channel, sub, wire, &mut out, flushes),
                    Next::Skip => {}
                    Next::Gap => self.close_for_gap(channel, sub, (off, epoch, node_had), "live"),
                },
                Route::Buffer(buffer) => {
                    buffer_frame(buffer, Some((off, epoch.clone())), frame, &mut out)
                }
            }
        }
        out
    }

    fn push(
        &self,
        channel: &str,
        sub: &Subscriber,
        wire: &Frame,
        out: &mut Fanout,
        flushes: &mut Vec<Flush>,
    ) {
        let messages = wire.messages() as u64;
        let (pushed, flush) = sub.outbox.enqueue(wire.clone());
        flushes.extend(flush);
        match pushed {
            Pushed::Queued => out.queued += messages,
            Pushed::Overflowed => {
                out.dropped += messages;
                self.metrics.slow_consumer_closes.increment(1);
                // Only the push that closed it gets here: one line per 4008.
                let (queued, capacity) = sub.outbox.depth();
                tracing::info!(
                    channel,
                    session = sub.session,
                    queued,
                    capacity,
                    frame_messages = messages,
                    "slow consumer: queue full; closing with 4008"
                );
            }
            Pushed::Dropped => out.dropped += messages,
            Pushed::Gone => {}
        }
    }

    /// Closes a live subscriber that a durable frame cannot follow. `at` is the frame's
    /// offset and epoch and the channel's offset on this node before it (None: no
    /// durable frame yet). The subscriber's `seq` is still what it had (a gap leaves it
    /// alone); `path` says whether the frame came live or from its recovery buffer, so
    /// a 4008 in the log explains itself.
    fn close_for_gap(
        &self,
        channel: &str,
        sub: &Subscriber,
        at: (u64, &str, Option<u64>),
        path: &'static str,
    ) {
        let (off, epoch, node_had) = at;
        if sub
            .outbox
            .control()
            .close(crate::error::CloseReason::SlowConsumer)
        {
            self.metrics.gap_closes.increment(1);
            let (had_epoch, had_offset) = match &sub.seq {
                Some((e, o)) => (&**e, Some(*o)),
                None => ("", None),
            };
            tracing::info!(
                channel,
                session = sub.session,
                had_epoch,
                had_offset,
                offset = off,
                epoch,
                node_had,
                path,
                "durable frame does not follow the subscriber's last offset; closing with 4008"
            );
        }
    }

    fn count(&self, out: Fanout) -> Fanout {
        self.metrics.delivered.increment(out.queued);
        if out.dropped > 0 {
            self.metrics.dropped.increment(out.dropped);
        }
        out
    }

    /// Closes every local subscriber of `channel` with `reason` (an unfillable gap).
    /// Returns how many subscribers the channel had, and the sessions this close ended
    /// (not those already closing for another reason), for the caller's log line.
    pub fn close_subscribers(
        &self,
        channel: &str,
        reason: crate::error::CloseReason,
    ) -> (usize, Vec<SessionId>) {
        let Some(entry) = self.channels.get(channel) else {
            return (0, Vec::new());
        };
        let ended = entry
            .subscribers
            .iter()
            .filter(|sub| sub.outbox.control().close(reason))
            .map(|sub| sub.session)
            .collect();
        (entry.subscribers.len(), ended)
    }

    /// Replaces the durable position (after its subscribers were closed for a gap).
    pub fn reset_position(&self, channel: &str, epoch: &str, offset: u64) {
        if let Some(mut e) = self.channels.get_mut(channel) {
            e.position = Some((epoch.into(), offset));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::outbox::testing::{connection, fill, peer};

    fn hub() -> Hub {
        Hub::new(Arc::new(Metrics::new("t")))
    }

    #[tokio::test]
    async fn dispatch_reaches_every_subscriber_once() {
        let hub = hub();
        let ch: Arc<str> = "c".into();
        let (a, _, ta) = connection(8).await;
        let (b, _, tb) = connection(8).await;
        hub.add(&ch, Subscriber::live(1, a));
        hub.add(&ch, Subscriber::live(2, b));
        let f = hub.dispatch("c", &"x".into(), None, Instant::now());
        assert_eq!(
            f,
            Fanout {
                queued: 2,
                dropped: 0,
                gap: false
            }
        );
        let (mut pa, mut pb) = (peer(ta).await, peer(tb).await);
        assert_eq!(pa.text().await.as_deref(), Some("x"));
        assert_eq!(pb.text().await.as_deref(), Some("x"));
        assert!(pa.silent().await);
    }

    #[tokio::test]
    async fn a_full_queue_drops_only_that_subscriber() {
        let hub = hub();
        let ch: Arc<str> = "c".into();
        let (slow, slow_ctl, _slow_tcp) = connection(1).await;
        let (fast, fast_ctl, fast_tcp) = connection(8).await;
        fill(&slow, 1);
        hub.add(&ch, Subscriber::live(1, slow));
        hub.add(&ch, Subscriber::live(2, fast));
        let f = hub.dispatch("c", &"1".into(), None, Instant::now());
        assert_eq!(
            f,
            Fanout {
                queued: 1,
                dropped: 1,
                gap: false
            }
        );
        hub.dispatch("c", &"2".into(), None, Instant::now());
        assert!(slow_ctl.is_closing());
        assert!(!fast_ctl.is_closing());
        let mut p = peer(fast_tcp).await;
        assert_eq!(p.text().await.as_deref(), Some("1"));
        assert_eq!(p.text().await.as_deref(), Some("2"));
    }

    #[tokio::test]
    async fn remove_if_empty_keeps_a_channel_that_gained_a_subscriber() {
        let hub = hub();
        let ch: Arc<str> = "c".into();
        let (a, _, _ta) = connection(8).await;
        hub.add(&ch, Subscriber::live(1, a.clone()));
        assert!(hub.remove("c", 1));
        hub.add(&ch, Subscriber::live(2, a));
        assert!(!hub.remove_if_empty("c"));
        assert!(hub.remove("c", 2));
        assert!(hub.remove_if_empty("c"));
        assert_eq!(hub.subscriber_count("c"), 0);
    }

    #[tokio::test]
    async fn duplicate_offsets_are_not_delivered_twice() {
        let hub = hub();
        let ch: Arc<str> = "c".into();
        let (a, _, ta) = connection(8).await;
        hub.add(&ch, Subscriber::live(1, a));
        hub.dispatch("c", &"1".into(), Some((1, "e")), Instant::now());
        hub.dispatch("c", &"1".into(), Some((1, "e")), Instant::now());
        hub.dispatch("c", &"2".into(), Some((2, "e")), Instant::now());
        // A skipped offset, or another epoch, is a gap: held back, not delivered.
        assert!(
            hub.dispatch("c", &"4".into(), Some((4, "e")), Instant::now())
                .gap
        );
        assert!(
            hub.dispatch("c", &"3".into(), Some((3, "f")), Instant::now())
                .gap
        );
        let mut p = peer(ta).await;
        assert_eq!(p.text().await.as_deref(), Some("1"));
        assert_eq!(p.text().await.as_deref(), Some("2"));
        assert!(p.silent().await);
    }

    #[tokio::test]
    async fn buffered_frames_are_released_after_history() {
        let hub = hub();
        let ch: Arc<str> = "c".into();
        let (a, _, ta) = connection(8).await;
        let (sub, _buf) = Subscriber::buffered(1, a, 8);
        hub.add(&ch, sub);
        for off in 5..=7 {
            hub.dispatch(
                "c",
                &off.to_string().into(),
                Some((off, "e")),
                Instant::now(),
            );
        }
        let mut p = peer(ta).await;
        assert!(p.silent().await, "nothing is live before go_live");
        assert_eq!(hub.go_live("c", 1, Some(("e", 5))), GoLive::Released(2));
        assert_eq!(p.text().await.as_deref(), Some("6"));
        assert_eq!(p.text().await.as_deref(), Some("7"));
        hub.dispatch("c", &"8".into(), Some((8, "e")), Instant::now());
        assert_eq!(p.text().await.as_deref(), Some("8"));
    }

    #[tokio::test]
    async fn a_large_fan_out_keeps_every_connections_order() {
        let hub = hub();
        let ch: Arc<str> = "c".into();
        let mut tcps = Vec::new();
        for i in 0..300 {
            let (o, _, t) = connection(64).await;
            hub.add(&ch, Subscriber::live(i, o));
            tcps.push(t);
        }
        for m in 0..20 {
            let f = hub.dispatch("c", &m.to_string().into(), None, Instant::now());
            assert_eq!(f.queued, 300);
        }
        for t in tcps {
            let mut p = peer(t).await;
            for m in 0..20 {
                assert_eq!(p.text().await, Some(m.to_string()));
            }
        }
    }
}
