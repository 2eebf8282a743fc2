//! Presence and join/leave across the fleet (PROTOCOL §2.1, docs/ARCHITECTURE.md decision 10).
//!
//! A session is present in a channel from its subscribe reply until it unsubscribes or
//! its connection ends. Each node keeps the entries of its own sessions here and
//! refreshes them in Redis in batches: one script call per channel per refresh
//! interval, never one per session. A node that vanishes stops refreshing; any node
//! with subscribers on the channel sweeps the expired entries with an atomic script
//! that hands each one to exactly one node, which sends its `leave`. Join and leave
//! frames travel the same backplane path as messages, so they arrive in order with
//! them, and never carry offsets or enter history.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::backplane::PresenceEntry;
use crate::config::Namespace;
use crate::error::{ErrorCode, OpError};
use crate::protocol;
use crate::state::AppState;

/// How often the presence task wakes to refresh and sweep.
const TICK: Duration = Duration::from_secs(1);

/// This node's present sessions, per channel.
#[derive(Default)]
pub struct Presence {
    local: DashMap<Arc<str>, HashMap<String, PresenceEntry>>,
    refreshed: DashMap<Arc<str>, Instant>,
}

/// Whether a namespace keeps presence (the `presence` op, or join/leave events).
pub fn enabled(ns: &Namespace) -> bool {
    ns.presence || ns.join_leave
}

/// The presence entry of a session: `{"session","user","info"}`.
pub fn entry_for(session: &str, identity: &Identity) -> PresenceEntry {
    let mut client = json!({"session": session});
    if let Some(user) = &identity.user {
        client["user"] = json!(user);
    }
    if let Some(info) = &identity.info {
        client["info"] = info.clone();
    }
    PresenceEntry {
        session: session.into(),
        user: identity.user.clone(),
        json: client.to_string(),
    }
}

fn event_frame(kind: &str, channel: &str, client: &str) -> Utf8Bytes {
    // Channel names need no escaping (PROTOCOL §1); `client` is JSON already.
    Utf8Bytes::from(format!(
        "{{\"type\":\"{kind}\",\"channel\":\"{channel}\",\"client\":{client}}}"
    ))
}

fn leave_client(entry: &PresenceEntry) -> String {
    let mut client = json!({"session": entry.session});
    if let Some(user) = &entry.user {
        client["user"] = json!(user);
    }
    client.to_string()
}

impl Presence {
    /// Enters `entry` into the channel's presence and, where the namespace wants
    /// events, announces it; both are accepted by the backplane before this returns.
    pub async fn join(
        &self,
        state: &AppState,
        channel: &Arc<str>,
        ns: &Namespace,
        entry: &PresenceEntry,
    ) -> Result<(), OpError> {
        if !enabled(ns) {
            return Ok(());
        }
        state
            .backplane
            .presence_join(channel, entry, ns.presence_ttl)
            .await?;
        let fresh = self
            .local
            .entry(channel.clone())
            .or_default()
            .insert(entry.session.clone(), entry.clone())
            .is_none();
        if fresh {
            state.metrics.present_sessions.increment(1.0);
        }
        if ns.join_leave {
            state
                .backplane
                .publish_event(channel, event_frame("join", channel, &entry.json))
                .await?;
        }
        Ok(())
    }

    /// Takes `entry` out of the channel's presence and announces its leave. A failure
    /// (Redis unreachable) is logged: the entry then expires and is swept, and the
    /// sweeping node sends the leave.
    pub async fn leave(
        &self,
        state: &AppState,
        channel: &str,
        ns: &Namespace,
        entry: &PresenceEntry,
    ) {
        if !enabled(ns) {
            return;
        }
        let removed = self
            .local
            .get_mut(channel)
            .is_some_and(|mut m| m.remove(&entry.session).is_some());
        self.local.remove_if(channel, |_, m| m.is_empty());
        if removed {
            state.metrics.present_sessions.decrement(1.0);
        }
        match state.backplane.presence_leave(channel, entry).await {
            Ok(true) if ns.join_leave => {
                let frame = event_frame("leave", channel, &leave_client(entry));
                if let Err(e) = state.backplane.publish_event(channel, frame).await {
                    tracing::warn!(channel, error = %e, "leave not announced");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(channel, error = %e, "presence leave failed; the sweep will finish it")
            }
        }
    }

    /// Refreshes this node's sessions and sweeps expired ones, until shutdown.
    pub async fn run(state: Arc<AppState>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        let mut link = state.backplane.link();
        let mut generation = link.borrow().generation;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                changed = link.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = *link.borrow_and_update();
                    if now.generation != generation && now.connected {
                        // Redis may have restarted empty: write every entry back now.
                        generation = now.generation;
                        state.presence.refreshed.clear();
                    }
                }
            }
            state.presence.refresh_due(&state).await;
            sweep(&state).await;
        }
    }

    async fn refresh_due(&self, state: &AppState) {
        // Cloned out: no guard is held across the awaits below.
        let channels: Vec<(Arc<str>, Vec<PresenceEntry>)> = self
            .local
            .iter()
            .map(|e| (e.key().clone(), e.value().values().cloned().collect()))
            .collect();
        for (channel, entries) in channels {
            let Some(ns) = state.config.namespaces.for_channel(&channel) else {
                continue;
            };
            let due = self
                .refreshed
                .get(&channel)
                .is_none_or(|t| t.elapsed() >= ns.presence_ttl / 3);
            if !due || entries.is_empty() {
                continue;
            }
            match state
                .backplane
                .presence_refresh(&channel, &entries, ns.presence_ttl)
                .await
            {
                Ok(restored) => {
                    state.metrics.presence_refreshes.increment(1);
                    self.refreshed.insert(channel.clone(), Instant::now());
                    if restored > 0 {
                        tracing::info!(channel = %channel, restored, "presence written back");
                    }
                }
                Err(e) => {
                    tracing::debug!(channel = %channel, error = %e, "presence refresh failed")
                }
            }
        }
        self.refreshed.retain(|c, _| self.local.contains_key(c));
    }
}

/// Sweeps the channels this node has subscribers on; sends a leave for each session
/// the sweep hands to this node.
async fn sweep(state: &AppState) {
    for channel in state.hub.channel_names() {
        let Some(ns) = state.config.namespaces.for_channel(&channel) else {
            continue;
        };
        if !enabled(ns) {
            continue;
        }
        let expired = match state.backplane.presence_sweep(&channel).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(channel = %channel, error = %e, "presence sweep failed");
                continue;
            }
        };
        state.metrics.presence_sweeps.increment(1);
        for entry in expired {
            state.metrics.presence_sweep_leaves.increment(1);
            if ns.join_leave {
                let frame = event_frame("leave", &channel, &leave_client(&entry));
                if let Err(e) = state.backplane.publish_event(&channel, frame).await {
                    tracing::warn!(channel = %channel, error = %e, "swept leave not announced");
                }
            }
        }
    }
}

/// The `presence` op and endpoint: every present session, up to `max_presence`.
pub async fn list(state: &AppState, channel: &str, ns: &Namespace) -> Result<Value, OpError> {
    require_presence(channel, ns)?;
    let max = state.config.limits.max_presence;
    match state.backplane.presence_list(channel, max).await? {
        Some(entries) => {
            let clients: Vec<Value> = entries
                .iter()
                .filter_map(|e| serde_json::from_str(e).ok())
                .collect();
            Ok(json!({"clients": clients}))
        }
        None => Err(OpError::new(
            ErrorCode::LimitExceeded,
            format!("more than {max} sessions are present; use presence_stats to count them"),
        )),
    }
}

/// The `presence_stats` op and endpoint.
pub async fn stats(state: &AppState, channel: &str, ns: &Namespace) -> Result<Value, OpError> {
    require_presence(channel, ns)?;
    let (clients, users) = state.backplane.presence_stats(channel).await?;
    Ok(json!({"clients": clients, "users": users}))
}

fn require_presence(channel: &str, ns: &Namespace) -> Result<(), OpError> {
    if ns.presence {
        Ok(())
    } else {
        Err(OpError::new(
            ErrorCode::BadRequest,
            format!(
                "presence is not enabled in namespace '{}'",
                protocol::namespace_of(channel)
            ),
        ))
    }
}
