//! Keeps each fred client's connection task running for as long as the node runs.
//!
//! fred reconnects by itself after a dropped connection, but a few errors end its
//! connection task for good: on a cluster, an `ASK` redirection that finds no attempt
//! left ends it with "Max attempts reached", after which every command on that client
//! times out (seen in `tests/redis_cluster.rs`'s slot migration: publishing never
//! resumed). So the task is watched, and one that ends before the node stops is
//! started again after a short pause; the reconnect event it then sends starts a new
//! link generation (`link.rs`), so subscriptions are made again.

use std::time::Duration;

use fred::prelude::*;
use tokio_util::sync::CancellationToken;

/// Pause before a stopped client is started again (fred's own backoff then applies).
const RESTART_DELAY: Duration = Duration::from_millis(200);

/// Starts `client`'s connection task and starts it again whenever it ends, until
/// `shutdown`.
pub(super) fn keep_connected<C>(client: C, name: &'static str, shutdown: CancellationToken)
where
    C: ClientLike + Send + Sync + 'static,
{
    tokio::spawn(async move {
        loop {
            let task = client.connect();
            let ended = tokio::select! {
                _ = shutdown.cancelled() => return,
                ended = task => ended,
            };
            if shutdown.is_cancelled() {
                return;
            }
            let reason = match ended {
                Ok(Ok(())) => "ended".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            tracing::warn!(client = name, %reason, "redis client stopped; starting it again");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RESTART_DELAY) => {}
            }
        }
    });
}
