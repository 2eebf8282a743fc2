//! Write coalescing (`server.write_coalesce`): instead of writing a fan-out at once,
//! the node holds its connections' flushes for one tick, so that every frame that
//! arrives for a connection within the tick shares one `write`.
//!
//! One timer for the whole node, not one per socket. Plain channels collect their
//! frames into one batch per channel ([`crate::hub`]) and list themselves here; each
//! tick releases every listed batch into its subscribers' queues and writes
//! everything deferred. A connection whose flush is deferred counts as busy, so later
//! frames only append to its queue (the outbox's bound still applies, counting every
//! message of a batch). Off by default: it trades up to one tick of latency for fewer
//! system calls and queue operations on high-rate channels.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::connection::outbox::Flush;

/// A batch this large is released at once instead of on the tick: one write of it
/// already costs little per message, and it bounds a channel's batch memory.
const BATCH_BYTES: usize = 64 * 1024;
/// Most messages in one batch (fewer if the outbox holds fewer), so that a batch
/// always fits an empty queue.
const BATCH_MESSAGES: usize = 256;

pub struct Coalescer {
    tick: Duration,
    batch_messages: usize,
    /// Flushes waiting for the next tick. Bounded by the number of open connections:
    /// a connection has at most one flush.
    deferred: Mutex<Vec<Flush>>,
    /// Channels holding a batch for the next tick, each listed at most once: bounded
    /// by the number of channels with local subscribers.
    batched: Mutex<Vec<Arc<str>>>,
}

impl Coalescer {
    /// A coalescer of period `tick` for connections whose queues hold
    /// `outbox_messages` messages.
    pub fn new(tick: Duration, outbox_messages: usize) -> Self {
        Self {
            tick,
            batch_messages: BATCH_MESSAGES.min(outbox_messages).max(1),
            deferred: Mutex::new(Vec::new()),
            batched: Mutex::new(Vec::new()),
        }
    }

    /// Whether a batch of this size is to be released now rather than on the tick.
    pub fn batch_is_full(&self, messages: usize, bytes: usize) -> bool {
        messages >= self.batch_messages || bytes >= BATCH_BYTES
    }

    /// Lists a channel whose batch the next tick releases.
    pub fn list_batch(&self, channel: Arc<str>) {
        self.batched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(channel);
    }

    /// Holds these flushes until the next tick.
    pub fn defer(&self, flushes: Vec<Flush>) {
        if flushes.is_empty() {
            return;
        }
        self.deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(flushes);
    }

    /// How often the hub's coalescing task releases what is due.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// What one tick releases: the channels whose batches are listed, and the flushes
    /// deferred so far. The hub releases the batches into those flushes and writes them
    /// ([`super::Hub::write_coalesced`]); the coalescer itself knows no channel entries.
    pub fn take_due(&self) -> (Vec<Arc<str>>, Vec<Flush>) {
        let channels = std::mem::take(&mut *self.batched.lock().unwrap_or_else(|p| p.into_inner()));
        let due = std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|p| p.into_inner()));
        (channels, due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::frame::Frame;
    use crate::connection::outbox::testing::{connection, peer};
    use crate::error::CloseReason;
    use crate::hub::{Hub, Subscriber};
    use crate::metrics::Metrics;
    use futures_util::StreamExt;
    use std::time::Instant;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_util::sync::CancellationToken;

    fn hub(tick: Duration) -> (Arc<Hub>, Arc<Coalescer>) {
        hub_batching(tick, 16)
    }

    /// A coalescing hub whose batches hold at most `batch` messages.
    fn hub_batching(tick: Duration, batch: usize) -> (Arc<Hub>, Arc<Coalescer>) {
        let coalescer = Arc::new(Coalescer::new(tick, batch));
        let metrics = Arc::new(Metrics::new("test"));
        (
            Arc::new(Hub::with_coalescer(metrics, coalescer.clone())),
            coalescer,
        )
    }

    #[tokio::test]
    async fn frames_within_one_tick_are_written_together_at_the_tick() {
        let (hub, coalescer) = hub(Duration::from_millis(600));
        let stop = CancellationToken::new();
        let runner = tokio::spawn({
            let h = hub.clone();
            let stop = stop.clone();
            async move { h.run_coalescing(stop).await }
        });
        // `interval` ticks once at once; dispatch after that first tick.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (outbox, _control, tcp) = connection(16).await;
        // A frame that took the connection's flush before the batch (deferred here by
        // hand, as a fan-out's would be) goes out first, the batch after it.
        let (_, flush) = outbox.enqueue(Frame::text("reply"));
        coalescer.defer(flush.into_iter().collect());
        let ch: Arc<str> = "c".into();
        hub.add(&ch, Subscriber::live(1, outbox));
        for i in 0..3 {
            let f = hub.dispatch("c", &i.to_string().into(), None, Instant::now());
            assert_eq!(f.queued, 1);
        }
        let mut p = peer(tcp).await;
        assert!(p.silent().await, "nothing is written before the tick");
        assert_eq!(p.text().await.as_deref(), Some("reply"));
        for i in 0..3 {
            assert_eq!(p.text().await, Some(i.to_string()));
        }
        stop.cancel();
        runner.await.unwrap();
    }

    #[tokio::test]
    async fn a_batch_reaches_the_subscribers_of_its_publishing_time_only() {
        let (hub, _) = hub(Duration::from_secs(3600));
        let ch: Arc<str> = "c".into();
        let (stays, _c1, tcp_stays) = connection(16).await;
        let (leaves, _c2, tcp_leaves) = connection(16).await;
        let (joins, _c3, tcp_joins) = connection(16).await;
        // The sessions keep their outboxes (and so their sockets) after leaving.
        hub.add(&ch, Subscriber::live(1, stays.clone()));
        hub.add(&ch, Subscriber::live(2, leaves.clone()));
        hub.dispatch("c", &"a".into(), None, Instant::now());
        hub.remove("c", 2);
        hub.add(&ch, Subscriber::live(3, joins.clone()));
        hub.dispatch("c", &"b".into(), None, Instant::now());
        hub.write_coalesced();
        let (mut stays, mut leaves, mut joins) = (
            peer(tcp_stays).await,
            peer(tcp_leaves).await,
            peer(tcp_joins).await,
        );
        assert_eq!(stays.text().await.as_deref(), Some("a"));
        assert_eq!(stays.text().await.as_deref(), Some("b"));
        assert_eq!(
            leaves.text().await.as_deref(),
            Some("a"),
            "published before it left"
        );
        assert!(leaves.silent().await);
        assert_eq!(
            joins.text().await.as_deref(),
            Some("b"),
            "published after it joined"
        );
        assert!(joins.silent().await);
    }

    #[tokio::test]
    async fn a_released_batch_records_its_oldest_messages_wait() {
        let coalescer = Arc::new(Coalescer::new(Duration::from_secs(3600), 16));
        let metrics = Arc::new(Metrics::new("n1"));
        let hub = Hub::with_coalescer(metrics.clone(), coalescer.clone());
        let ch: Arc<str> = "c".into();
        let (outbox, _control, _tcp) = connection(16).await;
        hub.add(&ch, Subscriber::live(1, outbox));
        let received = Instant::now() - Duration::from_millis(40);
        hub.dispatch("c", &"a".into(), None, received);
        hub.dispatch("c", &"b".into(), None, Instant::now());
        // A sample of the histogram's rendered text, e.g. its `_count` or `_sum`.
        let sample = |suffix: &str| -> f64 {
            metrics.upkeep();
            let name = format!("herald_delivery_latency_seconds{suffix}");
            metrics
                .render()
                .lines()
                .find(|l| l.starts_with(&name))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or(0.0)
        };
        assert_eq!(sample("_count"), 0.0, "nothing is written before the tick");
        hub.write_coalesced();
        assert_eq!(sample("_count"), 1.0, "one sample for the batch of two");
        let sum = sample("_sum");
        assert!(
            sum >= 0.04,
            "the oldest message waited 40 ms or more: {sum}"
        );
    }

    #[tokio::test]
    async fn a_full_batch_is_queued_at_once_and_keeps_its_order() {
        // Batches hold at most 4 messages; this outbox holds 8.
        let (hub, coalescer) = hub_batching(Duration::from_secs(3600), 4);
        let ch: Arc<str> = "c".into();
        let (outbox, control, tcp) = connection(8).await;
        hub.add(&ch, Subscriber::live(1, outbox));
        // 0..4 fill a batch, which takes the idle connection's flush at once; 4 and 5
        // wait in the next batch for the tick.
        for i in 0..6 {
            hub.dispatch("c", &i.to_string().into(), None, Instant::now());
        }
        assert_eq!(coalescer.deferred.lock().unwrap().len(), 1);
        assert_eq!(coalescer.batched.lock().unwrap().len(), 1);
        hub.write_coalesced();
        let mut p = peer(tcp).await;
        for i in 0..6 {
            assert_eq!(p.text().await, Some(i.to_string()));
        }
        assert_eq!(
            control.reason(),
            None,
            "the reader keeps up: no slow consumer"
        );
    }

    #[tokio::test]
    async fn a_batch_waiting_for_the_tick_counts_against_the_bound() {
        // Batches of at most 4 and an outbox of 4: a full batch waits for the tick
        // holding the connection's flush, and 2 more messages do not fit beside it.
        let (hub, _) = hub_batching(Duration::from_secs(3600), 4);
        let ch: Arc<str> = "c".into();
        let (outbox, control, _tcp) = connection(4).await;
        hub.add(&ch, Subscriber::live(1, outbox));
        for i in 0..6 {
            hub.dispatch("c", &i.to_string().into(), None, Instant::now());
        }
        hub.write_coalesced();
        assert_eq!(control.reason(), Some(CloseReason::SlowConsumer));
    }

    #[tokio::test]
    async fn a_draining_connection_still_gets_its_pending_batch_before_the_close() {
        let (hub, _) = hub(Duration::from_secs(3600));
        let ch: Arc<str> = "c".into();
        let (outbox, control, tcp) = connection(16).await;
        hub.add(&ch, Subscriber::live(1, outbox.clone()));
        hub.dispatch("c", &"a".into(), None, Instant::now());
        // The node drains before the tick: the session leaves its channels, then
        // finishes its outbox, and the coalescer's last tick runs.
        control.close(CloseReason::Draining);
        hub.remove("c", 1);
        hub.write_coalesced();
        let finished = tokio::spawn(async move { outbox.finish().await });
        let mut p = peer(tcp).await;
        assert_eq!(p.text().await.as_deref(), Some("a"));
        match tokio::time::timeout(Duration::from_secs(5), p.ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => assert_eq!(u16::from(f.code), 1001),
            other => panic!("expected the 1001 close, got {other:?}"),
        }
        assert!(finished.await.unwrap());
    }

    #[tokio::test]
    async fn a_plain_batch_goes_out_before_a_durable_frame_of_its_channel() {
        let (hub, _) = hub(Duration::from_secs(3600));
        let ch: Arc<str> = "c".into();
        let (outbox, _control, tcp) = connection(16).await;
        hub.add(&ch, Subscriber::live(1, outbox));
        // A presence event (plain) and then a durable message of the same channel.
        hub.dispatch("c", &"join".into(), None, Instant::now());
        hub.dispatch("c", &"m1".into(), Some((1, "e")), Instant::now());
        hub.write_coalesced();
        let mut p = peer(tcp).await;
        assert_eq!(p.text().await.as_deref(), Some("join"));
        assert_eq!(p.text().await.as_deref(), Some("m1"));
    }
}
