//! Redis Cluster (issue 20): sharded pub/sub, re-subscription and topology changes, each
//! on a local 3-primary + 3-replica cluster started by the test
//! (`tests/support/cluster.rs`).
//!
//! Cases:
//! - with `redis.pubsub` left at `auto`, three nodes subscribe each channel on the shard
//!   that owns its slot (`PUBSUB SHARDCHANNELS` on every primary, nothing classic),
//!   deliver across nodes, and deliver what a backend `SPUBLISH`es straight into Redis;
//! - with `classic` they use classic pub/sub and deliver too;
//! - in both, a publish made right after the subscribe reply is never lost (the
//!   subscribe barrier holds on a cluster);
//! - a node with local interest in 10,000 channels subscribes all of them again within
//!   2 s after a primary fails over (the time is printed);
//! - a SIGKILLed primary while three nodes publish to durable channels on every shard:
//!   every subscriber gets every offset once, in order (directly or by `recover`);
//! - a busy durable channel's slot and a plain channel's slot migrate to another
//!   primary while a node publishes to both: the durable one loses nothing, the plain
//!   one resumes within the check period.
//!
//! Presence, ingest, idempotency and the other features on a cluster are in
//! `tests/redis_cluster_features.rs`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald::config::RedisPubSub;
use serde_json::{Value, json};
use support::cluster::{RedisCluster, cli_on};
use support::*;

/// How long a failover may take until the nodes are ready again: the cluster's node
/// timeout (1 s), its election, and the nodes' reconnect backoff.
const FAILOVER: Duration = Duration::from_secs(30);

const DURABLE: &str = "[limits]\nmessages_per_sec = 100000\nmax_subscriptions = 10000\n\n\
     [namespaces.news]\nhistory_size = 5000\nhistory_ttl = \"1h\"\npublish = \"anyone\"\n";

fn node_config(cluster: &RedisCluster, id: &str, pubsub: RedisPubSub) -> herald::config::Config {
    let mut c = config_from_toml(None, id, DURABLE);
    c.redis_url = Some(cluster.url());
    c.redis_pubsub = pubsub;
    c
}

/// Every line of `PUBSUB SHARDCHANNELS` (or `CHANNELS`) on each primary.
fn pubsub_on_primaries(cluster: &RedisCluster, what: &str) -> Vec<(u16, Vec<String>)> {
    cluster
        .primaries()
        .into_iter()
        .map(|p| {
            let out = cli_on(p.port, &["PUBSUB", what, "herald:*"]).unwrap_or_default();
            let names = out
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            (p.port, names)
        })
        .collect()
}

/// A subscribe on `to` followed at once by a publish on `from` is delivered, twenty
/// times on fresh channels spread over the shards (PROTOCOL §2.2, the subscribe
/// barrier).
async fn barrier_holds(from: SocketAddr, to: SocketAddr) {
    let mut c = Client::connect(to).await;
    for i in 0..20 {
        let channel = format!("barrier{i}");
        c.subscribe(&channel).await;
        let (st, body) = publish_http(from, json!({"channel": channel, "data": i})).await;
        assert_eq!(st, 200, "{body}");
        let m = c
            .next_message(WAIT)
            .await
            .unwrap_or_else(|| panic!("the publish right after subscribing to {channel}"));
        assert_eq!(m["data"], i);
    }
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pub_sub_puts_each_channel_on_its_own_shard() {
    let cluster = RedisCluster::start();
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(start(node_config(&cluster, id, RedisPubSub::Auto)).await);
    }
    for n in &nodes {
        assert_eq!(
            metric_of(n.addr, "herald_backplane_sharded_pubsub").await,
            1.0
        );
    }
    // Two channels on every shard.
    let mut channels = Vec::new();
    for p in cluster.primaries() {
        channels.extend(cluster.channels_on(p.port, "room", 2));
    }
    let mut clients = Vec::new();
    for n in &nodes {
        let mut c = Client::connect(n.addr).await;
        for ch in &channels {
            c.subscribe(ch).await;
        }
        clients.push(c);
    }
    // Each shard holds exactly its own channels, and nothing is subscribed classic.
    for (port, names) in pubsub_on_primaries(&cluster, "SHARDCHANNELS") {
        let mut want: Vec<String> = channels
            .iter()
            .filter(|c| cluster.owner_of(cluster.keyslot(&format!("herald:{{{c}}}:ch"))) == port)
            .map(|c| format!("herald:{{{c}}}:ch"))
            .collect();
        let mut got: Vec<String> = names.into_iter().filter(|n| n.ends_with(":ch")).collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "shard channels on {port}");
        assert_eq!(got.len(), 2);
    }
    for (port, names) in pubsub_on_primaries(&cluster, "CHANNELS") {
        assert!(names.is_empty(), "classic channels on {port}: {names:?}");
    }
    // Every node probes every shard through a probe channel of its own there.
    assert!(
        eventually(WAIT, || async {
            pubsub_on_primaries(&cluster, "SHARDCHANNELS")
                .iter()
                .all(|(_, n)| n.iter().filter(|n| n.starts_with("herald:probe:{")).count() == 3)
        })
        .await,
        "not one probe channel per node on every primary: {:?}",
        pubsub_on_primaries(&cluster, "SHARDCHANNELS")
    );
    // Published on each node in turn: every client gets every message once.
    for (i, ch) in channels.iter().enumerate() {
        let from = nodes[i % nodes.len()].addr;
        let (st, body) = publish_http(from, json!({"channel": ch, "data": i})).await;
        assert_eq!(st, 200, "{body}");
    }
    for c in &mut clients {
        let got = c.messages(channels.len(), WAIT).await;
        let mut data: Vec<i64> = got.iter().map(|m| m["data"].as_i64().unwrap()).collect();
        data.sort();
        assert_eq!(data, (0..channels.len() as i64).collect::<Vec<_>>());
    }
    // A backend's own SPUBLISH (PROTOCOL §4) reaches every node.
    let ch = &channels[0];
    let frame = format!(r#"{{"type":"message","channel":"{ch}","data":"direct"}}"#);
    let owner = cluster.owner_of(cluster.keyslot(&format!("herald:{{{ch}}}:ch")));
    let receivers = cli_on(owner, &["SPUBLISH", &format!("herald:{{{ch}}}:ch"), &frame]).unwrap();
    assert_eq!(receivers.trim(), "3", "one subscription per node");
    for c in &mut clients {
        let m = c.next_message(WAIT).await.expect("the SPUBLISHed frame");
        assert_eq!(m["data"], "direct");
    }
    barrier_holds(nodes[0].addr, nodes[1].addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_pub_sub_when_configured() {
    let cluster = RedisCluster::start();
    let a = start(node_config(&cluster, "a", RedisPubSub::Classic)).await;
    let b = start(node_config(&cluster, "b", RedisPubSub::Classic)).await;
    assert_eq!(
        metric_of(a.addr, "herald_backplane_sharded_pubsub").await,
        0.0
    );
    let mut c = Client::connect(b.addr).await;
    c.subscribe("plain").await;
    let classic: usize = pubsub_on_primaries(&cluster, "CHANNELS")
        .iter()
        .map(|(_, n)| {
            n.iter()
                .filter(|n| n.as_str() == "herald:{plain}:ch")
                .count()
        })
        .sum();
    assert_eq!(classic, 1, "one classic subscription (node b's)");
    for (port, names) in pubsub_on_primaries(&cluster, "SHARDCHANNELS") {
        assert!(names.is_empty(), "shard channels on {port}: {names:?}");
    }
    let (st, _) = publish_http(a.addr, json!({"channel": "plain", "data": 1})).await;
    assert_eq!(st, 200);
    assert_eq!(c.next_message(WAIT).await.expect("delivered")["data"], 1);
    barrier_holds(a.addr, b.addr).await;
}

/// Subscribes `channels` on `addr` over ten connections at once; returns the clients.
async fn subscribe_all(addr: SocketAddr, channels: &[String]) -> Vec<Client> {
    let mut tasks = Vec::new();
    for part in channels.chunks(channels.len().div_ceil(10)) {
        let part = part.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            for ch in &part {
                c.subscribe(ch).await;
            }
            c
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("a subscribing client"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_channels_are_subscribed_again_within_two_seconds() {
    let mut cluster = RedisCluster::start();
    let node = start(node_config(&cluster, "a", RedisPubSub::Auto)).await;
    let channels: Vec<String> = (0..10_000).map(|i| format!("c{i}")).collect();
    let _clients = subscribe_all(node.addr, &channels).await;
    let total = |cluster: &RedisCluster| -> usize {
        pubsub_on_primaries(cluster, "SHARDCHANNELS")
            .iter()
            .map(|(_, n)| n.iter().filter(|n| n.ends_with(":ch")).count())
            .sum()
    };
    assert_eq!(total(&cluster), 10_000);

    let victim = cluster.owner_of(cluster.keyslot("herald:{c0}:ch"));
    let killed = Instant::now();
    cluster.kill(victim);
    let back = ready_again(node.addr, killed, FAILOVER).await;
    cluster.wait_settled();
    let took = metric_of(node.addr, "herald_backplane_resubscribe_seconds").await;
    let events = metric_of(node.addr, "herald_backplane_reconnects_total").await
        + metric_of(node.addr, "herald_backplane_resyncs_total").await;
    assert!(events >= 1.0, "the failover was not noticed");
    assert!(
        took < 2.0,
        "re-subscribing 10,000 channels took {took:.3} s (limit 2 s)"
    );
    assert_eq!(
        total(&cluster),
        10_000,
        "every channel subscribed on the new primaries"
    );
    // A channel of the failed shard delivers again.
    let mut c = Client::connect(node.addr).await;
    c.subscribe("c0").await;
    let (st, body) = publish_http(node.addr, json!({"channel": "c0", "data": "after"})).await;
    assert_eq!(st, 200, "{body}");
    let _ = c
        .next_message(WAIT)
        .await
        .expect("c0 delivers after the failover");
    println!(
        "cluster failover: ready again {back:?} after the SIGKILL; re-subscribing 10,000 \
         channels took {:.0} ms",
        took * 1000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_naming_one_server_follows_its_failover() {
    let mut cluster = RedisCluster::start();
    let victim = cluster.owner_of(cluster.keyslot("herald:{one}:ch"));
    let mut config = node_config(&cluster, "a", RedisPubSub::Auto);
    config.redis_url = Some(format!("redis-cluster://127.0.0.1:{victim}"));
    let node = start(config).await;
    let mut c = Client::connect(node.addr).await;
    c.subscribe("one").await;
    let killed = Instant::now();
    cluster.kill(victim);
    let back = ready_again(node.addr, killed, FAILOVER).await;
    let (st, body) = publish_http(node.addr, json!({"channel": "one", "data": 1})).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(c.next_message(WAIT).await.expect("delivered")["data"], 1);
    println!("a node whose URL names only the killed primary was ready again after {back:?}");
}

/// What one subscriber saw of one channel: (epoch, offset, data).
type Seen = Vec<(String, u64, i64)>;

/// Reads `c` until it has seen offset `last` of `channel` or is closed; Some(code)
/// when closed. Frames of other channels go to their own entry of `seen`.
async fn read_until(
    c: &mut Client,
    channels: &[String],
    last: &[u64],
    seen: &mut [Seen],
) -> Option<Value> {
    loop {
        let done = (0..channels.len()).all(|k| seen[k].last().is_some_and(|m| m.1 >= last[k]));
        if done {
            return None;
        }
        let f = c.next_frame(WAIT).await?;
        match f["type"].as_str() {
            Some("message") => {
                let k = channels
                    .iter()
                    .position(|ch| f["channel"] == ch.as_str())
                    .expect("a channel of the test");
                seen[k].push((
                    f["epoch"].as_str().unwrap().into(),
                    f["offset"].as_u64().unwrap(),
                    f["data"].as_i64().unwrap(),
                ));
            }
            Some("closed") => return Some(f["code"].clone()),
            _ => {}
        }
    }
}

/// Checks that every subscriber saw every publish of every channel once and in order;
/// one closed with 4008 recovers the rest with `recover` first. Returns how many were
/// closed with 4008.
async fn check_every_offset(
    subs: &mut [(SocketAddr, Client)],
    channels: &[String],
    taken: &[Taken],
) -> usize {
    let last: Vec<u64> = taken.iter().map(|t| t.len() as u64).collect();
    let mut closed_4008 = 0;
    for (k, (addr, c)) in subs.iter_mut().enumerate() {
        let mut seen: Vec<Seen> = vec![Seen::new(); channels.len()];
        if let Some(code) = read_until(c, channels, &last, &mut seen).await {
            assert_eq!(code, json!(4008), "subscriber {k} closed with {code}");
            closed_4008 += 1;
            let mut again = Client::connect(*addr).await;
            for (j, ch) in channels.iter().enumerate() {
                let from = seen[j].last().map_or(0, |m| m.1);
                let epoch = &taken[j][0].1;
                let r = again
                    .request(json!({"op": "subscribe", "channel": ch, "recover": {"epoch": epoch, "offset": from}}))
                    .await;
                assert_eq!(r["result"]["recovered"], true, "subscriber {k}, {ch}: {r}");
            }
            let closed = read_until(&mut again, channels, &last, &mut seen).await;
            assert!(closed.is_none(), "subscriber {k} closed again: {closed:?}");
        }
        for (j, ch) in channels.iter().enumerate() {
            let want: Seen = taken[j]
                .iter()
                .map(|(i, e, off)| (e.clone(), *off, *i))
                .collect();
            assert_eq!(
                seen[j], want,
                "subscriber {k}, {ch}: lost, duplicated or reordered"
            );
        }
        assert!(
            c.next_message(Duration::from_millis(200)).await.is_none(),
            "subscriber {k}: a duplicate after the last offset"
        );
    }
    closed_4008
}

/// Every publish of each channel taken once, in order, in one epoch.
fn check_taken(channels: &[String], taken: &[Taken]) {
    for (ch, t) in channels.iter().zip(taken) {
        for (k, (i, e, off)) in t.iter().enumerate() {
            assert_eq!(*i, k as i64 + 1);
            assert_eq!(
                *e, t[0].1,
                "{ch}: publish {i} in another epoch: history lost"
            );
            assert_eq!(*off, k as u64 + 1, "{ch}: publish {i} at offset {off}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_loses_nothing_on_durable_channels() {
    let mut cluster = RedisCluster::start();
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(start(node_config(&cluster, id, RedisPubSub::Auto)).await);
    }
    // One durable channel on every shard.
    let channels: Vec<String> = cluster
        .primaries()
        .iter()
        .map(|p| cluster.channels_on(p.port, "news:f", 1).remove(0))
        .collect();
    let mut subs = Vec::new();
    for n in &nodes {
        for _ in 0..2 {
            let mut c = Client::connect(n.addr).await;
            for ch in &channels {
                c.subscribe(ch).await;
            }
            subs.push((n.addr, c));
        }
    }
    // Each node publishes to one channel.
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = nodes
        .iter()
        .zip(&channels)
        .map(|(n, ch)| {
            retrying_publisher(n.addr, ch.clone(), acked.clone(), stop.clone(), FAILOVER)
        })
        .collect();
    while acked.load(Ordering::Relaxed) < 60 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let victim = cluster.owner_of(cluster.keyslot(&format!("herald:{{{}}}:ch", channels[0])));
    let before = acked.load(Ordering::Relaxed);
    let killed = Instant::now();
    cluster.kill(victim);
    cluster.wait_settled();
    let settled = killed.elapsed();
    while acked.load(Ordering::Relaxed) < before + 90 {
        assert!(killed.elapsed() < FAILOVER, "publishing did not resume");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut taken = Vec::new();
    let mut refused = 0;
    for p in publishers {
        let (t, r) = p.await.expect("a publisher");
        taken.push(t);
        refused += r;
    }
    check_taken(&channels, &taken);
    let closed_4008 = check_every_offset(&mut subs, &channels, &taken).await;
    let n: usize = taken.iter().map(Vec::len).sum();
    println!(
        "cluster primary SIGKILL: cluster settled after {settled:?}; {n} publishes taken on 3 \
         shards, {refused} answers 503 retried; {} subscribers: 0 lost, 0 duplicated, \
         {closed_4008} closed with 4008 and recovered",
        subs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrating_slot_loses_nothing_durable_and_plain_resumes() {
    let cluster = RedisCluster::start();
    let a = start(node_config(&cluster, "a", RedisPubSub::Auto)).await;
    let b = start(node_config(&cluster, "b", RedisPubSub::Auto)).await;
    let primaries = cluster.primaries();
    let durable = cluster.channels_on(primaries[0].port, "news:m", 1);
    let plain = cluster.channels_on(primaries[0].port, "plain", 1).remove(0);
    let mut subs = Vec::new();
    for n in [&a, &b] {
        let mut c = Client::connect(n.addr).await;
        c.subscribe(&durable[0]).await;
        subs.push((n.addr, c));
    }
    let mut plain_sub = Client::connect(b.addr).await;
    plain_sub.subscribe(&plain).await;

    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let p = retrying_publisher(
        a.addr,
        durable[0].clone(),
        acked.clone(),
        stop.clone(),
        FAILOVER,
    );
    while acked.load(Ordering::Relaxed) < 30 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let to = primaries[1].port;
    let moved = Instant::now();
    cluster.migrate_slot(
        cluster.keyslot(&format!("herald:{{{}}}:ch", durable[0])),
        to,
    );
    cluster.migrate_slot(cluster.keyslot(&format!("herald:{{{plain}}}:ch")), to);
    let before = acked.load(Ordering::Relaxed);
    while acked.load(Ordering::Relaxed) < before + 60 {
        assert!(moved.elapsed() < FAILOVER, "publishing did not go on");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The plain channel delivers again within the check period (2 s) and a margin.
    let mut resumed = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while resumed.is_none() && Instant::now() < deadline {
        let (st, _) = publish_http(a.addr, json!({"channel": plain, "data": "p"})).await;
        if st == 200
            && plain_sub
                .next_message(Duration::from_millis(200))
                .await
                .is_some()
        {
            resumed = Some(moved.elapsed());
        }
    }
    let resumed = resumed.expect("the plain channel delivers again after the migration");
    stop.store(true, Ordering::Relaxed);
    let (taken, refused) = p.await.expect("the publisher");
    let taken = vec![taken];
    check_taken(&durable, &taken);
    let closed_4008 = check_every_offset(&mut subs, &durable, &taken).await;
    for n in [&a, &b] {
        assert!(
            metric_of(n.addr, "herald_backplane_resyncs_total").await >= 1.0,
            "node {} did not resync after the migration",
            n.addr
        );
    }
    println!(
        "slot migration: {} durable publishes, {refused} answers 503 retried, 2 subscribers: 0 \
         lost, 0 duplicated, {closed_4008} closed with 4008 and recovered; the plain channel \
         delivered again {resumed:?} after the migration began",
        taken[0].len()
    );
}
