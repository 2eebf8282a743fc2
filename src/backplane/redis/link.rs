//! The link watcher: keeps the engine's [`Link`] true to both connections, from fred's
//! reconnection and error events and a periodic check. What the node does when the
//! link changes (readiness, re-subscription, gap checks) is the node's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::RedisBackplane;
use crate::backplane::Link;
use crate::metrics::Metrics;

/// How often the link state is re-checked besides fred's events.
const LINK_CHECK: Duration = Duration::from_millis(250);
/// The same connection error (a TLS handshake refused, a wrong password) comes back at
/// every reconnection attempt, up to every 5 s for as long as it lasts: it is logged
/// when it first comes and then at most once per this interval, with the number of
/// repeats; a different error is logged at once.
const REPEAT_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Which connection errors [`watch_link`] logs (see [`REPEAT_LOG_INTERVAL`]).
#[derive(Default)]
struct ErrorLog {
    last: Option<(String, Instant)>,
    repeats: u64,
}

impl ErrorLog {
    /// Some(repeats not logged since the last line) when `reason` is to be logged now.
    fn admit(&mut self, reason: String, now: Instant) -> Option<u64> {
        match &mut self.last {
            Some((last, at))
                if *last == reason && now.saturating_duration_since(*at) < REPEAT_LOG_INTERVAL =>
            {
                self.repeats += 1;
                None
            }
            _ => {
                self.last = Some((reason, now));
                Some(std::mem::take(&mut self.repeats))
            }
        }
    }
}

/// What woke the link watcher.
enum Event {
    /// A connection (re)connected: its subscriptions are gone.
    Reconnected,
    /// `topology.rs` found subscriptions lost without a reconnect.
    Resync,
    /// A periodic check or an error: the state may have changed.
    Check,
}

/// Keeps [`Link`] true to both connections. A reconnect of the subscriber, or a resync
/// asked by `topology.rs`, starts a new generation: its subscriptions must be made
/// again. The link is not reported connected before the pub/sub mode is decided
/// (`pubsub.rs`), so nothing is published or subscribed in the wrong one, nor before
/// the node channel of this generation is subscribed.
pub(super) async fn watch_link(
    this: Arc<RedisBackplane>,
    mut reconnects: broadcast::Receiver<Server>,
    mut errors: broadcast::Receiver<(Error, Option<Server>)>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(LINK_CHECK);
    let mut generation = 0u64;
    let mut error_log = ErrorLog::default();
    // The generation whose node channel is subscribed (0: none yet).
    let mut node_channel_in = 0u64;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = reconnects.recv() => match r {
                Err(broadcast::error::RecvError::Closed) => Event::Check,
                _ => Event::Reconnected,
            },
            _ = this.resync.notified() => Event::Resync,
            e = errors.recv() => {
                if let Ok((e, _)) = e {
                    log_error(&mut error_log, &e.to_string());
                }
                Event::Check
            }
            _ = tick.tick() => Event::Check,
        };
        match event {
            Event::Reconnected => {
                // Connected again: the next error is news, whatever it says.
                error_log = ErrorLog::default();
                generation += 1;
                if generation > 1 {
                    metrics.backplane_reconnects.increment(1);
                    tracing::info!(generation, "redis reconnected; re-subscribing");
                }
            }
            Event::Resync if generation > 0 => {
                generation += 1;
                metrics.backplane_resyncs.increment(1);
                tracing::info!(generation, "re-subscribing after a cluster change");
            }
            Event::Resync | Event::Check => {}
        }
        let mut connected =
            generation > 0 && this.client.is_connected() && this.subscriber.is_connected();
        if connected && !this.pubsub.is_decided() {
            match this.pubsub.decide().await {
                Ok(sharded) => {
                    metrics
                        .backplane_sharded
                        .set(if sharded { 1.0 } else { 0.0 });
                    let mode = if sharded { "sharded" } else { "classic" };
                    tracing::info!(pubsub = mode, "redis pub/sub mode decided");
                }
                Err(e) => {
                    log_error(&mut error_log, &e.to_string());
                    connected = false;
                }
            }
        }
        // The node channel (PROTOCOL §4) is the engine's own subscription, made
        // again with every generation before the link is reported up.
        if connected && node_channel_in != generation {
            match this.pubsub.subscribe(this.node_channel.clone()).await {
                Ok(()) => node_channel_in = generation,
                Err(e) => {
                    log_error(&mut error_log, &e.to_string());
                    connected = false;
                }
            }
        }
        let now = Link {
            generation,
            connected,
        };
        this.link.send_if_modified(|l| {
            let changed = *l != now;
            *l = now;
            changed
        });
    }
}

fn log_error(log: &mut ErrorLog, reason: &str) {
    if let Some(repeats) = log.admit(reason.to_string(), Instant::now()) {
        tracing::warn!(error = %reason, repeats, "redis connection error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_error_is_logged_once_per_interval() {
        let mut log = ErrorLog::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(log.admit("tls".into(), t0), Some(0));
        assert_eq!(log.admit("tls".into(), t0 + 5 * s), None);
        assert_eq!(log.admit("tls".into(), t0 + 10 * s), None);
        assert_eq!(log.admit("tls".into(), t0 + 61 * s), Some(2));
        assert_eq!(log.admit("auth".into(), t0 + 62 * s), Some(0));
        assert_eq!(log.admit("auth".into(), t0 + 63 * s), None);
    }
}
