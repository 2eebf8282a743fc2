//! The link watcher: keeps the engine's [`Link`] true to both connections, from fred's
//! reconnection and error events and a periodic check. What the node does when the
//! link changes (readiness, re-subscription, gap checks) is the node's.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::RedisBackplane;
use crate::backplane::Link;
use crate::metrics::Metrics;

/// How often the link state is re-checked besides fred's events.
const LINK_CHECK: Duration = Duration::from_millis(250);

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
    loop {
        let reconnected = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = reconnects.recv() => !matches!(r, Err(broadcast::error::RecvError::Closed)),
            e = errors.recv() => {
                if let Ok((e, _)) = e {
                    tracing::warn!(error = %e, "redis connection error");
                }
                false
            }
            _ = tick.tick() => false,
        };
        if reconnected {
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
