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
//!
//! Files: `spec` checks the `[[ingest]]` blocks; `reader` is the consumer-group loop
//! of one source; `commands` builds its Redis commands; `lease`, `acks`,
//! `dead_letter` and `hygiene` are the parts of the loop named after them. This file
//! starts one reader per source.

mod acks;
mod commands;
mod dead_letter;
mod hygiene;
mod lease;
mod reader;
mod spec;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::backplane::redis::RedisBackplane;
use crate::state::AppState;
use reader::Reader;

pub use spec::{SourceSpec, validate};

/// Starts one reader task per source.
/// Starts one reader per source; the returned tracker ends when every reader has
/// stopped after `shutdown` (releasing its lease and leaving its group), which the
/// node's stop waits for before it closes Redis.
pub fn start(
    state: Arc<AppState>,
    redis: Arc<RedisBackplane>,
    specs: Vec<SourceSpec>,
    shutdown: CancellationToken,
) -> tokio_util::task::TaskTracker {
    let readers = tokio_util::task::TaskTracker::new();
    // A test-only fault point: abort the process after this many publishes, before
    // their acknowledgement, to prove exactly-once across a crash there.
    let abort_after = std::env::var("HERALD_TEST_ABORT_AFTER_INGEST_PUBLISH")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    for spec in specs {
        let reader = Reader::new(
            state.clone(),
            redis.client().clone(),
            spec,
            abort_after,
            &shutdown,
        );
        readers.spawn(reader.run(shutdown.clone()));
    }
    readers.close();
    readers
}
