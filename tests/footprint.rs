//! A node's fixed memory: what connecting to Redis costs before any client arrives.
//! fred preallocates every slot of its event channels, so a careless capacity costs a
//! node tens of megabytes (src/backplane/redis/clients.rs, `PUBSUB_CAPACITY`).

mod support;

use std::time::Duration;

use support::{NodeProcess, Redis};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// The Redis backplane adds at most 32 MB to an idle node (measured: ~15 MB; with one
/// 65,536-slot capacity for both of fred's clients it was ~96 MB).
#[tokio::test]
async fn the_redis_backplane_adds_little_fixed_memory() {
    let redis = Redis::start();
    let url = redis.url();
    let on_memory = NodeProcess::spawn(&[]).await;
    let on_redis = NodeProcess::spawn(&["--redis", &url]).await;
    // Both are ready; let lazily touched pages (runtime, first connection) settle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let memory_kib = rss_kib(on_memory.child.id());
    let redis_kib = rss_kib(on_redis.child.id());
    let extra_kib = redis_kib.saturating_sub(memory_kib);
    assert!(
        extra_kib < 32 * 1024,
        "a node on Redis holds {redis_kib} KiB, on memory {memory_kib} KiB: {extra_kib} KiB more"
    );
}
