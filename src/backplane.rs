//! The backplane: the one path every message takes between a publisher and the hubs
//! of every node, also the publishing node's own (docs/ARCHITECTURE.md decisions 2
//! and 5).
//!
//! Two engines implement [`Backplane`]: [`memory`] (one process, no Redis, the
//! default) and [`redis`] (a fleet). Both keep the guarantees of PROTOCOL §2.2:
//! a confirmed `subscribe` is a barrier, messages of a channel keep one order, and
//! durable channels number their messages `1, 2, 3 …` within an epoch.
//!
//! Engines hand what they receive to the [`Inbound`] they were built with, which the
//! node implements (the hub's fan-out, gap filling); they know neither. They do not
//! decide when to subscribe either (that is the node's interest, `subscriptions.rs`).

pub mod log_limit;
pub mod memory;
pub mod redis;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use serde_json::value::RawValue;
use tokio::sync::watch;

use crate::error::BackplaneError;

/// History settings of a durable channel (from its namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durability {
    pub history_size: u64,
    pub history_ttl: Duration,
}

/// An idempotency key and how long it is remembered (PROTOCOL §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idempotency<'a> {
    pub key: &'a str,
    pub ttl: Duration,
}

/// One publication.
#[derive(Debug, Clone, Copy)]
pub struct PublishRequest<'a> {
    pub channel: &'a str,
    pub data: &'a RawValue,
    pub durable: Option<Durability>,
    pub idempotency: Option<Idempotency<'a>>,
    pub source: Option<crate::protocol::Source<'a>>,
}

/// A durable channel's epoch and newest offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// What the backplane answered to a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    Plain,
    Durable(Position),
    /// An idempotent publish seen before: nothing was published again; this is the
    /// first publish's result.
    Duplicate(Box<Published>),
}

/// Which part of a durable channel's history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryQuery {
    /// The oldest `limit` messages after `offset` (exclusive).
    After { offset: u64, limit: Option<u64> },
    /// The newest `limit` messages.
    Newest { limit: Option<u64> },
}

/// One stored message: its offset and its full `message` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub offset: u64,
    pub frame: Utf8Bytes,
}

/// A read of a durable channel's history, consistent with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    pub position: Position,
    /// Ascending by offset.
    pub messages: Vec<StoredMessage>,
}

/// One session's presence in a channel: the `client` object of join frames and of
/// the `presence` listing (`{"session","user","info"}`), kept as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEntry {
    pub session: String,
    pub user: Option<String>,
    pub json: String,
}

/// The state of the node's link to the backplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Link {
    /// Increases each time the link (re)connects and subscriptions must be made again.
    pub generation: u64,
    pub connected: bool,
}

/// What an engine receives, handed to the node: implemented once, by the node
/// (`inbound.rs`). Called on the engine's reader, in the backplane's order of each
/// channel; an implementation never blocks or awaits.
pub trait Inbound: Send + Sync + 'static {
    /// A frame for `channel`'s local subscribers: a message (`seq` is its offset and
    /// epoch on a durable channel) or a join/leave event (no `seq`).
    fn deliver(
        &self,
        channel: &str,
        frame: &Utf8Bytes,
        seq: Option<(u64, &str)>,
        received: Instant,
    );

    /// Frames may have been lost on any channel (the reader fell behind): every
    /// durable channel is to be checked against its history.
    fn lost_any(&self);

    /// A message another node sent to this one ([`Backplane::send_to_node`]). Its
    /// bytes are whatever the sender wrote: the receiver checks them.
    fn node_message(&self, payload: &[u8]);
}

#[async_trait]
pub trait Backplane: Send + Sync + 'static {
    /// Publishes to every subscriber on every node. `Ok` means the backplane accepted
    /// the message; on `Err` nothing was published (or, after a timeout, it may have
    /// been: the caller may retry, PROTOCOL §3).
    async fn publish(&self, req: PublishRequest<'_>) -> Result<Published, BackplaneError>;

    /// Appends a client publish to the upstream stream of namespace `ns` (PROTOCOL
    /// §5.2), `MAXLEN ~ maxlen`; returns the entry id.
    async fn append_upstream(
        &self,
        ns: &str,
        maxlen: u64,
        fields: &[(&str, &str)],
    ) -> Result<String, BackplaneError>;

    /// Subscribes this node to a channel; returns once the backplane confirmed it, so
    /// that everything published afterwards reaches the hub (the subscribe barrier).
    async fn subscribe(&self, channel: &str) -> Result<(), BackplaneError>;

    /// Subscribes to many channels at once (after a reconnect).
    async fn subscribe_many(&self, channels: &[&str]) -> Result<(), BackplaneError>;

    async fn unsubscribe(&self, channel: &str) -> Result<(), BackplaneError>;

    /// Watches the link; a new generation means every subscription was lost.
    fn link(&self) -> watch::Receiver<Link>;

    /// The epoch and newest offset of a durable channel, creating its epoch if it has
    /// none yet (so that a subscriber holds it before the first message).
    async fn position(
        &self,
        channel: &str,
        durability: Durability,
    ) -> Result<Position, BackplaneError>;

    /// Sends `payload` to the node named `node` (its node channel, PROTOCOL §4);
    /// returns how many nodes received it: 0 when no node of that name is connected.
    async fn send_to_node(&self, node: &str, payload: bytes::Bytes) -> Result<u64, BackplaneError>;

    /// Publishes a node-made frame (a `join` or `leave`) on the channel's path, so it
    /// arrives in order with messages. Never stored in history.
    async fn publish_event(&self, channel: &str, frame: Utf8Bytes) -> Result<(), BackplaneError>;

    /// Adds a session to a channel's presence, expiring after `ttl` unless refreshed.
    /// Returns true when it was not present before.
    async fn presence_join(
        &self,
        channel: &str,
        entry: &PresenceEntry,
        ttl: Duration,
    ) -> Result<bool, BackplaneError>;

    /// Removes a session; returns true when it was present (a leave is due).
    async fn presence_leave(
        &self,
        channel: &str,
        entry: &PresenceEntry,
    ) -> Result<bool, BackplaneError>;

    /// Refreshes the expiry of this node's sessions of a channel, writing back any the
    /// backplane lost. Returns how many were written back.
    async fn presence_refresh(
        &self,
        channel: &str,
        entries: &[PresenceEntry],
        ttl: Duration,
    ) -> Result<u64, BackplaneError>;

    /// Removes and returns expired sessions, atomically: each is returned to one node.
    async fn presence_sweep(&self, channel: &str) -> Result<Vec<PresenceEntry>, BackplaneError>;

    /// The channel's present sessions as JSON objects, or None when there are more
    /// than `max`.
    async fn presence_list(
        &self,
        channel: &str,
        max: usize,
    ) -> Result<Option<Vec<String>>, BackplaneError>;

    /// Present sessions and distinct users.
    async fn presence_stats(&self, channel: &str) -> Result<(u64, u64), BackplaneError>;

    /// Reads history, atomically with the position it answers.
    async fn history(
        &self,
        channel: &str,
        durability: Durability,
        query: HistoryQuery,
    ) -> Result<History, BackplaneError>;
}

/// Makes a new random epoch: 12 characters of [A-Za-z0-9].
pub fn new_epoch() -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(12)
        .map(char::from)
        .collect()
}
