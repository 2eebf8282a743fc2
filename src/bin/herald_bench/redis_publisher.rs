//! The `--via redis` publisher: publishes straight into the nodes' Redis, `PUBLISH` of
//! a ready message frame for a plain channel and Herald's publish script for a durable
//! one, several at once in a pipeline (`--redis-pipeline`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::plan::Plan;
use crate::publishers::{JobQueue, mark_published, stamp};
use crate::resp::{DurableArgs, RespConn};
use crate::shared::Shared;

/// One `--via redis` publisher: takes the publishes that are due (up to
/// `--redis-pipeline` of them), writes them in one pipeline and reads their replies
/// in order, the way a client library's automatic pipelining does.
pub async fn redis_publisher(plan: Arc<Plan>, sh: Arc<Shared>, jobs: JobQueue) {
    let Some(addr) = plan.redis else {
        return;
    };
    let fresh_epoch = fresh_epoch();
    let mut conn: Option<RespConn> = None;
    let mut frame = Vec::with_capacity(256);
    let mut batch = Vec::with_capacity(plan.redis_pipeline);
    loop {
        if !take_due_batch(&jobs, plan.redis_pipeline, &mut batch).await {
            return;
        }
        if conn.is_none() {
            match RespConn::connect(addr).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    fail_unsent(&sh, &batch, format!("redis connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        if plan.durable
            && let Err(e) = c.ensure_script().await
        {
            fail_unsent(&sh, &batch, format!("redis: {e}"));
            conn = None;
            continue;
        }
        queue_batch(c, &plan, &sh, &batch, &mut frame, &fresh_epoch);
        sh.redis_writes.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = c.send().await {
            for &seq in &batch {
                mark_published(&sh, seq, false, Some(format!("redis: {e}")));
            }
            conn = None;
            continue;
        }
        if read_batch_replies(c, &plan, &sh, &batch).await.is_err() {
            conn = None;
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
            c.push_publish(&format!("{}:{{{channel}}}:ch", plan.redis_prefix), frame);
        }
    }
}

/// Reads the replies to `batch`, in order, and records each outcome; on a read error
/// the rest of the batch fails and Err says the connection is to be dropped.
async fn read_batch_replies(
    c: &mut RespConn,
    plan: &Plan,
    sh: &Shared,
    batch: &[u64],
) -> Result<(), ()> {
    for (i, &seq) in batch.iter().enumerate() {
        let reply = match c.read_reply().await {
            Ok(reply) => reply,
            Err(e) => {
                for &rest in &batch[i..] {
                    mark_published(sh, rest, false, Some(format!("redis: {e}")));
                }
                return Err(());
            }
        };
        let result = if plan.durable {
            c.durable_result(reply).map(drop)
        } else {
            RespConn::publish_result(reply).map(drop)
        };
        match result {
            Ok(()) => mark_published(sh, seq, true, None),
            Err(e) => mark_published(sh, seq, false, Some(format!("redis: {e}"))),
        }
    }
    Ok(())
}
