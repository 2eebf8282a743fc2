//! The reader of one source: a consumer (named after the node) of the fleet's consumer
//! group, looping until the node stops. Each step takes or renews the lease (ordered
//! sources) or claims what departed nodes left pending, drains this consumer's own
//! pending list, runs hygiene now and then, and reads new entries; each entry is
//! published with its idempotency key, or dead-lettered, then acknowledged.
//!
//! The commands' argument lists are `commands.rs`'s, the lease `lease.rs`'s, the
//! batching of `XACK` `acks.rs`'s, the dead-letter stream `dead_letter.rs`'s, and
//! consumer hygiene `hygiene.rs`'s. Mapping an entry is `streams/entry.rs`'s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::prelude::*;
use tokio_util::sync::CancellationToken;

use super::acks::Acks;
use super::commands::{self, AutoClaim, CreateGroup, DeleteConsumer, PendingRange, ReadGroup};
use super::dead_letter::DeadLetters;
use super::hygiene;
use super::lease::Lease;
use super::spec::SourceSpec;
use crate::backplane::{Durability, Idempotency, PublishRequest, Published};
use crate::error::BackplaneError;
use crate::metrics::SourceMetrics;
use crate::protocol::{self, Source as FrameSource};
use crate::publish::durability;
use crate::state::AppState;
use crate::streams::entry::{Entry, Mapped, map_entry, parse_autoclaim, parse_read};

/// Longest `BLOCK` of one read: bounds how late a stop or a lease renewal can be.
const MAX_BLOCK: Duration = Duration::from_secs(2);
/// The client-side timeout of a blocking read is its BLOCK plus this margin.
const BLOCK_MARGIN: Duration = Duration::from_secs(2);
/// How often consumer hygiene and lag metrics run.
const HYGIENE_EVERY: Duration = Duration::from_secs(10);
/// Pause after a failed step, so a persistent failure does not spin.
const RETRY_PAUSE: Duration = Duration::from_millis(300);

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

impl From<Error> for StepError {
    fn from(e: Error) -> Self {
        if e.details().starts_with("NOGROUP") {
            StepError::NoGroup
        } else {
            StepError::Redis(e.to_string())
        }
    }
}

/// What the loop remembers from one step to the next.
#[derive(Default)]
struct Round {
    group_ready: bool,
    /// This node holds the lease (ordered sources).
    holding: bool,
    last_claim: Option<Instant>,
    last_hygiene: Option<Instant>,
}

pub(super) struct Reader {
    state: Arc<AppState>,
    client: Client,
    spec: SourceSpec,
    /// This node's id: its consumer name, and the lease's holder.
    me: String,
    lease: Lease,
    metrics: SourceMetrics,
    dead_letters: DeadLetters,
    acks: Acks,
    /// The test-only fault point (see `start`).
    abort_after: Option<u64>,
    published: u64,
}

impl Reader {
    /// Also starts the dead-letter log's task (until `shutdown`).
    pub(super) fn new(
        state: Arc<AppState>,
        client: Client,
        spec: SourceSpec,
        abort_after: Option<u64>,
        shutdown: &CancellationToken,
    ) -> Self {
        let metrics = state.metrics.source(&spec.stream);
        let dead_letters = DeadLetters::start(
            client.clone(),
            &spec,
            metrics.dead_lettered.clone(),
            shutdown.clone(),
        );
        let me = state.config.node_id.clone();
        Self {
            lease: Lease::new(&state.config.prefix, &spec.stream, &spec.group, &me),
            acks: Acks::new(client.clone(), &spec.stream, &spec.group, spec.batch),
            dead_letters,
            me,
            client,
            state,
            metrics,
            spec,
            abort_after,
            published: 0,
        }
    }

    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        // Blocking reads get a connection of their own.
        let blocking = self.client.clone_new();
        blocking.connect();
        let mut round = Round::default();
        while !shutdown.is_cancelled() {
            if !self.state.link().connected || !blocking.is_connected() {
                round.holding = false;
                pause(&shutdown, Duration::from_millis(200)).await;
                continue;
            }
            let step = self.step(&blocking, &mut round).await;
            if let Err(e) = self.acks.flush().await.map_err(StepError::from) {
                tracing::warn!(stream = %self.spec.stream, error = %e, "acknowledgements failed; entries will be processed again");
            }
            self.after(step, &mut round, &shutdown).await;
        }
        self.stop(round.holding).await;
        let _ = blocking.quit().await;
    }

    /// One round. Ok(false) when this node should wait: another node holds the lease,
    /// or an entry stays pending.
    async fn step(&mut self, blocking: &Client, round: &mut Round) -> Result<bool, StepError> {
        if !round.group_ready {
            self.create_group(&self.spec.start.clone()).await?;
            round.group_ready = true;
        }
        if !self.take_over(round).await? {
            return Ok(false);
        }
        let clean = self.drain_pending().await?;
        if round
            .last_hygiene
            .is_none_or(|t| t.elapsed() >= HYGIENE_EVERY)
        {
            hygiene::run(&self.client, &self.spec, &self.me, &self.metrics.lag).await?;
            round.last_hygiene = Some(Instant::now());
        }
        if clean {
            self.read_new(blocking).await?;
        }
        Ok(clean)
    }

    /// Ordered: renews or takes the lease (false when another node holds it), and a new
    /// holder claims everything. Unordered: claims what other consumers left idle.
    async fn take_over(&mut self, round: &mut Round) -> Result<bool, StepError> {
        if self.spec.ordered {
            let was = round.holding;
            round.holding = self
                .lease
                .take(&self.client, self.spec.reclaim_idle)
                .await?;
            if !round.holding {
                return Ok(false);
            }
            if !was {
                // The previous holder is gone: take over everything it left.
                tracing::info!(stream = %self.spec.stream, "ingest lease taken");
                self.claim_all(Duration::ZERO).await?;
            }
        } else if round
            .last_claim
            .is_none_or(|t| t.elapsed() >= self.spec.reclaim_idle / 2)
        {
            self.claim_all(self.spec.reclaim_idle).await?;
            round.last_claim = Some(Instant::now());
        }
        Ok(true)
    }

    /// What the loop does after a step: go on, wait, or recreate a lost group.
    async fn after(
        &self,
        step: Result<bool, StepError>,
        round: &mut Round,
        shutdown: &CancellationToken,
    ) {
        match step {
            Ok(true) => {}
            Ok(false) => {
                pause(
                    shutdown,
                    (self.spec.reclaim_idle / 3).min(Duration::from_secs(1)),
                )
                .await
            }
            Err(StepError::NoGroup) => {
                tracing::warn!(stream = %self.spec.stream, "consumer group lost; creating it again at 0");
                if self.create_group("0").await.is_ok() {
                    round.group_ready = true;
                }
            }
            Err(e) => {
                tracing::warn!(stream = %self.spec.stream, error = %e, "ingest step failed; retrying");
                pause(shutdown, RETRY_PAUSE).await;
            }
        }
    }

    /// Graceful stop: give the lease up, and delete this consumer when nothing is
    /// pending for it.
    async fn stop(&self, holding: bool) {
        if holding {
            self.lease.release(&self.client).await;
        }
        let mine = PendingRange {
            stream: &self.spec.stream,
            group: &self.spec.group,
            start: "-",
            end: "+",
            count: 1,
            consumer: Some(&self.me),
        };
        let pending: Result<Value, _> = commands::send(&self.client, mine).await;
        if matches!(pending, Ok(Value::Array(ref a)) if a.is_empty()) {
            let delete = DeleteConsumer {
                stream: &self.spec.stream,
                group: &self.spec.group,
                consumer: &self.me,
            };
            let _: Result<Value, _> = commands::send(&self.client, delete).await;
        }
    }

    async fn create_group(&self, at: &str) -> Result<(), StepError> {
        let create = CreateGroup {
            stream: &self.spec.stream,
            group: &self.spec.group,
            at,
        };
        let r: Result<Value, _> = commands::send(&self.client, create).await;
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
            let claim = AutoClaim {
                stream: &self.spec.stream,
                group: &self.spec.group,
                consumer: &self.me,
                min_idle,
                cursor: &cursor,
                count: self.spec.batch,
            };
            let reply: Value = commands::send(&self.client, claim).await?;
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
            let read = ReadGroup {
                group: &self.spec.group,
                consumer: &self.me,
                count: self.spec.batch,
                block: None,
                stream: &self.spec.stream,
                from: &cursor,
            };
            let reply: Value = commands::send(&self.client, read).await?;
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
        let read = ReadGroup {
            group: &self.spec.group,
            consumer: &self.me,
            count: self.spec.batch,
            block: Some(block),
            stream: &self.spec.stream,
            from: ">",
        };
        let reply: Value = commands::send(&blocking.with_options(&options), read).await?;
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
            self.acks.ack(&entry.id).await?;
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
        match self.route(&fields) {
            Ok((mapped, durable)) => self.publish(&entry.id, &mapped, durable).await,
            Err(reason) => {
                self.dead_letter(&entry.id, &fields, &reason).await?;
                Ok(true)
            }
        }
    }

    /// The publication an entry maps to and its channel's durability, or the reason it
    /// cannot be published.
    fn route(&self, fields: &[(String, String)]) -> Result<(Mapped, Option<Durability>), String> {
        let mapped = map_entry(fields, &self.spec.rule, &self.spec.data)?;
        let Some(ns) = self.state.config.namespaces.for_channel(&mapped.channel) else {
            return Err(format!(
                "unknown namespace '{}'",
                protocol::namespace_of(&mapped.channel)
            ));
        };
        Ok((mapped, durability(ns)))
    }

    /// Publishes with the idempotency key `ingest:<stream>:<id>`, then acknowledges.
    async fn publish(
        &mut self,
        id: &str,
        mapped: &Mapped,
        durable: Option<Durability>,
    ) -> Result<bool, StepError> {
        let key = format!("ingest:{}:{}", self.spec.stream, id);
        let req = PublishRequest {
            channel: &mapped.channel,
            data: &mapped.data,
            durable,
            idempotency: Some(Idempotency {
                key: &key,
                ttl: self.state.config.idempotency_ttl,
            }),
            source: Some(FrameSource {
                stream: &self.spec.stream,
                id,
            }),
        };
        match self.state.backplane.publish(req).await {
            Ok(published) => {
                self.count(&published);
                self.acks.ack(id).await?;
                Ok(true)
            }
            Err(BackplaneError::Unavailable(e)) => {
                Err(StepError::Backplane(BackplaneError::Unavailable(e)))
            }
            Err(e) => {
                // Left pending: retried until max_deliveries, then dead-lettered.
                tracing::warn!(stream = %self.spec.stream, id = %id, error = %e, "ingest publish failed");
                Ok(false)
            }
        }
    }

    /// Counts an accepted publish; this is where the test fault point fires.
    fn count(&mut self, published: &Published) {
        if matches!(published, Published::Duplicate(_)) {
            self.metrics.duplicates.increment(1);
        } else {
            self.metrics.published.increment(1);
            self.state.metrics.published.increment(1);
        }
        self.published += 1;
        if self.abort_after.is_some_and(|n| self.published >= n) {
            tracing::error!("test fault point: aborting between publish and acknowledgement");
            std::process::abort();
        }
    }

    /// How many times the entry was delivered (`XPENDING`); 1 when Redis does not say.
    async fn deliveries(&self, id: &str) -> Result<u64, StepError> {
        let one = PendingRange {
            stream: &self.spec.stream,
            group: &self.spec.group,
            start: id,
            end: id,
            count: 1,
            consumer: None,
        };
        let reply: Value = commands::send(&self.client, one).await?;
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

    /// Appends the entry to the dead-letter stream with a reason, then acknowledges it.
    async fn dead_letter(
        &self,
        id: &str,
        fields: &[(String, String)],
        reason: &str,
    ) -> Result<(), StepError> {
        self.dead_letters.append(id, fields, reason).await?;
        self.acks.ack(id).await?;
        Ok(())
    }
}

async fn pause(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}
