//! The `--via redis` publisher: publishes straight into the nodes' Redis, `PUBLISH`
//! (or `SPUBLISH`) of a ready message frame for a plain channel and Herald's publish
//! script for a durable one, several at once in a pipeline (`--redis-pipeline`); on
//! Redis Cluster one pipeline per primary, each publish to the primary owning its
//! channel's slot.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::plan::Plan;
use crate::publishers::{JobQueue, mark_published, stamp};
use crate::resp::cluster::{RedisTarget, Shards};
use crate::resp::{DurableArgs, RespConn};
use crate::shared::Shared;

/// One `--via redis` publisher: takes the publishes that are due (up to
/// `--redis-pipeline` of them), writes them in one pipeline per Redis server they go
/// to and reads their replies in order, the way a client library's automatic
/// pipelining does.
pub async fn redis_publisher(plan: Arc<Plan>, sh: Arc<Shared>, jobs: JobQueue) {
    let Some(target) = plan.redis.clone() else {
        return;
    };
    let fresh_epoch = fresh_epoch();
    let mut links = Links::new(target);
    let mut frame = Vec::with_capacity(256);
    let mut batch = Vec::with_capacity(plan.redis_pipeline);
    let mut groups: Vec<Vec<u64>> = Vec::new();
    loop {
        if !take_due_batch(&jobs, plan.redis_pipeline, &mut batch).await {
            return;
        }
        if let Err(e) = links.map().await {
            fail_unsent(&sh, &batch, format!("redis cluster map: {e}"));
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        links.group(&plan, &batch, &mut groups);
        // A server that failed, or a redirection: on a cluster the map is read again.
        let mut stale = false;
        // A server that could not be reached: wait a moment before the next batch.
        let mut unreachable = false;
        // Every server's pipeline is written before any reply is read.
        let mut sent = vec![false; groups.len()];
        for (i, group) in groups.iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let c = match links.conn(i, plan.durable).await {
                Ok(c) => c,
                Err(e) => {
                    fail_unsent(&sh, group, format!("redis: {e}"));
                    links.conns[i] = None;
                    stale = true;
                    unreachable = true;
                    continue;
                }
            };
            queue_batch(c, &plan, &sh, group, &mut frame, &fresh_epoch);
            sh.redis_writes.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = c.send().await {
                for &seq in group {
                    mark_published(&sh, seq, false, Some(format!("redis: {e}")));
                }
                links.conns[i] = None;
                stale = true;
                continue;
            }
            sent[i] = true;
        }
        for (i, group) in groups.iter().enumerate() {
            let Some(c) = links.conns.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            if !sent[i] {
                continue;
            }
            match read_batch_replies(c, &plan, &sh, group).await {
                Replies::Read => {}
                Replies::Redirected => stale = true,
                Replies::Broken => {
                    links.conns[i] = None;
                    stale = true;
                }
            }
        }
        if stale {
            links.forget_map();
        }
        if unreachable {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A publisher's connections: one to the single Redis, or one per primary of the
/// cluster's current slot map.
struct Links {
    target: RedisTarget,
    /// The cluster's slot map; None before it is read and after a redirection.
    shards: Option<Shards>,
    /// Opened on first use, by server (index into the primaries on a cluster).
    conns: Vec<Option<RespConn>>,
}

impl Links {
    fn new(target: RedisTarget) -> Links {
        let conns = match target {
            RedisTarget::One(_) => vec![None],
            RedisTarget::Cluster(_) => Vec::new(),
        };
        Links {
            target,
            shards: None,
            conns,
        }
    }

    /// Reads the cluster's slot map unless it is known (nothing to do on one Redis).
    async fn map(&mut self) -> std::io::Result<()> {
        if let (RedisTarget::Cluster(seeds), None) = (&self.target, &self.shards) {
            let shards = Shards::discover(seeds).await?;
            self.conns = shards.primaries.iter().map(|_| None).collect();
            self.shards = Some(shards);
        }
        Ok(())
    }

    /// Splits `batch` into one group per server, in the batch's order.
    fn group(&self, plan: &Plan, batch: &[u64], groups: &mut Vec<Vec<u64>>) {
        groups.resize_with(self.conns.len(), Vec::new);
        for g in groups.iter_mut() {
            g.clear();
        }
        for &seq in batch {
            let i = match &self.shards {
                Some(shards) => shards.owner_of(&plan.pubsub_channel(&plan.channel(seq))),
                None => 0,
            };
            groups[i].push(seq);
        }
    }

    /// The connection to server `i`, opened (and given the durable script) if needed.
    async fn conn(&mut self, i: usize, durable: bool) -> std::io::Result<&mut RespConn> {
        let addr = match (&self.target, &self.shards) {
            (RedisTarget::One(addr), _) => *addr,
            (RedisTarget::Cluster(_), Some(shards)) => shards.primaries[i],
            (RedisTarget::Cluster(_), None) => {
                return Err(std::io::Error::other("no slot map"));
            }
        };
        let slot = &mut self.conns[i];
        let c = match slot {
            Some(c) => c,
            None => slot.insert(RespConn::connect(addr).await?),
        };
        if durable {
            c.ensure_script().await?;
        }
        Ok(c)
    }

    /// On a cluster, the next batch reads the slot map again and opens new
    /// connections (a server that failed may have failed over).
    fn forget_map(&mut self) {
        if matches!(self.target, RedisTarget::Cluster(_)) {
            self.shards = None;
            self.conns.clear();
        }
    }
}

/// The epoch the durable script gives a channel that has none yet. Only a channel
/// without an epoch takes this one (a fresh run on a fresh Redis).
fn fresh_epoch() -> String {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("bench{unix_ms}")
}

/// Waits for the next due publish, then takes whatever else is due at once, up to
/// `max` in all, into `batch`; false when the queue is closed (publishing is over).
async fn take_due_batch(jobs: &JobQueue, max: usize, batch: &mut Vec<u64>) -> bool {
    batch.clear();
    let mut rx = jobs.lock().await;
    let Some(first) = rx.recv().await else {
        return false;
    };
    batch.push(first);
    while batch.len() < max {
        match rx.try_recv() {
            Ok(seq) => batch.push(seq),
            Err(_) => break,
        }
    }
    true
}

/// Fails publishes that were never written (each still counts as sent).
fn fail_unsent(sh: &Shared, batch: &[u64], why: String) {
    for &seq in batch {
        stamp(sh, seq);
        mark_published(sh, seq, false, Some(why.clone()));
    }
}

/// Stamps each publish of `batch` and queues its command on `c` (not sent yet).
fn queue_batch(
    c: &mut RespConn,
    plan: &Plan,
    sh: &Shared,
    batch: &[u64],
    frame: &mut Vec<u8>,
    fresh_epoch: &str,
) {
    for &seq in batch {
        let channel = plan.channel(seq);
        let t = stamp(sh, seq);
        frame.clear();
        frame.extend_from_slice(b"{\"type\":\"message\",\"channel\":\"");
        frame.extend_from_slice(channel.as_bytes());
        frame.extend_from_slice(b"\",\"data\":");
        frame.extend_from_slice(plan.data(&channel, seq, t).as_bytes());
        if plan.durable {
            // The script closes the frame itself, after the offset it assigns.
            let args = DurableArgs {
                frame_open: frame,
                history_size: plan.history_size,
                history_ttl_secs: plan.history_ttl_secs,
                fresh_epoch,
            };
            c.push_durable(&plan.redis_prefix, &channel, &args);
        } else {
            frame.push(b'}');
            c.push_publish(&plan.pubsub_channel(&channel), frame, plan.redis_sharded);
        }
    }
}

/// How reading a pipeline's replies ended.
enum Replies {
    Read,
    /// A server answered `MOVED` or `ASK`: the slot map is out of date.
    Redirected,
    /// The connection failed; the rest of the batch failed with it.
    Broken,
}

/// Reads the replies to `batch`, in order, and records each outcome.
async fn read_batch_replies(c: &mut RespConn, plan: &Plan, sh: &Shared, batch: &[u64]) -> Replies {
    let mut outcome = Replies::Read;
    for (i, &seq) in batch.iter().enumerate() {
        let reply = match c.read_reply().await {
            Ok(reply) => reply,
            Err(e) => {
                for &rest in &batch[i..] {
                    mark_published(sh, rest, false, Some(format!("redis: {e}")));
                }
                return Replies::Broken;
            }
        };
        let result = if plan.durable {
            c.durable_result(reply).map(drop)
        } else {
            RespConn::publish_result(reply).map(drop)
        };
        match result {
            Ok(()) => mark_published(sh, seq, true, None),
            Err(e) => {
                if e.starts_with("MOVED ") || e.starts_with("ASK ") {
                    outcome = Replies::Redirected;
                }
                mark_published(sh, seq, false, Some(format!("redis: {e}")));
            }
        }
    }
    outcome
}
