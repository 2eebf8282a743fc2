//! Write coalescing (`server.write_coalesce`): instead of writing a fan-out at once,
//! the node holds its connections' flushes for one tick, so that every frame that
//! arrives for a connection within the tick shares one `writev`.
//!
//! One timer for the whole node, not one per socket: fan-outs hand their [`Flush`]es
//! to [`Coalescer::defer`], and [`Coalescer::run`] writes everything deferred once per
//! tick. While a flush is deferred its connection counts as busy, so later frames only
//! append to its queue (the outbox's bound still applies). Off by default: it trades
//! up to one tick of latency for fewer system calls on high-rate channels.

use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ws::outbox::Flush;

pub struct Coalescer {
    tick: Duration,
    /// Flushes waiting for the next tick. Bounded by the number of open connections:
    /// a connection has at most one flush.
    deferred: Mutex<Vec<Flush>>,
}

impl Coalescer {
    pub fn new(tick: Duration) -> Self {
        Self {
            tick,
            deferred: Mutex::new(Vec::new()),
        }
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

    /// Writes what was deferred, once per tick, until `stop`; then once more.
    pub async fn run(&self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => self.write_deferred(),
            }
        }
        self.write_deferred();
    }

    fn write_deferred(&self) {
        let due = std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|p| p.into_inner()));
        Flush::run_all(due);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::Frame;
    use crate::ws::outbox::testing::{connection, peer};
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    #[tokio::test]
    async fn frames_within_one_tick_are_written_together_at_the_tick() {
        let coalescer = std::sync::Arc::new(Coalescer::new(Duration::from_millis(600)));
        let stop = CancellationToken::new();
        let runner = tokio::spawn({
            let c = coalescer.clone();
            let stop = stop.clone();
            async move { c.run(stop).await }
        });
        // `interval` ticks once at once; defer after that first tick.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (outbox, _control, tcp) = connection(16).await;
        let mut flushes = Vec::new();
        for i in 0..3 {
            let (_, flush) = outbox.enqueue(Frame::text(i.to_string()));
            flushes.extend(flush);
        }
        assert_eq!(flushes.len(), 1, "only the first frame takes the flush");
        coalescer.defer(flushes);
        let mut p = peer(tcp).await;
        assert!(p.silent().await, "nothing is written before the tick");
        for i in 0..3 {
            let next = tokio::time::timeout(Duration::from_secs(2), p.ws.next()).await;
            match next {
                Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), i.to_string()),
                other => panic!("{other:?}"),
            }
        }
        stop.cancel();
        runner.await.unwrap();
    }
}
