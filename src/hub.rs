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

pub mod coalesce;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use bytes::BytesMut;
use dashmap::DashMap;

use crate::metrics::Metrics;
use tokio_util::sync::CancellationToken;

use self::coalesce::Coalescer;
use crate::connection::frame::Frame;
use crate::connection::outbox::{Flush, Outbox, Pushed};

/// A node-local session number (the public session name is derived from it).
pub type SessionId = u64;

/// A durable frame's offset and epoch.
pub type Seq = (u64, Arc<str>);

/// Where a subscriber's frames go right now.
#[derive(Clone)]
enum Route {
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
    limit: usize,
}

/// One local subscriber of a channel.
#[derive(Clone)]
pub struct Subscriber {
    pub session: SessionId,
    pub outbox: Outbox,
    route: Route,
    /// Durable channels: the epoch and the last offset this subscriber has (from its
    /// history or live frames). Frames at or below it are skipped; a frame beyond the
    /// next offset, or from another epoch, is a gap this subscriber cannot see filled,
    /// so it is closed with 4008 and recovers.
    seq: Option<(Arc<str>, u64)>,
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

/// Frames of one channel waiting for the coalescer's tick, framed back to back.
struct Batch {
    wire: BytesMut,
    messages: usize,
    /// When the node took the batch's first message off the backplane: its wait is
    /// the batch's delivery latency.
    oldest: Instant,
}

impl Batch {
    fn into_frame(self) -> Frame {
        if self.messages == 1 {
            Frame::Framed(self.wire.freeze())
        } else {
            Frame::Batch {
                wire: self.wire.freeze(),
                messages: self.messages,
            }
        }
    }
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

    /// Coalescing: appends a plain frame to the channel's batch for its live
    /// subscribers (recovering ones buffer it now, as without coalescing). The
    /// returned `queued` counts the deliveries accepted; the metrics count them when
    /// the batch is released.
    fn batch(
        &self,
        coalescer: &Coalescer,
        entry: &mut dashmap::mapref::one::RefMut<'_, Arc<str>, ChannelState>,
        frame: &Utf8Bytes,
        since: Instant,
    ) -> Fanout {
        let mut buffered = Fanout::default();
        let mut live = 0;
        for sub in &entry.subscribers {
            match &sub.route {
                Route::Live => live += 1,
                Route::Buffer(buffer) => buffer_frame(buffer, None, frame, &mut buffered),
            }
        }
        self.count(buffered);
        if live == 0 {
            return buffered;
        }
        let batch = entry.batch.get_or_insert_with(|| Batch {
            wire: BytesMut::new(),
            messages: 0,
            oldest: since,
        });
        Frame::append_framed_text(&mut batch.wire, frame);
        batch.messages += 1;
        if coalescer.batch_is_full(batch.messages, batch.wire.len()) {
            let name = entry.key().clone();
            let flushes = self.release_batch_locked(&name, entry);
            coalescer.defer(flushes);
        } else if !entry.listed {
            // Under the guard, so that a tick that takes the list finds this batch.
            entry.listed = true;
            coalescer.list_batch(entry.key().clone());
        }
        Fanout {
            queued: buffered.queued + live,
            ..buffered
        }
    }

    /// Hands `channel`'s batch to its live subscribers' queues and adds the flushes
    /// to write to `flushes`: the coalescer's tick, for the channels it listed.
    pub fn release_batch(&self, channel: &str, flushes: &mut Vec<Flush>) {
        if let Some(mut entry) = self.channels.get_mut(channel) {
            entry.listed = false;
            let released = self.release_batch_locked(channel, &mut entry);
            drop(entry);
            flushes.extend(released);
        }
    }

    /// Queues the channel's batch, if any, for every live subscriber; the caller
    /// holds the guard and writes the flushes once it has released it.
    fn release_batch_locked(&self, channel: &str, entry: &mut ChannelState) -> Vec<Flush> {
        let Some(batch) = entry.batch.take() else {
            return Vec::new();
        };
        let oldest = batch.oldest;
        let wire = batch.into_frame();
        let mut out = Fanout::default();
        let mut flushes = Vec::with_capacity(entry.subscribers.len());
        for sub in &entry.subscribers {
            if let Route::Live = sub.route {
                self.push(channel, sub, &wire, &mut out, &mut flushes);
            }
        }
        if out.queued > 0 {
            // One sample per batch, its oldest message's wait: the tick writes right
            // after releasing (a full batch released early waits for that tick still).
            self.metrics
                .delivery_latency
                .record(oldest.elapsed().as_secs_f64());
        }
        self.count(out);
        flushes
    }

    /// With write coalescing on: releases the listed batches and writes what was
    /// deferred, once per tick, until `stop`; then once more. Returns at once without a
    /// coalescer.
    pub async fn run_coalescing(&self, stop: CancellationToken) {
        let Some(coalescer) = &self.coalescer else {
            return;
        };
        let mut tick = tokio::time::interval(coalescer.tick());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => self.write_coalesced(),
            }
        }
        self.write_coalesced();
    }

    /// One coalescing tick: releases the listed batches and writes every deferred flush.
    pub fn write_coalesced(&self) {
        let Some(coalescer) = &self.coalescer else {
            return;
        };
        let (channels, mut due) = coalescer.take_due();
        for channel in channels {
            self.release_batch(&channel, &mut due);
        }
        Flush::run_all(due);
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

/// What a subscriber does with a durable frame, given what it already has.
enum Next {
    Deliver,
    Skip,
    Gap,
}

fn next_in_sequence(seq: &mut Option<(Arc<str>, u64)>, off: u64, epoch: &Arc<str>) -> Next {
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
fn buffer_frame(
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
