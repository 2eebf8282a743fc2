//! Signals and the drain (DESIGN.md decision 8). On SIGTERM (Kubernetes starts a
//! graceful shutdown) or SIGINT the node turns not-ready and refuses new upgrades at
//! once, then closes its sockets with 1001 spread evenly over the drain period, so
//! the fleet absorbs the reconnects without a storm.

use std::time::Duration;

use crate::error::CloseReason;
use crate::server::AppState;

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
