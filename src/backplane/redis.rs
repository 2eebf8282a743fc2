//! The Redis backplane (fred): pub/sub between nodes, Streams for durable history.
//!
//! Two connections: a command client (publishes, scripts, history) and a subscriber
//! client (pub/sub only, so a slow command never delays a message). The subscriber's
//! messages are read from `message_rx()` by one task that validates each payload once
//! and hands the shared bytes to the node's [`Inbound`]; `Lagged` is counted and
//! reported as a possible gap, never ignored. Payloads that anyone with Redis access can write (too
//! large, invalid) are dropped, counted one by one and logged through a [`LogLimit`].
//!
//! Redis outages: both clients reconnect with backoff; [`Link`] tells the rest of the
//! node (readiness, re-subscription, gap checks). While the link is down, publishes
//! and subscribes fail at once with `Unavailable` instead of queueing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::{ReconnectPolicy, UnresponsiveConfig};
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::log_limit::{self, LogLimit};
use super::{
    Backplane, Durability, History, HistoryQuery, Inbound, Link, Position, PresenceEntry,
    PublishRequest, Published, StoredMessage, new_epoch,
};
use crate::error::BackplaneError;
use crate::metrics::Metrics;
use crate::protocol::{self, PayloadKind};

const PUBLISH_LUA: &str = include_str!("publish.lua");
const HISTORY_LUA: &str = include_str!("history.lua");
const IDEMPOTENT_LUA: &str = include_str!("idempotent_publish.lua");
const PRESENCE_JOIN_LUA: &str = include_str!("presence_join.lua");
const PRESENCE_LEAVE_LUA: &str = include_str!("presence_leave.lua");
const PRESENCE_REFRESH_LUA: &str = include_str!("presence_refresh.lua");
const PRESENCE_SWEEP_LUA: &str = include_str!("presence_sweep.lua");
/// Most expired sessions one sweep call removes (the next sweep takes the rest).
const SWEEP_BATCH: i64 = 1000;

/// A command that takes longer than this fails with `Unavailable`; the publisher may
/// retry (the message may or may not have been taken).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the link state is re-checked besides fred's events.
const LINK_CHECK: Duration = Duration::from_millis(250);
/// Capacity of fred's pub/sub broadcast channel, the one bounded queue between the
/// subscriber connection and the hub. When it is full the oldest messages are
/// overwritten and the reader gets `Lagged`: counted, and on durable channels filled
/// from history or closed with 4008 (gaps.rs); on plain channels those messages are
/// lost. Measured on the heaviest overload (docs/BENCHMARKS.md, Settings: 500
/// subscribers at 1,000 publishes/s, nodes seconds behind): none lagged at this
/// capacity, 9,750 did at 1,024. fred preallocates this many slots for each of the
/// subscriber's nine event channels, ~80 bytes each: ~12 MB (65,536 cost ~48 MB).
const PUBSUB_CAPACITY: usize = 16_384;
/// Capacity of the command client's event channels (errors, reconnections, …), which
/// carry a handful of events a minute: fred's own default.
const EVENT_CAPACITY: usize = 32;
/// Channels per SUBSCRIBE command when re-subscribing in bulk.
const SUBSCRIBE_CHUNK: usize = 500;
/// Longest a node waits at shutdown for Redis to acknowledge `QUIT` on both
/// connections. fred's `QUIT` first waits for every command in flight, so a Redis that
/// hangs (or is slow under load) would otherwise hold the exit for up to a command
/// timeout per connection. Nothing is lost by cutting it: every caller has had its
/// answer or its timeout by then, and Redis sees the sockets close either way.
pub const QUIT_TIMEOUT: Duration = Duration::from_secs(2);

/// Redis key names of PROTOCOL §4.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }
    pub fn pubsub(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:ch", self.prefix)
    }
    pub fn stream(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:stream", self.prefix)
    }
    pub fn meta(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:meta", self.prefix)
    }
    pub fn idempotency(&self, channel: &str, key: &str) -> String {
        format!("{}:{{{channel}}}:idem:{key}", self.prefix)
    }
    pub fn upstream(&self, ns: &str) -> String {
        format!("{}:upstream:{ns}", self.prefix)
    }
    /// The presence hash, its expiry sorted set and the user-count hash.
    pub fn presence(&self, channel: &str) -> Vec<String> {
        vec![
            format!("{}:{{{channel}}}:presence", self.prefix),
            format!("{}:{{{channel}}}:presence:exp", self.prefix),
            format!("{}:{{{channel}}}:presence:users", self.prefix),
        ]
    }
    /// The Herald channel of a pub/sub channel name, if it is one of ours.
    pub fn channel_of<'a>(&self, pubsub: &'a str) -> Option<&'a str> {
        pubsub
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix("}:ch")
    }
}

/// Where the Redis engine connects and what it accepts from there.
#[derive(Debug, Clone, Copy)]
pub struct RedisOptions<'a> {
    /// `redis://`, `rediss://` or `redis-cluster://` (docs/CONFIG.md).
    pub url: &'a str,
    /// The prefix of every key and pub/sub channel.
    pub prefix: &'a str,
    /// Pub/sub payloads above this are dropped unread (`limits.max_backplane_frame_bytes`).
    pub max_frame_bytes: usize,
}

pub struct RedisBackplane {
    client: Client,
    subscriber: SubscriberClient,
    keys: Keys,
    publish_script: Script,
    history_script: Script,
    idempotent_script: Script,
    presence_scripts: PresenceScripts,
    link: watch::Sender<Link>,
}

struct PresenceScripts {
    join: Script,
    leave: Script,
    refresh: Script,
    sweep: Script,
}

impl RedisBackplane {
    /// Waits until Redis has run the SUBSCRIBEs written before: the subscribe barrier
    /// (PROTOCOL §2.2). fred answers SUBSCRIBE as soon as it is written, since its
    /// replies arrive out of band; a PING on the same connection is answered only
    /// after every command before it, so its answer is Redis's confirmation. On a
    /// cluster fred may send the PING to another shard than the SUBSCRIBE, which would
    /// confirm nothing, so there the written SUBSCRIBE is all there is.
    async fn confirm_subscribed(&self) -> Result<(), BackplaneError> {
        if self.subscriber.is_clustered() {
            return Ok(());
        }
        let _: Value = self.subscriber.ping(None).await.map_err(map_err)?;
        Ok(())
    }

    /// Starts both clients and the tasks that read messages and watch the link. Does
    /// not wait for Redis: a node may start before its Redis and is not ready until
    /// the link is up.
    pub fn start(
        options: RedisOptions<'_>,
        inbound: Arc<dyn Inbound>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, BackplaneError> {
        let RedisOptions {
            url,
            prefix,
            max_frame_bytes,
        } = options;
        let config = Config::from_url(url)
            .map_err(|e| BackplaneError::Unavailable(format!("redis url: {e}")))?;
        let mut builder = Builder::from_config(config);
        builder
            // fred's default is to never reconnect: retry forever, 100 ms to 5 s apart.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(3);
                c.internal_command_timeout = Duration::from_secs(3);
                c.max_command_attempts = 1;
                // A connection that stops answering is closed and reconnected.
                c.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(Duration::from_secs(5)),
                    interval: Duration::from_secs(1),
                };
                c.tcp.nodelay = Some(true);
            })
            .with_performance_config(|p| {
                p.default_command_timeout = COMMAND_TIMEOUT;
                p.broadcast_channel_capacity = EVENT_CAPACITY;
            });
        // fred preallocates every slot of each of a client's nine event channels; only
        // the subscriber's message channel needs depth, so only the subscriber gets it.
        let client = builder
            .build()
            .map_err(|e| BackplaneError::Unavailable(e.to_string()))?;
        builder.with_performance_config(|p| p.broadcast_channel_capacity = PUBSUB_CAPACITY);
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|e| BackplaneError::Unavailable(e.to_string()))?;
        let (link, _) = watch::channel(Link::default());
        let this = Arc::new(Self {
            client,
            subscriber,
            keys: Keys::new(prefix),
            publish_script: Script::from_lua(PUBLISH_LUA),
            history_script: Script::from_lua(HISTORY_LUA),
            idempotent_script: Script::from_lua(IDEMPOTENT_LUA),
            presence_scripts: PresenceScripts {
                join: Script::from_lua(PRESENCE_JOIN_LUA),
                leave: Script::from_lua(PRESENCE_LEAVE_LUA),
                refresh: Script::from_lua(PRESENCE_REFRESH_LUA),
                sweep: Script::from_lua(PRESENCE_SWEEP_LUA),
            },
            link,
        });
        // Subscribe to events before connecting so the first connect is seen.
        let reconnects = this.subscriber.reconnect_rx();
        let errors = this.subscriber.error_rx();
        let messages = this.subscriber.message_rx();
        this.client.connect();
        this.subscriber.connect();
        let drops = Drops {
            max_frame_bytes,
            invalid: Arc::new(LogLimit::new(
                "invalid backplane payloads",
                log_limit::INTERVAL,
            )),
            oversized: Arc::new(LogLimit::new(
                "oversized backplane payloads",
                log_limit::INTERVAL,
            )),
            metrics: metrics.clone(),
        };
        tokio::spawn(drops.invalid.clone().run(shutdown.clone()));
        tokio::spawn(drops.oversized.clone().run(shutdown.clone()));
        tokio::spawn(read_messages(
            messages,
            this.keys.clone(),
            inbound,
            drops,
            shutdown.clone(),
        ));
        tokio::spawn(watch_link(
            this.clone(),
            reconnects,
            errors,
            metrics,
            shutdown,
        ));
        Ok(this)
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

    async fn run_history(
        &self,
        channel: &str,
        d: Durability,
        mode: &str,
        offset: u64,
        limit: Option<u64>,
    ) -> Result<History, BackplaneError> {
        self.check_link()?;
        let keys = vec![self.keys.meta(channel), self.keys.stream(channel)];
        let args: Vec<Value> = vec![
            new_epoch().into(),
            ttl_secs(d).into(),
            mode.into(),
            (offset as i64).into(),
            (limit.unwrap_or(0).min(i64::MAX as u64) as i64).into(),
        ];
        let reply: Vec<Value> = self
            .history_script
            .evalsha_with_reload(&self.client, keys, args)
            .await
            .map_err(map_err)?;
        parse_history(reply)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Presence keys outlive their entries a little, so that a channel whose every node
/// vanished leaves nothing behind for long.
fn presence_key_ttl(ttl: Duration) -> i64 {
    (ttl.as_millis() as i64) * 2 + 5_000
}

fn ttl_secs(d: Durability) -> i64 {
    d.history_ttl.as_secs().max(1) as i64
}

fn map_err(e: Error) -> BackplaneError {
    match e.kind() {
        ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Backpressure => {
            BackplaneError::Unavailable(e.to_string())
        }
        _ if e.details().starts_with("LOADING") || e.details().starts_with("BUSY") => {
            BackplaneError::Unavailable(e.to_string())
        }
        _ => BackplaneError::Protocol(e.to_string()),
    }
}

fn value_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string()),
        Value::Bytes(b) => std::str::from_utf8(b).ok().map(String::from),
        Value::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

fn value_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(i) => u64::try_from(*i).ok(),
        other => value_str(other)?.parse().ok(),
    }
}

fn parse_position(epoch: &Value, offset: &Value) -> Result<Position, BackplaneError> {
    Ok(Position {
        epoch: value_str(epoch)
            .ok_or_else(|| BackplaneError::Protocol("epoch is not a string".into()))?,
        offset: value_u64(offset)
            .ok_or_else(|| BackplaneError::Protocol("offset is not an integer".into()))?,
    })
}

fn parse_history(reply: Vec<Value>) -> Result<History, BackplaneError> {
    if reply.len() < 2 || !reply.len().is_multiple_of(2) {
        return Err(BackplaneError::Protocol(format!(
            "history reply of {} items",
            reply.len()
        )));
    }
    let position = parse_position(&reply[0], &reply[1])?;
    let mut messages = Vec::with_capacity(reply.len() / 2 - 1);
    for pair in reply[2..].chunks_exact(2) {
        let id = value_str(&pair[0]).ok_or_else(|| BackplaneError::Protocol("stream id".into()))?;
        let offset = id
            .split_once('-')
            .and_then(|(ms, _)| ms.parse().ok())
            .ok_or_else(|| BackplaneError::Protocol(format!("stream id '{id}'")))?;
        let text =
            value_str(&pair[1]).ok_or_else(|| BackplaneError::Protocol("stream frame".into()))?;
        messages.push(StoredMessage {
            offset,
            frame: Utf8Bytes::from(text),
        });
    }
    Ok(History { position, messages })
}

#[async_trait]
impl Backplane for RedisBackplane {
    async fn publish(&self, req: PublishRequest<'_>) -> Result<Published, BackplaneError> {
        self.check_link()?;
        let channel = self.keys.pubsub(req.channel);
        let idem_ms = req.idempotency.map(|i| (i.ttl.as_millis().max(1)) as i64);
        match (req.durable, req.idempotency) {
            (None, None) => {
                let frame = protocol::message_frame_from(req.channel, req.data, req.source, None);
                let _: i64 = self.client.publish(channel, frame).await.map_err(map_err)?;
                Ok(Published::Plain)
            }
            (None, Some(idem)) => {
                let frame = protocol::message_frame_from(req.channel, req.data, req.source, None);
                let keys = vec![self.keys.idempotency(req.channel, idem.key), channel];
                let args: Vec<Value> = vec![Value::Bytes(frame), idem_ms.unwrap_or(1).into()];
                let status: String = self
                    .idempotent_script
                    .evalsha_with_reload(&self.client, keys, args)
                    .await
                    .map_err(map_err)?;
                match status.as_str() {
                    "ok" => Ok(Published::Plain),
                    "dup" => Ok(Published::Duplicate(Box::new(Published::Plain))),
                    "conflict" => Err(BackplaneError::Conflict),
                    other => Err(BackplaneError::Protocol(format!(
                        "idempotent publish: {other}"
                    ))),
                }
            }
            (Some(d), idem) => {
                let open = protocol::message_frame_open(req.channel, req.data, req.source);
                let mut keys = vec![
                    self.keys.meta(req.channel),
                    self.keys.stream(req.channel),
                    channel,
                ];
                let mut args: Vec<Value> = vec![
                    Value::Bytes(open),
                    (d.history_size.min(i64::MAX as u64) as i64).into(),
                    ttl_secs(d).into(),
                    new_epoch().into(),
                ];
                if let Some(idem) = idem {
                    keys.push(self.keys.idempotency(req.channel, idem.key));
                    args.push(idem_ms.unwrap_or(1).into());
                }
                let reply: Vec<Value> = self
                    .publish_script
                    .evalsha_with_reload(&self.client, keys, args)
                    .await
                    .map_err(map_err)?;
                match reply.as_slice() {
                    [status, epoch, offset] => {
                        let pos = Published::Durable(parse_position(epoch, offset)?);
                        match value_str(status).as_deref() {
                            Some("ok") => Ok(pos),
                            Some("dup") => Ok(Published::Duplicate(Box::new(pos))),
                            _ => Err(BackplaneError::Protocol("publish script status".into())),
                        }
                    }
                    [status] if value_str(status).as_deref() == Some("conflict") => {
                        Err(BackplaneError::Conflict)
                    }
                    _ => Err(BackplaneError::Protocol("publish script reply".into())),
                }
            }
        }
    }

    async fn append_upstream(
        &self,
        ns: &str,
        maxlen: u64,
        fields: &[(&str, &str)],
    ) -> Result<String, BackplaneError> {
        self.check_link()?;
        let mut args: Vec<Value> = Vec::with_capacity(5 + fields.len() * 2);
        args.push(self.keys.upstream(ns).into());
        args.push("MAXLEN".into());
        args.push("~".into());
        args.push((maxlen.min(i64::MAX as u64) as i64).into());
        args.push("*".into());
        for (k, v) in fields {
            args.push((*k).into());
            args.push((*v).into());
        }
        let cmd = CustomCommand::new_static("XADD", ClusterHash::FirstKey, false);
        let id: Value = self.client.custom(cmd, args).await.map_err(map_err)?;
        value_str(&id).ok_or_else(|| BackplaneError::Protocol("XADD reply".into()))
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BackplaneError> {
        self.check_link()?;
        self.subscriber
            .subscribe(self.keys.pubsub(channel))
            .await
            .map_err(map_err)?;
        self.confirm_subscribed().await
    }

    async fn subscribe_many(&self, channels: &[&str]) -> Result<(), BackplaneError> {
        for chunk in channels.chunks(SUBSCRIBE_CHUNK) {
            let names: Vec<String> = chunk.iter().map(|c| self.keys.pubsub(c)).collect();
            self.subscriber.subscribe(names).await.map_err(map_err)?;
        }
        self.confirm_subscribed().await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BackplaneError> {
        self.subscriber
            .unsubscribe(self.keys.pubsub(channel))
            .await
            .map_err(map_err)
    }

    fn link(&self) -> watch::Receiver<Link> {
        self.link.subscribe()
    }

    async fn publish_event(&self, channel: &str, frame: Utf8Bytes) -> Result<(), BackplaneError> {
        self.check_link()?;
        let bytes: Bytes = frame.into();
        let _: i64 = self
            .client
            .publish(self.keys.pubsub(channel), bytes)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn presence_join(
        &self,
        channel: &str,
        entry: &PresenceEntry,
        ttl: Duration,
    ) -> Result<bool, BackplaneError> {
        self.check_link()?;
        let args: Vec<Value> = vec![
            entry.session.as_str().into(),
            entry.json.as_str().into(),
            entry.user.as_deref().unwrap_or("").into(),
            (now_ms() + ttl.as_millis() as i64).into(),
            presence_key_ttl(ttl).into(),
        ];
        let new: i64 = self
            .presence_scripts
            .join
            .evalsha_with_reload(&self.client, self.keys.presence(channel), args)
            .await
            .map_err(map_err)?;
        Ok(new == 1)
    }

    async fn presence_leave(
        &self,
        channel: &str,
        entry: &PresenceEntry,
    ) -> Result<bool, BackplaneError> {
        self.check_link()?;
        let args: Vec<Value> = vec![
            entry.session.as_str().into(),
            entry.user.as_deref().unwrap_or("").into(),
        ];
        let gone: i64 = self
            .presence_scripts
            .leave
            .evalsha_with_reload(&self.client, self.keys.presence(channel), args)
            .await
            .map_err(map_err)?;
        Ok(gone == 1)
    }

    async fn presence_refresh(
        &self,
        channel: &str,
        entries: &[PresenceEntry],
        ttl: Duration,
    ) -> Result<u64, BackplaneError> {
        self.check_link()?;
        let mut args: Vec<Value> = Vec::with_capacity(2 + entries.len() * 3);
        args.push((now_ms() + ttl.as_millis() as i64).into());
        args.push(presence_key_ttl(ttl).into());
        for e in entries {
            args.push(e.session.as_str().into());
            args.push(e.json.as_str().into());
            args.push(e.user.as_deref().unwrap_or("").into());
        }
        let restored: i64 = self
            .presence_scripts
            .refresh
            .evalsha_with_reload(&self.client, self.keys.presence(channel), args)
            .await
            .map_err(map_err)?;
        Ok(restored.max(0) as u64)
    }

    async fn presence_sweep(&self, channel: &str) -> Result<Vec<PresenceEntry>, BackplaneError> {
        self.check_link()?;
        let args: Vec<Value> = vec![now_ms().into(), SWEEP_BATCH.into()];
        let reply: Vec<Value> = self
            .presence_scripts
            .sweep
            .evalsha_with_reload(&self.client, self.keys.presence(channel), args)
            .await
            .map_err(map_err)?;
        let mut out = Vec::with_capacity(reply.len() / 2);
        for pair in reply.chunks_exact(2) {
            let (Some(session), Some(json)) = (value_str(&pair[0]), value_str(&pair[1])) else {
                continue;
            };
            let user = serde_json::from_str::<serde_json::Value>(&json)
                .ok()
                .and_then(|v| v.get("user").and_then(|u| u.as_str()).map(String::from));
            out.push(PresenceEntry {
                session,
                user,
                json,
            });
        }
        Ok(out)
    }

    async fn presence_list(
        &self,
        channel: &str,
        max: usize,
    ) -> Result<Option<Vec<String>>, BackplaneError> {
        self.check_link()?;
        let key = &self.keys.presence(channel)[0];
        let count: u64 = self.client.hlen(key).await.map_err(map_err)?;
        if count as usize > max {
            return Ok(None);
        }
        let entries: Vec<String> = self.client.hvals(key).await.map_err(map_err)?;
        Ok(Some(entries))
    }

    async fn presence_stats(&self, channel: &str) -> Result<(u64, u64), BackplaneError> {
        self.check_link()?;
        let keys = self.keys.presence(channel);
        let clients: u64 = self.client.hlen(&keys[0]).await.map_err(map_err)?;
        let users: u64 = self.client.hlen(&keys[2]).await.map_err(map_err)?;
        Ok((clients, users))
    }

    async fn position(&self, channel: &str, d: Durability) -> Result<Position, BackplaneError> {
        Ok(self
            .run_history(channel, d, "none", 0, None)
            .await?
            .position)
    }

    async fn history(
        &self,
        channel: &str,
        d: Durability,
        query: HistoryQuery,
    ) -> Result<History, BackplaneError> {
        match query {
            HistoryQuery::After { offset, limit } => {
                self.run_history(channel, d, "after", offset, limit).await
            }
            HistoryQuery::Newest { limit } => {
                self.run_history(channel, d, "newest", 0, limit).await
            }
        }
    }
}

/// What the reader drops: each payload counted, the lines rate-limited per kind.
struct Drops {
    max_frame_bytes: usize,
    invalid: Arc<LogLimit>,
    oversized: Arc<LogLimit>,
    metrics: Arc<Metrics>,
}

impl Drops {
    fn invalid(&self, channel: &str, reason: &str) {
        self.metrics.invalid_payloads.increment(1);
        if let Some(suppressed) = self.invalid.admit(reason) {
            tracing::warn!(
                channel,
                reason = log_limit::clip(reason),
                suppressed,
                "dropped an invalid backplane payload"
            );
        }
    }

    fn oversized(&self, channel: &str, bytes: usize) {
        self.metrics.oversized_payloads.increment(1);
        let reason = "above limits.max_backplane_frame_bytes";
        if let Some(suppressed) = self.oversized.admit(reason) {
            tracing::warn!(
                channel,
                bytes,
                limit = self.max_frame_bytes,
                suppressed,
                "dropped an oversized backplane payload unread"
            );
        }
    }
}

/// The one reader of pub/sub messages: validate once, hand to the node.
async fn read_messages(
    mut rx: broadcast::Receiver<fred::types::Message>,
    keys: Keys,
    inbound: Arc<dyn Inbound>,
    drops: Drops,
    shutdown: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return,
            msg = rx.recv() => msg,
        };
        match msg {
            Ok(msg) => {
                let now = Instant::now();
                let Some(channel) = keys.channel_of(&msg.channel) else {
                    continue;
                };
                let bytes: Bytes = match msg.value {
                    Value::String(s) => s.into_inner(),
                    Value::Bytes(b) => b,
                    _ => {
                        drops.invalid(channel, "not a string payload");
                        continue;
                    }
                };
                // Before any parsing: a frame this large would cost every subscriber
                // its copy in the socket buffers, and parsing it costs the reader.
                if bytes.len() > drops.max_frame_bytes {
                    drops.oversized(channel, bytes.len());
                    continue;
                }
                let Ok(frame) = Utf8Bytes::try_from(bytes) else {
                    drops.invalid(channel, "payload is not UTF-8");
                    continue;
                };
                match protocol::check_payload(channel, frame.as_str()) {
                    Ok(PayloadKind::Message { seq }) => {
                        let seq = seq.as_ref().map(|(o, e)| (*o, e.as_str()));
                        inbound.deliver(channel, &frame, seq, now);
                    }
                    Ok(PayloadKind::Presence) => inbound.deliver(channel, &frame, None, now),
                    Err(reason) => drops.invalid(channel, &reason),
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                drops.metrics.backplane_lagged.increment(n);
                tracing::warn!(
                    skipped = n,
                    "backplane reader lagged; checking durable channels for gaps"
                );
                inbound.lost_any();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Keeps [`Link`] true to both connections. A reconnect of the subscriber starts a new
/// generation: its subscriptions are gone and must be made again.
async fn watch_link(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_follow_the_protocol() {
        let k = Keys::new("herald");
        assert_eq!(k.pubsub("chat:1"), "herald:{chat:1}:ch");
        assert_eq!(k.stream("chat:1"), "herald:{chat:1}:stream");
        assert_eq!(k.meta("chat:1"), "herald:{chat:1}:meta");
        assert_eq!(k.channel_of("herald:{chat:1}:ch"), Some("chat:1"));
        assert_eq!(k.channel_of("other:{chat:1}:ch"), None);
        assert_eq!(k.channel_of("herald:{chat:1}:stream"), None);
    }

    #[test]
    fn history_replies_parse() {
        let reply = vec![
            Value::from("ep"),
            Value::Integer(7),
            Value::from("6-1"),
            Value::from("{\"f\":6}"),
            Value::from("7-1"),
            Value::from("{\"f\":7}"),
        ];
        let h = parse_history(reply).unwrap();
        assert_eq!(
            h.position,
            Position {
                epoch: "ep".into(),
                offset: 7
            }
        );
        assert_eq!(
            h.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![6, 7]
        );
        assert!(parse_history(vec![Value::from("ep")]).is_err());
        assert!(
            parse_history(vec![
                Value::from("ep"),
                Value::Integer(1),
                Value::from("x"),
                Value::from("y")
            ])
            .is_err()
        );
    }
}
