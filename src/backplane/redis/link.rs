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

/// Keeps [`Link`] true to both connections. A reconnect of the subscriber starts a new
/// generation: its subscriptions are gone and must be made again.
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
    loop {
        let reconnected = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = reconnects.recv() => !matches!(r, Err(broadcast::error::RecvError::Closed)),
            e = errors.recv() => {
                if let Ok((e, _)) = e
                    && let Some(repeats) = error_log.admit(e.to_string(), Instant::now())
                {
                    tracing::warn!(error = %e, repeats, "redis connection error");
                }
                false
            }
            _ = tick.tick() => false,
        };
        if reconnected {
            // Connected again: the next error is news, whatever it says.
            error_log = ErrorLog::default();
            generation += 1;
            if generation > 1 {
                metrics.backplane_reconnects.increment(1);
                tracing::info!(generation, "redis reconnected; re-subscribing");
            }
        }
        let connected =
            generation > 0 && this.client.is_connected() && this.subscriber.is_connected();
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
