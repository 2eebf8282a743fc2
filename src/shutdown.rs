//! Signals and the drain (docs/ARCHITECTURE.md decision 9). On SIGTERM (Kubernetes starts a
//! graceful shutdown) or SIGINT the node turns not-ready and refuses new upgrades at
//! once, then closes its sockets with 1001 spread evenly over the drain period, so
//! the fleet absorbs the reconnects without a storm. After the drain the node gets at
//! most [`STOP_BOUND`] to stop, so that its exit has a bound the deployment can plan
//! its grace period on.

use std::time::Duration;

use crate::error::CloseReason;
use crate::state::AppState;

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: draining"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How long a node may take to stop once its drain is over: session tasks finish,
/// open HTTP requests are answered (one waiting on Redis gets its answer within the
/// 3 s command timeout) and Redis gets [`crate::backplane::redis::QUIT_TIMEOUT`] (2 s)
/// to acknowledge `QUIT`. Whatever still runs then is abandoned and the process exits.
/// A node thus exits at most `drain_period` + this after SIGTERM (README
/// "Operations", docs/DEPLOY.md; tests/deploy checks the grace period against it).
pub const STOP_BOUND: Duration = Duration::from_secs(5);

/// Share of the drain period over which closes are spread; the rest lets the last
/// close frames reach their clients before the process exits.
const SPREAD_SHARE: f64 = 0.8;

/// Turns the node not-ready and closes every session with 1001, spread over the
/// drain period. Returns when every session has been asked to close.
pub async fn drain(state: &AppState) {
    state.start_draining();
    let sessions = state.session_controls();
    let period = state.config.drain_period.mul_f64(SPREAD_SHARE);
    tracing::info!(sessions = sessions.len(), period = ?period, "draining");
    if sessions.is_empty() {
        return;
    }
    let step = period / sessions.len() as u32;
    let mut tick = tokio::time::interval(step.max(Duration::from_micros(50)));
    for control in sessions {
        tick.tick().await;
        control.close(CloseReason::Draining);
    }
}
