//! The Redis backplane (fred): pub/sub between nodes, Streams for durable history.
//!
//! Two connections: a command client (publishes, scripts, history) and a subscriber
//! client (pub/sub only, so a slow command never delays a message). The subscriber's
//! messages are read from `message_rx()` by one task that validates each payload once
//! and hands the shared bytes to the node's [`Inbound`]; `Lagged` is counted and
//! reported as a possible gap, never ignored. Payloads that anyone with Redis access can write (too
//! large, invalid) are dropped, counted one by one and logged through a `LogLimit`.
//!
//! Redis outages: both clients reconnect with backoff; [`Link`] tells the rest of the
//! node (readiness, re-subscription, gap checks). While the link is down, publishes
//! and subscribes fail at once with `Unavailable` instead of queueing.
//!
//! This file starts the engine and implements the [`Backplane`] contract by handing
//! each call to the file that owns it: `keys` (key names), `clients` (building the two
//! fred clients), `pubsub` (classic or sharded pub/sub: subscribing and publishing),
//! `reader` (the pub/sub reader task), `link` (the link watcher), `topology` (sharded
//! subscriptions on a changing cluster), `publish`, `history` and `presence` (their
//! commands and scripts), `reply` (errors and reply values), `tls` (the TLS settings
//! of `rediss://`).

mod clients;
mod history;
mod keys;
mod link;
mod presence;
mod publish;
mod pubsub;
mod reader;
mod reply;
mod script;
mod supervise;
mod tls;
mod topology;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{
    Backplane, Durability, History, HistoryQuery, Inbound, Link, Position, PresenceEntry,
    PublishRequest, Published,
};
use crate::config::RedisPubSub;
use crate::error::BackplaneError;
use crate::metrics::Metrics;
use history::HistoryScript;
use presence::Presence;
use publish::Publisher;
use pubsub::PubSub;
use topology::Probes;

pub use keys::Keys;
pub use script::LuaScript;
pub use tls::{RedisTls, TlsError, TlsFiles};

/// Longest a node waits at shutdown for Redis to acknowledge `QUIT` on both
/// connections. fred's `QUIT` first waits for every command in flight, so a Redis that
/// hangs (or is slow under load) would otherwise hold the exit for up to a command
/// timeout per connection. Nothing is lost by cutting it: every caller has had its
/// answer or its timeout by then, and Redis sees the sockets close either way.
pub const QUIT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the Redis engine connects and what it accepts from there.
#[derive(Debug, Clone, Copy)]
pub struct RedisOptions<'a> {
    /// `redis://`, `rediss://`, `redis-cluster://` or `redis-sentinel://` (docs/CONFIG.md).
    pub url: &'a str,
    /// The prefix of every key and pub/sub channel.
    pub prefix: &'a str,
    /// Pub/sub payloads above this are dropped unread (`limits.max_backplane_frame_bytes`).
    pub max_frame_bytes: usize,
    /// The TLS settings of a `rediss://` URL ([`RedisTls::load`]); None: fred's own
    /// (the system's roots).
    pub tls: Option<&'a RedisTls>,
    /// Classic or sharded pub/sub (`redis.pubsub`).
    pub pubsub: RedisPubSub,
    /// This node's id: its node channel is subscribed with every link generation.
    pub node_id: &'a str,
}

pub struct RedisBackplane {
    client: Client,
    subscriber: SubscriberClient,
    keys: Keys,
    pubsub: Arc<PubSub>,
    publisher: Publisher,
    history: HistoryScript,
    presence: Presence,
    link: watch::Sender<Link>,
    /// `topology.rs` asks the link watcher for a new generation through this.
    resync: Notify,
    /// This node's node channel (PROTOCOL §4).
    node_channel: String,
}

impl RedisBackplane {
    /// Starts both clients and the tasks that read messages and watch the link. Does
    /// not wait for Redis: a node may start before its Redis and is not ready until
    /// the link is up.
    pub fn start(
        options: RedisOptions<'_>,
        inbound: Arc<dyn Inbound>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, BackplaneError> {
        let (client, subscriber) = clients::build(options.url, options.tls)?;
        let keys = Keys::new(options.prefix);
        let node_channel = keys.node(options.node_id);
        let this = Arc::new(Self::new(
            client,
            subscriber,
            keys,
            options.pubsub,
            node_channel,
        ));
        this.connect(options.max_frame_bytes, inbound, metrics, shutdown);
        Ok(this)
    }

    fn new(
        client: Client,
        subscriber: SubscriberClient,
        keys: Keys,
        choice: RedisPubSub,
        node_channel: String,
    ) -> Self {
        let (link, _) = watch::channel(Link::default());
        let pubsub = Arc::new(PubSub::new(choice, client.clone(), subscriber.clone()));
        Self {
            publisher: Publisher::new(client.clone(), keys.clone(), pubsub.clone()),
            history: HistoryScript::new(client.clone(), keys.clone()),
            presence: Presence::new(client.clone(), keys.clone()),
            pubsub,
            client,
            subscriber,
            keys,
            link,
            resync: Notify::new(),
            node_channel,
        }
    }

    /// Connects both clients, then starts the pub/sub reader and the link watcher.
    fn connect(
        self: &Arc<Self>,
        max_frame_bytes: usize,
        inbound: Arc<dyn Inbound>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) {
        // Subscribe to events before connecting so the first connect is seen.
        let reconnects = self.subscriber.reconnect_rx();
        let errors = self.subscriber.error_rx();
        let messages = self.subscriber.message_rx();
        supervise::keep_connected(self.client.clone(), "commands", shutdown.clone());
        supervise::keep_connected(self.subscriber.clone(), "subscriber", shutdown.clone());
        let probes = Arc::new(Probes::default());
        reader::spawn(
            messages,
            self.keys.clone(),
            inbound,
            probes.clone(),
            max_frame_bytes,
            metrics.clone(),
            shutdown.clone(),
        );
        tokio::spawn(topology::watch(
            self.clone(),
            probes,
            crate::backplane::new_epoch(),
            shutdown.clone(),
        ));
        tokio::spawn(link::watch_link(
            self.clone(),
            reconnects,
            errors,
            metrics,
            shutdown,
        ));
    }

    /// Asks the link watcher for a new generation: every subscription is made again
    /// and durable channels are checked for gaps (`topology.rs`).
    fn request_resync(&self) {
        self.resync.notify_one();
    }

    /// The command client (ingest uses it; blocking reads take a `clone_new` of it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn check_link(&self) -> Result<(), BackplaneError> {
        if self.link.borrow().connected {
            Ok(())
        } else {
            Err(BackplaneError::Unavailable("redis is not connected".into()))
        }
    }

    /// Closes both connections (graceful shutdown), waiting at most [`QUIT_TIMEOUT`].
    pub async fn quit(&self) {
        let both = async { tokio::join!(self.subscriber.quit(), self.client.quit()) };
        if tokio::time::timeout(QUIT_TIMEOUT, both).await.is_err() {
            tracing::warn!(
                timeout = ?QUIT_TIMEOUT,
                "redis did not acknowledge QUIT in time; closing the connections anyway"
            );
        }
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    async fn publish(&self, req: PublishRequest<'_>) -> Result<Published, BackplaneError> {
        self.check_link()?;
        self.publisher.publish(req).await
    }

    async fn append_upstream(
        &self,
        ns: &str,
        maxlen: u64,
        fields: &[(&str, &str)],
    ) -> Result<String, BackplaneError> {
        self.check_link()?;
        self.publisher.append_upstream(ns, maxlen, fields).await
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BackplaneError> {
        self.check_link()?;
        self.pubsub.subscribe(self.keys.pubsub(channel)).await
    }

    async fn subscribe_many(&self, channels: &[&str]) -> Result<(), BackplaneError> {
        let names = channels.iter().map(|c| self.keys.pubsub(c)).collect();
        self.pubsub.subscribe_many(names).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BackplaneError> {
        self.pubsub.unsubscribe(self.keys.pubsub(channel)).await
    }

    fn link(&self) -> watch::Receiver<Link> {
        self.link.subscribe()
    }

    async fn send_to_node(&self, node: &str, payload: Bytes) -> Result<u64, BackplaneError> {
        self.check_link()?;
        let n = self.pubsub.publish(self.keys.node(node), payload).await?;
        Ok(n.max(0) as u64)
    }

    async fn publish_event(&self, channel: &str, frame: Utf8Bytes) -> Result<(), BackplaneError> {
        self.check_link()?;
        let bytes: Bytes = frame.into();
        self.pubsub
            .publish(self.keys.pubsub(channel), bytes)
            .await?;
        Ok(())
    }

    async fn presence_join(
        &self,
        channel: &str,
        entry: &PresenceEntry,
        ttl: Duration,
    ) -> Result<bool, BackplaneError> {
        self.check_link()?;
        self.presence.join(channel, entry, ttl).await
    }

    async fn presence_leave(
        &self,
        channel: &str,
        entry: &PresenceEntry,
    ) -> Result<bool, BackplaneError> {
        self.check_link()?;
        self.presence.leave(channel, entry).await
    }

    async fn presence_refresh(
        &self,
        channel: &str,
        entries: &[PresenceEntry],
        ttl: Duration,
    ) -> Result<u64, BackplaneError> {
        self.check_link()?;
        self.presence.refresh(channel, entries, ttl).await
    }

    async fn presence_sweep(&self, channel: &str) -> Result<Vec<PresenceEntry>, BackplaneError> {
        self.check_link()?;
        self.presence.sweep(channel).await
    }

    async fn presence_list(
        &self,
        channel: &str,
        max: usize,
    ) -> Result<Option<Vec<String>>, BackplaneError> {
        self.check_link()?;
        self.presence.list(channel, max).await
    }

    async fn presence_stats(&self, channel: &str) -> Result<(u64, u64), BackplaneError> {
        self.check_link()?;
        self.presence.stats(channel).await
    }

    async fn position(&self, channel: &str, d: Durability) -> Result<Position, BackplaneError> {
        self.check_link()?;
        Ok(self.history.read(channel, d, None).await?.position)
    }

    async fn history(
        &self,
        channel: &str,
        d: Durability,
        query: HistoryQuery,
    ) -> Result<History, BackplaneError> {
        self.check_link()?;
        self.history.read(channel, d, Some(query)).await
    }
}
