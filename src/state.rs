//! The node's shared state: the parts every service and door reaches (configuration,
//! metrics, hub, backplane, interest, tokens, presence), the table of open sessions
//! that a drain walks, and readiness.
//!
//! It is built once by the wiring (`server.rs`) and shared by `Arc`; it starts no task
//! and decides nothing of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::http::HeaderValue;
use dashmap::DashMap;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::backplane::{Backplane, Link};
use crate::config::Config;
use crate::connection::outbox::ControlHandle;
use crate::connection::rate::ConnectionRate;
use crate::hub::{Hub, SessionId};
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::relay::Relay;
use crate::subscriptions::Subscriptions;
use crate::tokens::Tokens;

/// The parts of a node that [`AppState`] shares, built by the wiring.
pub struct Services {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub hub: Arc<Hub>,
    pub backplane: Arc<dyn Backplane>,
    pub subscriptions: Arc<Subscriptions>,
    pub tokens: Tokens,
    /// Streaming sessions' client frames, here and across nodes.
    pub relay: Arc<Relay>,
}

/// Everything a request handler or session may need, shared by `Arc`.
pub struct AppState {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub hub: Arc<Hub>,
    pub backplane: Arc<dyn Backplane>,
    pub subscriptions: Arc<Subscriptions>,
    pub tokens: Tokens,
    pub relay: Arc<Relay>,
    pub presence: crate::presence::Presence,
    pub connection_rate: ConnectionRate,
    /// Open sessions and how to close them (the drain walks this).
    sessions: DashMap<SessionId, ControlHandle>,
    next_session: AtomicU64,
    draining: AtomicBool,
    link: watch::Receiver<Link>,
    /// Tracks session tasks, which axum's graceful shutdown does not wait for.
    pub tracker: TaskTracker,
}

impl AppState {
    pub fn new(parts: Services, connection_rate: ConnectionRate) -> Self {
        Self {
            link: parts.backplane.link(),
            config: parts.config,
            metrics: parts.metrics,
            hub: parts.hub,
            backplane: parts.backplane,
            subscriptions: parts.subscriptions,
            tokens: parts.tokens,
            relay: parts.relay,
            presence: Default::default(),
            connection_rate,
            sessions: DashMap::new(),
            next_session: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            tracker: TaskTracker::new(),
        }
    }

    pub fn register_session(&self, control: ControlHandle) -> SessionId {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        self.sessions.insert(id, control);
        self.metrics.connections.increment(1.0);
        self.metrics.connections_total.increment(1);
        id
    }

    pub fn unregister_session(&self, id: SessionId) {
        self.relay.unregister(id);
        if self.sessions.remove(&id).is_some() {
            self.metrics.connections.decrement(1.0);
        }
    }

    pub fn connection_count(&self) -> usize {
        self.sessions.len()
    }

    /// The close handles of all open sessions (cloned out: no guard is kept).
    pub fn session_controls(&self) -> Vec<ControlHandle> {
        self.sessions.iter().map(|e| e.value().clone()).collect()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn link(&self) -> Link {
        *self.link.borrow()
    }

    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.subscriptions.is_current(self.link())
    }

    /// The narrow handle a publication needs.
    pub fn publisher(&self) -> Publisher<'_> {
        Publisher {
            backplane: self.backplane.as_ref(),
            metrics: &self.metrics,
            idempotency_ttl: self.config.idempotency_ttl,
        }
    }

    pub fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        let allowed = &self.config.auth.allowed_origins;
        allowed.is_empty()
            || allowed
                .iter()
                .any(|a| a == "*" || origin.to_str().is_ok_and(|o| o.eq_ignore_ascii_case(a)))
    }
}
