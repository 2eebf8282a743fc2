//! Ingest (PROTOCOL §5.1): a microservice's Redis stream into Herald channels, read as
//! one consumer (named after the node) of a consumer group shared by the fleet.
//!
//! The guarantees and how each is kept:
//! 1. Never dropped: an entry is `XACK`ed only after the backplane accepted its
//!    publication, or after it went to the dead-letter stream (unmappable, or delivered
//!    `max_deliveries` times without success; counts come from `XPENDING`).
//! 2. Exactly once into the channel: each publication carries the idempotency key
//!    `ingest:<stream>:<id>`, so an entry published but not acknowledged (a crash in
//!    between) is recognised when processed again within `idempotency_ttl`.
//! 3. Failover: a node first reads its own pending list from `0`; entries a dead node
//!    left pending are claimed with `XAUTOCLAIM` (cursor looped to `0-0`).
//! 4. Order: `ordered = true` lets one node at a time read, under a lease in Redis that
//!    another node takes over when it is not renewed for `reclaim_idle`.
//! 5. Redis trouble: reads pause while the link is down; `NOGROUP` (stream deleted,
//!    Redis restarted empty) creates the group again at `0`.
//!
//! Blocking reads use a connection of their own, so a `BLOCK` never stalls publishes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::SourceMetrics;
use fred::clients::Client;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand};
use tokio_util::sync::CancellationToken;

use super::entry::{ChannelRule, Entry, map_entry, parse_autoclaim, parse_read};
use crate::backplane::log_limit::{self, LogLimit};
use crate::backplane::redis::RedisBackplane;
use crate::backplane::{Idempotency, PublishRequest, Published};
use crate::config::{Config, ConfigError, IngestSource, parse_duration};
use crate::error::BackplaneError;
use crate::protocol::{self, Source as FrameSource};
use crate::publish::durability;
use crate::state::AppState;

const LEASE_LUA: &str = include_str!("lease.lua");
const LEASE_RELEASE_LUA: &str = include_str!("lease_release.lua");

/// Longest `BLOCK` of one read: bounds how late a stop or a lease renewal can be.
const MAX_BLOCK: Duration = Duration::from_secs(2);
/// The client-side timeout of a blocking read is its BLOCK plus this margin.
const BLOCK_MARGIN: Duration = Duration::from_secs(2);
/// How often consumer hygiene and lag metrics run.
const HYGIENE_EVERY: Duration = Duration::from_secs(10);
/// Pause after a failed step, so a persistent failure does not spin.
const RETRY_PAUSE: Duration = Duration::from_millis(300);

/// A source, validated.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub stream: String,
    pub group: String,
    pub rule: ChannelRule,
    pub data: String,
    pub start: String,
    pub ordered: bool,
    pub reclaim_idle: Duration,
    pub max_deliveries: u32,
    pub dead_letter: String,
    pub batch: u32,
}

/// Validates every `[[ingest]]` block (CONFIG.md): one of `channel` / `channel_field`,
/// a template in a known namespace, `reclaim_idle` under a third of `idempotency_ttl`.
pub fn validate(config: &Config) -> Result<Vec<SourceSpec>, ConfigError> {
    let mut out = Vec::new();
    for (i, src) in config.ingest.iter().enumerate() {
        let key = |k: &str| format!("ingest[{i}].{k}");
        let err = |k: &str, reason: String| ConfigError {
            source_name: "config".into(),
            key: key(k),
            reason,
        };
        out.push(validate_one(config, src, &err)?);
    }
    Ok(out)
}

fn validate_one(
    config: &Config,
    src: &IngestSource,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<SourceSpec, ConfigError> {
    if src.stream.is_empty() || src.stream.chars().any(char::is_whitespace) {
        return Err(err("stream", "must be a stream key without spaces".into()));
    }
    let rule = match (&src.channel, &src.channel_field) {
        (Some(t), None) => {
            super::entry::check_template(t).map_err(|m| err("channel", m))?;
            let probe = t.replace(['{', '}'], "");
            if config.namespaces.for_channel(&probe).is_none() {
                return Err(err(
                    "channel",
                    format!(
                        "namespace '{}' is not declared",
                        protocol::namespace_of(&probe)
                    ),
                ));
            }
            ChannelRule::Template(t.clone())
        }
        (None, Some(f)) => ChannelRule::Field(f.clone()),
        _ => {
            return Err(err(
                "channel",
                "give exactly one of 'channel' and 'channel_field'".into(),
            ));
        }
    };
    let reclaim_idle = match &src.reclaim_idle {
        Some(v) => parse_duration(v).map_err(|m| err("reclaim_idle", m))?,
        None => Duration::from_secs(30),
    };
    if reclaim_idle.is_zero() || reclaim_idle * 3 >= config.idempotency_ttl {
        return Err(err(
            "reclaim_idle",
            "must be above zero and shorter than a third of server.idempotency_ttl".into(),
        ));
    }
    if src.batch == 0 || src.max_deliveries == 0 {
        return Err(err(
            "batch",
            "batch and max_deliveries must be at least 1".into(),
        ));
    }
    if src.start != "$" && src.start != "0" && !src.start.contains('-') {
        return Err(err("start", "must be \"$\", \"0\" or a stream id".into()));
    }
    Ok(SourceSpec {
        stream: src.stream.clone(),
        group: src.group.clone(),
        rule,
        data: src.data.clone(),
        start: src.start.clone(),
        ordered: src.ordered,
        reclaim_idle,
        max_deliveries: src.max_deliveries,
        dead_letter: src
            .dead_letter
            .clone()
            .unwrap_or_else(|| format!("{}:dead", src.stream)),
        batch: src.batch,
    })
}

/// Why a step of the loop stopped.
#[derive(Debug, thiserror::Error)]
enum StepError {
    /// The group is gone: create it again at `0`.
    #[error("the consumer group is gone")]
    NoGroup,
    #[error("redis: {0}")]
    Redis(String),
    #[error("{0}")]
    Backplane(BackplaneError),
}

impl From<fred::error::Error> for StepError {
    fn from(e: fred::error::Error) -> Self {
        if e.details().starts_with("NOGROUP") {
            StepError::NoGroup
        } else {
            StepError::Redis(e.to_string())
        }
    }
}

/// Starts one reader task per source.
pub fn start(
    state: Arc<AppState>,
    redis: Arc<RedisBackplane>,
    specs: Vec<SourceSpec>,
    shutdown: CancellationToken,
) {
    // A test-only fault point: abort the process after this many publishes, before
    // their acknowledgement, to prove exactly-once across a crash there.
    let abort_after = std::env::var("HERALD_TEST_ABORT_AFTER_INGEST_PUBLISH")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    for spec in specs {
        let metrics = state.metrics.source(&spec.stream);
        // A producer can write unmappable entries as fast as Redis takes them: each is
        // counted and kept in the dead-letter stream with its reason, the log gets a
        // line per burst.
        let dead_letters = Arc::new(LogLimit::new(
            format!("entries of stream '{}' dead-lettered", spec.stream),
            log_limit::INTERVAL,
        ));
        tokio::spawn(dead_letters.clone().run(shutdown.clone()));
        let reader = Reader {
            dead_letters,
            lease_key: format!(
                "{}:ingest:{}:{}:lease",
                state.config.prefix, spec.stream, spec.group
            ),
            me: state.config.node_id.clone(),
            client: redis.client().clone(),
            state: state.clone(),
            metrics,
            spec,
            lease: Script::from_lua(LEASE_LUA),
            release: Script::from_lua(LEASE_RELEASE_LUA),
            abort_after,
            published: 0,
            acks: Default::default(),
        };
        tokio::spawn(reader.run(shutdown.clone()));
    }
}

struct Reader {
    state: Arc<AppState>,
    client: Client,
    spec: SourceSpec,
    me: String,
    lease_key: String,
    lease: Script,
    release: Script,
    metrics: SourceMetrics,
    dead_letters: Arc<LogLimit>,
    abort_after: Option<u64>,
    published: u64,
    /// Entries done but not yet acknowledged (flushed per batch and after each step).
    acks: std::sync::Mutex<Vec<String>>,
}

fn cmd(name: &'static str, key_at: usize, blocking: bool) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::Offset(key_at), blocking)
}

impl Reader {
    async fn run(mut self, shutdown: CancellationToken) {
        // Blocking reads get a connection of their own.
        let blocking = self.client.clone_new();
        blocking.connect();
        let mut group_ready = false;
        let mut holding = false;
        let mut last_claim: Option<Instant> = None;
        let mut last_hygiene: Option<Instant> = None;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if !self.state.link().connected || !blocking.is_connected() {
                holding = false;
                pause(&shutdown, Duration::from_millis(200)).await;
                continue;
            }
            let step = async {
                if !group_ready {
                    self.create_group(&self.spec.start.clone()).await?;
                    group_ready = true;
                }
                if self.spec.ordered {
                    let status: i64 = self
                        .lease
                        .evalsha_with_reload(
                            &self.client,
                            vec![self.lease_key.clone()],
                            vec![
                                self.me.clone(),
                                (self.spec.reclaim_idle.as_millis() as i64).to_string(),
                            ],
                        )
                        .await?;
                    let was = holding;
                    holding = status != 0;
                    if !holding {
                        return Ok(false);
                    }
                    if !was {
                        // The previous holder is gone: take over everything it left.
                        tracing::info!(stream = %self.spec.stream, "ingest lease taken");
                        self.claim_all(Duration::ZERO).await?;
                    }
                } else if last_claim.is_none_or(|t| t.elapsed() >= self.spec.reclaim_idle / 2) {
                    self.claim_all(self.spec.reclaim_idle).await?;
                    last_claim = Some(Instant::now());
                }
                let clean = self.drain_pending().await?;
                if last_hygiene.is_none_or(|t| t.elapsed() >= HYGIENE_EVERY) {
                    self.hygiene().await?;
                    last_hygiene = Some(Instant::now());
                }
                if clean {
                    self.read_new(&blocking).await?;
                }
                Ok::<bool, StepError>(clean)
            };
            let step = step.await;
            if let Err(e) = self.flush_acks().await {
                tracing::warn!(stream = %self.spec.stream, error = %e, "acknowledgements failed; entries will be processed again");
            }
            match step {
                Ok(true) => {}
                Ok(false) => {
                    pause(
                        &shutdown,
                        (self.spec.reclaim_idle / 3).min(Duration::from_secs(1)),
                    )
                    .await
                }
                Err(StepError::NoGroup) => {
                    tracing::warn!(stream = %self.spec.stream, "consumer group lost; creating it again at 0");
                    if self.create_group("0").await.is_ok() {
                        group_ready = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(stream = %self.spec.stream, error = %e, "ingest step failed; retrying");
                    pause(&shutdown, RETRY_PAUSE).await;
                }
            }
        }
        self.stop(holding).await;
        let _ = blocking.quit().await;
    }

    /// Graceful stop: give the lease up, and delete this consumer when nothing is
    /// pending for it.
    async fn stop(&self, holding: bool) {
        if holding {
            let _: Result<i64, _> = self
                .release
                .evalsha_with_reload(
                    &self.client,
                    vec![self.lease_key.clone()],
                    vec![self.me.clone()],
                )
                .await;
        }
        let pending: Result<Value, _> = self
            .client
            .custom(
                cmd("XPENDING", 0, false),
                vec![
                    self.spec.stream.clone(),
                    self.spec.group.clone(),
                    "-".into(),
                    "+".into(),
                    "1".into(),
                    self.me.clone(),
                ],
            )
            .await;
        if matches!(pending, Ok(Value::Array(ref a)) if a.is_empty()) {
            let _: Result<Value, _> = self
                .client
                .custom(
                    cmd("XGROUP", 1, false),
                    vec![
                        "DELCONSUMER".into(),
                        self.spec.stream.clone(),
                        self.spec.group.clone(),
                        self.me.clone(),
                    ],
                )
                .await;
        }
    }

    async fn create_group(&self, at: &str) -> Result<(), StepError> {
        let r: Result<Value, _> = self
            .client
            .custom(
                cmd("XGROUP", 1, false),
                vec![
                    "CREATE",
                    &self.spec.stream,
                    &self.spec.group,
                    at,
                    "MKSTREAM",
                ],
            )
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.details().starts_with("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Claims entries pending on any consumer for at least `min_idle`, cursor looped to
    /// `0-0`, and processes them.
    async fn claim_all(&mut self, min_idle: Duration) -> Result<(), StepError> {
        let mut cursor = "0-0".to_string();
        loop {
            let reply: Value = self
                .client
                .custom(
                    cmd("XAUTOCLAIM", 0, false),
                    vec![
                        self.spec.stream.clone(),
                        self.spec.group.clone(),
                        self.me.clone(),
                        (min_idle.as_millis() as u64).to_string(),
                        cursor.clone(),
                        "COUNT".into(),
                        self.spec.batch.to_string(),
                    ],
                )
                .await?;
            let (next, entries, deleted) = parse_autoclaim(&reply);
            if !deleted.is_empty() {
                // Redis already dropped them from the pending list; nothing to publish.
                tracing::debug!(stream = %self.spec.stream, count = deleted.len(), "claimed ids were deleted");
            }
            if !entries.is_empty() {
                self.metrics.reclaimed.increment(entries.len() as u64);
            }
            for e in entries {
                self.handle(e, true).await?;
            }
            if next == "0-0" || next.is_empty() {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Processes this consumer's own pending list from `0`. Returns false when an entry
    /// stays pending (its publish failed; it will be retried).
    async fn drain_pending(&mut self) -> Result<bool, StepError> {
        let mut cursor = "0".to_string();
        loop {
            let reply: Value = self
                .client
                .custom(
                    cmd("XREADGROUP", 6, false),
                    vec![
                        "GROUP".to_string(),
                        self.spec.group.clone(),
                        self.me.clone(),
                        "COUNT".into(),
                        self.spec.batch.to_string(),
                        "STREAMS".into(),
                        self.spec.stream.clone(),
                        cursor.clone(),
                    ],
                )
                .await?;
            let entries = parse_read(&reply);
            if entries.is_empty() {
                return Ok(true);
            }
            let mut clean = true;
            for e in entries {
                cursor = e.id.clone();
                clean &= self.handle(e, true).await?;
            }
            if !clean {
                return Ok(false);
            }
        }
    }

    async fn read_new(&mut self, blocking: &Client) -> Result<(), StepError> {
        let block = (self.spec.reclaim_idle / 3).clamp(Duration::from_millis(50), MAX_BLOCK);
        let options = Options {
            timeout: Some(block + BLOCK_MARGIN),
            ..Options::default()
        };
        let reply: Value = blocking
            .with_options(&options)
            .custom(
                cmd("XREADGROUP", 8, true),
                vec![
                    "GROUP".to_string(),
                    self.spec.group.clone(),
                    self.me.clone(),
                    "COUNT".into(),
                    self.spec.batch.to_string(),
                    "BLOCK".into(),
                    (block.as_millis() as u64).to_string(),
                    "STREAMS".into(),
                    self.spec.stream.clone(),
                    ">".into(),
                ],
            )
            .await?;
        for e in parse_read(&reply) {
            // A failure leaves the entry pending: the next round reads it from `0`.
            if !self.handle(e, false).await? {
                break;
            }
        }
        Ok(())
    }

    /// Publishes or dead-letters one entry, then acknowledges it. Returns false when it
    /// stays pending for a retry.
    async fn handle(&mut self, entry: Entry, redelivered: bool) -> Result<bool, StepError> {
        let Some(fields) = entry.fields.clone() else {
            // Deleted from the stream while pending: nothing left to publish.
            self.ack(&entry.id).await?;
            return Ok(true);
        };
        if redelivered {
            let deliveries = self.deliveries(&entry.id).await?;
            if deliveries > u64::from(self.spec.max_deliveries) {
                let reason = format!("delivered {deliveries} times without success");
                self.dead_letter(&entry.id, &fields, &reason).await?;
                return Ok(true);
            }
        }
        let mapped = match map_entry(&fields, &self.spec.rule, &self.spec.data) {
            Ok(m) => m,
            Err(reason) => {
                self.dead_letter(&entry.id, &fields, &reason).await?;
                return Ok(true);
            }
        };
        let Some(ns) = self.state.config.namespaces.for_channel(&mapped.channel) else {
            let reason = format!(
                "unknown namespace '{}'",
                protocol::namespace_of(&mapped.channel)
            );
            self.dead_letter(&entry.id, &fields, &reason).await?;
            return Ok(true);
        };
        let key = format!("ingest:{}:{}", self.spec.stream, entry.id);
        let req = PublishRequest {
            channel: &mapped.channel,
            data: &mapped.data,
            durable: durability(ns),
            idempotency: Some(Idempotency {
                key: &key,
                ttl: self.state.config.idempotency_ttl,
            }),
            source: Some(FrameSource {
                stream: &self.spec.stream,
                id: &entry.id,
            }),
        };
        match self.state.backplane.publish(req).await {
            Ok(published) => {
                if matches!(published, Published::Duplicate(_)) {
                    self.metrics.duplicates.increment(1);
                } else {
                    self.metrics.published.increment(1);
                    self.state.metrics.published.increment(1);
                }
                self.published += 1;
                if self.abort_after.is_some_and(|n| self.published >= n) {
                    tracing::error!(
                        "test fault point: aborting between publish and acknowledgement"
                    );
                    std::process::abort();
                }
                self.ack(&entry.id).await?;
                Ok(true)
            }
            Err(BackplaneError::Unavailable(e)) => {
                Err(StepError::Backplane(BackplaneError::Unavailable(e)))
            }
            Err(e) => {
                // Left pending: retried until max_deliveries, then dead-lettered.
                tracing::warn!(stream = %self.spec.stream, id = %entry.id, error = %e, "ingest publish failed");
                Ok(false)
            }
        }
    }

    async fn deliveries(&self, id: &str) -> Result<u64, StepError> {
        let reply: Value = self
            .client
            .custom(
                cmd("XPENDING", 0, false),
                vec![
                    self.spec.stream.as_str(),
                    self.spec.group.as_str(),
                    id,
                    id,
                    "1",
                ],
            )
            .await?;
        // [[id, consumer, idle, deliveries]]
        let count = match reply {
            Value::Array(rows) => rows.first().and_then(|row| match row {
                Value::Array(cols) => cols.get(3).and_then(|v| v.as_u64()),
                _ => None,
            }),
            _ => None,
        };
        Ok(count.unwrap_or(1))
    }

    /// Marks an entry done. Acknowledgements go out in one `XACK` per batch; an
    /// entry published but not yet acknowledged when the node stops is processed again
    /// and recognised by its idempotency key.
    async fn ack(&self, id: &str) -> Result<(), StepError> {
        let full = {
            let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
            acks.push(id.to_string());
            acks.len() >= self.spec.batch as usize
        };
        if full {
            self.flush_acks().await?;
        }
        Ok(())
    }

    async fn flush_acks(&self) -> Result<(), StepError> {
        let ids = std::mem::take(&mut *self.acks.lock().unwrap_or_else(|p| p.into_inner()));
        if ids.is_empty() {
            return Ok(());
        }
        let mut args = Vec::with_capacity(ids.len() + 2);
        args.push(self.spec.stream.clone());
        args.push(self.spec.group.clone());
        args.extend(ids);
        let _: Value = self.client.custom(cmd("XACK", 0, false), args).await?;
        Ok(())
    }

    /// Appends the entry to the dead-letter stream with a reason, then acknowledges it.
    async fn dead_letter(
        &self,
        id: &str,
        fields: &[(String, String)],
        reason: &str,
    ) -> Result<(), StepError> {
        if let Some(suppressed) = self.dead_letters.admit(reason) {
            tracing::warn!(
                stream = %self.spec.stream,
                id,
                reason = log_limit::clip(reason),
                suppressed,
                "entry dead-lettered"
            );
        }
        let mut args: Vec<String> = vec![
            self.spec.dead_letter.clone(),
            "*".into(),
            "stream".into(),
            self.spec.stream.clone(),
            "id".into(),
            id.into(),
            "reason".into(),
            reason.into(),
        ];
        for (k, v) in fields {
            // The original fields follow; a field named like ours keeps its value under
            // a prefixed name.
            let name = if matches!(k.as_str(), "stream" | "id" | "reason") {
                format!("field:{k}")
            } else {
                k.clone()
            };
            args.push(name);
            args.push(v.clone());
        }
        let _: Value = self.client.custom(cmd("XADD", 0, false), args).await?;
        self.metrics.dead_lettered.increment(1);
        self.ack(id).await
    }

    /// Removes consumers of departed nodes that have nothing pending, and updates the
    /// lag gauge (group lag plus pending).
    async fn hygiene(&self) -> Result<(), StepError> {
        let consumers: Value = self
            .client
            .custom(
                cmd("XINFO", 1, false),
                vec!["CONSUMERS", &self.spec.stream, &self.spec.group],
            )
            .await?;
        let stale_after = (self.spec.reclaim_idle * 10).max(Duration::from_secs(60));
        if let Value::Array(list) = consumers {
            for c in list {
                let info = flat_map(&c);
                let name = info
                    .iter()
                    .find(|(k, _)| k == "name")
                    .and_then(|(_, v)| v.as_string());
                let pending = info
                    .iter()
                    .find(|(k, _)| k == "pending")
                    .and_then(|(_, v)| v.as_u64());
                let idle = info
                    .iter()
                    .find(|(k, _)| k == "idle")
                    .and_then(|(_, v)| v.as_u64());
                if let (Some(name), Some(0), Some(idle)) = (name, pending, idle)
                    && name != self.me
                    && Duration::from_millis(idle) > stale_after
                {
                    let _: Value = self
                        .client
                        .custom(
                            cmd("XGROUP", 1, false),
                            vec!["DELCONSUMER", &self.spec.stream, &self.spec.group, &name],
                        )
                        .await?;
                    tracing::info!(stream = %self.spec.stream, consumer = %name, "removed a departed consumer");
                }
            }
        }
        let groups: Value = self
            .client
            .custom(cmd("XINFO", 1, false), vec!["GROUPS", &self.spec.stream])
            .await?;
        if let Value::Array(list) = groups {
            for g in list {
                let info = flat_map(&g);
                let get = |k: &str| info.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                if get("name").and_then(|v| v.as_string()).as_deref()
                    == Some(self.spec.group.as_str())
                {
                    let lag = get("lag").and_then(|v| v.as_u64()).unwrap_or(0);
                    let pending = get("pending").and_then(|v| v.as_u64()).unwrap_or(0);
                    self.metrics.lag.set((lag + pending) as f64);
                }
            }
        }
        Ok(())
    }
}

/// A RESP2 flat `[k1, v1, k2, v2, …]` (or a RESP3 map) as pairs.
fn flat_map(v: &Value) -> Vec<(String, Value)> {
    match v {
        Value::Array(items) => items
            .chunks_exact(2)
            .filter_map(|c| Some((c[0].as_string()?, c[1].clone())))
            .collect(),
        Value::Map(m) => m
            .clone()
            .inner()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.clone())))
            .collect(),
        _ => Vec::new(),
    }
}

async fn pause(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_validated() {
        let ok = Config::from_toml(
            "[namespaces.orders]\n[[ingest]]\nstream = \"orders.events\"\nchannel = \"orders:{customer}\"\n",
        )
        .unwrap();
        let specs = validate(&ok).unwrap();
        assert_eq!(specs[0].dead_letter, "orders.events:dead");
        assert!(specs[0].ordered);

        let unknown_ns =
            Config::from_toml("[[ingest]]\nstream = \"s\"\nchannel = \"nope:{x}\"\n").unwrap();
        assert_eq!(validate(&unknown_ns).unwrap_err().key, "ingest[0].channel");
        let both = Config::from_toml(
            "[[ingest]]\nstream = \"s\"\nchannel = \"a\"\nchannel_field = \"c\"\n",
        )
        .unwrap();
        assert!(validate(&both).is_err());
        let slow = Config::from_toml(
            "[[ingest]]\nstream = \"s\"\nchannel = \"a\"\nreclaim_idle = \"2m\"\n",
        )
        .unwrap();
        assert_eq!(validate(&slow).unwrap_err().key, "ingest[0].reclaim_idle");
    }
}
