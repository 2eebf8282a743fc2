//! Every feature besides pub/sub itself on a Redis Cluster with sharded pub/sub: two
//! in-process nodes (`redis.pubsub` left at `auto`, so sharded) on a local 3-primary +
//! 3-replica cluster started by each test (`tests/support/cluster.rs`). Channels, streams
//! and keys are picked so that every shard takes part, and where a feature keeps state
//! in Redis the test reads it back on the primary that owns its slot.
//!
//! Cases:
//! - presence: join and leave events of sessions on both nodes reach the subscribers of
//!   both, in order, once each (unsubscribe and disconnect); the `presence` op and
//!   endpoint list the sessions of both nodes and `presence_stats` counts them, on a
//!   channel of every shard; an expired session (a vanished node's) is swept and its
//!   leave sent once; the presence keys live in the channel's slot; sessions kept past
//!   `presence_ttl` stay present (the nodes' refreshes);
//! - durable channels on all three shards: one epoch on both nodes, consecutive offsets,
//!   the history kept on the channel's shard, `recover` after a reconnect to the other
//!   node (and `recovered: false` for a wrong epoch), the `history` op and
//!   `GET /api/channels/{c}/history`;
//! - idempotent publish on a plain and on a durable channel (HTTP body and header, the
//!   WebSocket op, both nodes): the same key and data publish once and answer the first
//!   result again, other data answers 422 / `conflict`, twenty concurrent retries
//!   publish once, and the record lives in the channel's slot (`CLUSTER KEYSLOT`);
//! - the HTTP `channels` form over plain and durable channels of every shard reaches
//!   every channel's subscribers on both nodes once, also when retried with a key;
//! - upstream: client publishes on both nodes are `XADD`ed to `herald:upstream:<ns>` of
//!   two namespaces on different shards, readable with `XRANGE` and a consumer group on
//!   the owning primary, and are not fanned out;
//! - ingest: an ordered and an unordered source, on streams of two shards feeding
//!   channels of a third, reach subscribers on both nodes once each (the ordered one in
//!   stream order); no ingest command fails (they were routed by a word of the
//!   command, not the stream, before `streams/ingest/commands.rs` gave fred the slot);
//!   the lease key is held by one node, expires unless renewed, and is taken over by
//!   the other once the holder stops; the idempotency records are in the channel's
//!   slot; malformed entries are dead-lettered to the dead-letter stream (another slot).
//!
//! Pub/sub itself on a cluster (sharded and classic subscriptions, failover, slot
//! migration) is in `tests/redis_cluster.rs`.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use herald::server::Node;
use serde_json::{Value, json};
use support::cluster::{RedisCluster, cli_on};
use support::*;

const SECRET: &str = "cluster-features-secret-0123456789!";

/// What every test's nodes share; each test appends what it needs.
fn base_toml() -> String {
    format!(
        r#"
[server]
idempotency_ttl = "1m"

[auth]
jwt_hs256_secret = "{SECRET}"
require_token = false

[limits]
messages_per_sec = 100000
new_connections_per_sec = 100000

[default_namespace]
publish = "anyone"

[namespaces.room]
publish = "anyone"
presence = true
join_leave = true
presence_ttl = "3s"

[namespaces.news]
history_size = 1000
history_ttl = "1h"
publish = "anyone"
"#
    )
}

/// Two nodes on `cluster` with `toml`; both must have chosen sharded pub/sub.
async fn two_nodes(cluster: &RedisCluster, toml: &str) -> (Node, Node) {
    let mut nodes = Vec::new();
    for id in ["a", "b"] {
        let mut c = config_from_toml(None, id, toml);
        c.redis_url = Some(cluster.url());
        let node = start(c).await;
        assert_eq!(
            metric_of(node.addr, "herald_backplane_sharded_pubsub").await,
            1.0,
            "node {id} is not on sharded pub/sub"
        );
        nodes.push(node);
    }
    let b = nodes.pop().expect("node b");
    let a = nodes.pop().expect("node a");
    (a, b)
}

/// The pub/sub channel of a Herald channel (PROTOCOL §4).
fn pubsub_of(channel: &str) -> String {
    format!("herald:{{{channel}}}:ch")
}

/// The port of the primary that owns `key`'s slot.
fn owner_of_key(cluster: &RedisCluster, key: &str) -> u16 {
    cluster.owner_of(cluster.keyslot(key))
}

/// `redis-cli` on the primary that owns `key` (the command must be about that key).
fn on_owner(cluster: &RedisCluster, key: &str, args: &[&str]) -> String {
    let port = owner_of_key(cluster, key);
    cli_on(port, args).unwrap_or_else(|e| panic!("{e}"))
}

/// One channel `<stem><i>` on each of the three primaries.
fn channel_per_shard(cluster: &RedisCluster, stem: &str) -> Vec<String> {
    let ports: Vec<u16> = cluster.primaries().iter().map(|p| p.port).collect();
    assert_eq!(ports.len(), 3, "three primaries");
    ports
        .iter()
        .map(|port| {
            cluster
                .names_on(*port, 1, |i| format!("{stem}{i}"), pubsub_of)
                .pop()
                .expect("a channel on the shard")
        })
        .collect()
}

/// `PUBSUB SHARDNUMSUB` of a channel on the primary that owns it: how many
/// connections (nodes) subscribe to it there.
fn shard_subscribers(cluster: &RedisCluster, channel: &str) -> u64 {
    let name = pubsub_of(channel);
    let out = on_owner(cluster, &name, &["PUBSUB", "SHARDNUMSUB", &name]);
    out.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("PUBSUB SHARDNUMSUB {name}: {out}"))
}

/// Reads frames until nothing arrives for `quiet`; returns the `message` frames.
async fn drain_messages(c: &mut Client, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(f) = c.next_message(quiet).await {
        out.push(f);
    }
    out
}

// ---------------------------------------------------------------------------------
// 1. Presence

async fn connect_as(addr: SocketAddr, user: &str) -> Client {
    let token = sign_hs256(
        SECRET,
        &json!({"sub": user, "info": {"name": user}, "exp": unix_now() + 600}),
    );
    Client::connect_path(addr, &format!("/ws?token={token}"))
        .await
        .expect("a websocket with a token")
}

fn session_of(c: &Client) -> String {
    c.welcome["session"]
        .as_str()
        .expect("a session id")
        .to_string()
}

/// The next join or leave event (other frames are skipped), as "join <session>".
async fn next_event(c: &mut Client, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = c.next_frame(left).await?;
        if let Some(kind @ ("join" | "leave")) = f["type"].as_str() {
            assert!(f.get("offset").is_none(), "an event with an offset: {f}");
            let session = f["client"]["session"].as_str().expect("a session");
            return Some(format!("{kind} {session}"));
        }
    }
}

/// `n` events, or a failure naming what came.
async fn events(c: &mut Client, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        match next_event(c, WAIT).await {
            Some(e) => out.push(e),
            None => panic!("got {} of {n} events: {out:?}", out.len()),
        }
    }
    out
}

fn sorted_sessions(clients: &Value) -> Vec<String> {
    let mut s: Vec<String> = clients
        .as_array()
        .unwrap_or_else(|| panic!("a list of clients: {clients}"))
        .iter()
        .map(|c| c["session"].as_str().expect("a session").to_string())
        .collect();
    s.sort();
    s
}

async fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let r = http()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("an HTTP answer");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// What both nodes say of the channel's presence: the sessions listed by the op (on
/// `a`) and the endpoint (on `b`), which must agree, and the stats of both doors.
async fn presence_seen(
    a: SocketAddr,
    b: SocketAddr,
    asker: &mut Client,
    channel: &str,
) -> Vec<String> {
    let op = asker
        .request(json!({"op": "presence", "channel": channel}))
        .await;
    let listed = sorted_sessions(&op["result"]["clients"]);
    let (st, http_list) = get_json(b, &format!("/api/channels/{channel}/presence")).await;
    assert_eq!(st, 200, "{http_list}");
    assert_eq!(
        sorted_sessions(&http_list["clients"]),
        listed,
        "op and endpoint disagree"
    );
    let users: HashSet<&str> = op["result"]["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .filter_map(|c| c["user"].as_str())
        .collect();
    let want = json!({"clients": listed.len(), "users": users.len()});
    let stats_op = asker
        .request(json!({"op": "presence_stats", "channel": channel}))
        .await;
    assert_eq!(stats_op["result"], want, "presence_stats op on {channel}");
    let (st, stats_http) = get_json(a, &format!("/api/channels/{channel}/presence_stats")).await;
    assert_eq!(st, 200);
    assert_eq!(stats_http, want, "presence_stats endpoint on {channel}");
    listed
}

/// The whole presence story on one channel.
async fn presence_on(cluster: &RedisCluster, a: &Node, b: &Node, channel: &str) {
    // A watcher on each node; each sees its own join, the first also the second's.
    let mut wa = connect_as(a.addr, "wa").await;
    wa.subscribe(channel).await;
    let mut wb = connect_as(b.addr, "wb").await;
    wb.subscribe(channel).await;
    assert_eq!(
        shard_subscribers(cluster, channel),
        2,
        "both nodes subscribe on the shard"
    );
    let (sa, sb) = (session_of(&wa), session_of(&wb));
    assert_eq!(
        events(&mut wa, 2).await,
        [format!("join {sa}"), format!("join {sb}")]
    );
    assert_eq!(events(&mut wb, 1).await, [format!("join {sb}")]);

    // One session of the same user on each node.
    let mut x = connect_as(a.addr, "u1").await;
    x.subscribe(channel).await;
    let mut y = connect_as(b.addr, "u1").await;
    y.subscribe(channel).await;
    let (sx, sy) = (session_of(&x), session_of(&y));
    let joins = [format!("join {sx}"), format!("join {sy}")];
    assert_eq!(events(&mut wa, 2).await, joins, "{channel} on node a");
    assert_eq!(events(&mut wb, 2).await, joins, "{channel} on node b");

    let mut all = vec![sa.clone(), sb.clone(), sx.clone(), sy.clone()];
    all.sort();
    assert_eq!(presence_seen(a.addr, b.addr, &mut wa, channel).await, all);
    // Four sessions, three users (wa, wb, u1), in the channel's slot.
    let hash = format!("herald:{{{channel}}}:presence");
    let users = format!("herald:{{{channel}}}:presence:users");
    assert_eq!(cluster.keyslot(&hash), cluster.keyslot(&pubsub_of(channel)));
    assert_eq!(on_owner(cluster, &hash, &["HLEN", &hash]).trim(), "4");
    assert_eq!(
        on_owner(cluster, &users, &["HGET", &users, "u1"]).trim(),
        "2"
    );

    // x (node a) unsubscribes, y (node b) disconnects: both leaves reach both nodes.
    let r = x
        .request(json!({"op": "unsubscribe", "channel": channel}))
        .await;
    assert_eq!(r["result"], json!({}), "{r}");
    y.close().await;
    let leaves = [format!("leave {sx}"), format!("leave {sy}")];
    assert_eq!(events(&mut wa, 2).await, leaves, "{channel} on node a");
    assert_eq!(events(&mut wb, 2).await, leaves, "{channel} on node b");
    let mut left = vec![sa.clone(), sb.clone()];
    left.sort();
    assert_eq!(presence_seen(a.addr, b.addr, &mut wb, channel).await, left);

    // A session whose node vanished (written as a node writes it, already expired) is
    // swept by one of the nodes, which sends its leave once.
    let exp = format!("herald:{{{channel}}}:presence:exp");
    on_owner(
        cluster,
        &hash,
        &[
            "HSET",
            &hash,
            "s-ghost",
            r#"{"session":"s-ghost","user":"ghost"}"#,
        ],
    );
    on_owner(cluster, &users, &["HINCRBY", &users, "ghost", "1"]);
    on_owner(cluster, &exp, &["ZADD", &exp, "1", "s-ghost"]);
    assert_eq!(
        events(&mut wa, 1).await,
        ["leave s-ghost"],
        "{channel} on node a"
    );
    assert_eq!(
        events(&mut wb, 1).await,
        ["leave s-ghost"],
        "{channel} on node b"
    );
    // Both nodes sweep every second: a second leave would come within that.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for w in [&mut wa, &mut wb] {
        let more = next_event(w, Duration::from_millis(50)).await;
        assert!(more.is_none(), "an event too many on {channel}: {more:?}");
    }
    assert_eq!(presence_seen(a.addr, b.addr, &mut wa, channel).await, left);
    wa.close().await;
    wb.close().await;
    x.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_join_leave_span_both_nodes_on_every_shard() {
    let cluster = RedisCluster::start();
    let (a, b) = two_nodes(&cluster, &base_toml()).await;
    // Two sessions that stay the whole test, longer than presence_ttl (3 s): their
    // nodes' refreshes must keep them present.
    let mut keepers = [
        connect_as(a.addr, "k1").await,
        connect_as(b.addr, "k2").await,
    ];
    for k in &mut keepers {
        k.subscribe("room:keep").await;
    }
    let kept = Instant::now();
    let mut kept_sessions: Vec<String> = keepers.iter().map(session_of).collect();
    kept_sessions.sort();
    for channel in channel_per_shard(&cluster, "room:p") {
        presence_on(&cluster, &a, &b, &channel).await;
    }
    let sweeps = metric_of(a.addr, "herald_presence_sweep_leaves_total").await
        + metric_of(b.addr, "herald_presence_sweep_leaves_total").await;
    assert_eq!(sweeps, 3.0, "one swept leave per channel, by one node");

    let presence_ttl = Duration::from_secs(3);
    let more = presence_ttl + Duration::from_secs(1);
    tokio::time::sleep(more.saturating_sub(kept.elapsed())).await;
    let (st, listed) = get_json(a.addr, "/api/channels/room:keep/presence").await;
    assert_eq!(st, 200, "{listed}");
    assert_eq!(
        sorted_sessions(&listed["clients"]),
        kept_sessions,
        "present after {:?}",
        kept.elapsed()
    );
    // The first saw both joins, the second its own; neither a leave.
    for (k, joins) in keepers.iter_mut().zip([2, 1]) {
        let seen = events(k, joins).await;
        assert!(seen.iter().all(|e| e.starts_with("join ")), "{seen:?}");
        let more = next_event(k, Duration::from_millis(50)).await;
        assert!(more.is_none(), "a keeper left: {more:?}");
    }
    for n in [&a, &b] {
        assert!(metric_of(n.addr, "herald_presence_refreshes_total").await >= 1.0);
    }
}

// ---------------------------------------------------------------------------------
// 2. Durable channels and history

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_channels_recover_and_read_history_on_every_shard() {
    let cluster = RedisCluster::start();
    let (a, b) = two_nodes(&cluster, &base_toml()).await;
    let channels = channel_per_shard(&cluster, "news:d");
    let mut sa = Client::connect(a.addr).await;
    let mut sb = Client::connect(b.addr).await;
    let mut leaving = Client::connect(b.addr).await;
    let mut epochs = HashMap::new();
    for ch in &channels {
        let ra = sa.subscribe(ch).await;
        let rb = sb.subscribe(ch).await;
        assert_eq!(ra["offset"], 0, "{ch}: {ra}");
        assert_eq!(ra, rb, "{ch}: both nodes answer the same epoch and offset");
        leaving.subscribe(ch).await;
        let epoch = ra["epoch"].as_str().expect("an epoch").to_string();
        epochs.insert(ch.clone(), epoch);
    }
    // 1, 2 on each channel: over HTTP on a, then the WebSocket op on b.
    let mut publisher = Client::connect(b.addr).await;
    for ch in &channels {
        let (st, r1) = publish_http(a.addr, json!({"channel": ch, "data": 1})).await;
        assert_eq!(st, 200, "{r1}");
        let r2 = publisher.publish(ch, json!(2)).await;
        assert_eq!(r1, json!({"epoch": epochs[ch], "offset": 1}), "{ch}");
        assert_eq!(
            r2["result"],
            json!({"epoch": epochs[ch], "offset": 2}),
            "{ch}"
        );
    }
    // `leaving` reads them, then goes away.
    let got = leaving.messages(2 * channels.len(), WAIT).await;
    for ch in &channels {
        let mine: Vec<&Value> = got.iter().filter(|m| m["channel"] == ch.as_str()).collect();
        assert_eq!(mine.len(), 2, "{ch}: {got:?}");
        assert_eq!(
            (mine[0]["offset"].clone(), mine[1]["offset"].clone()),
            (json!(1), json!(2))
        );
    }
    leaving.close().await;
    // 3, 4, 5 while it is away.
    for ch in &channels {
        for i in 3..=5 {
            let from = if i % 2 == 0 { a.addr } else { b.addr };
            let (st, r) = publish_http(from, json!({"channel": ch, "data": i})).await;
            assert_eq!(st, 200, "{r}");
            assert_eq!(r["offset"], i, "{ch}");
        }
    }
    // Both nodes' subscribers got 1..5 in order, in the channel's epoch.
    for (name, c) in [("a", &mut sa), ("b", &mut sb)] {
        let got = c.messages(5 * channels.len(), WAIT).await;
        for ch in &channels {
            let mine: Vec<Value> = got
                .iter()
                .filter(|m| m["channel"] == ch.as_str())
                .cloned()
                .collect();
            assert_eq!(offsets(&mine), [1, 2, 3, 4, 5], "node {name}, {ch}");
            assert_eq!(numbers(&mine), [1, 2, 3, 4, 5], "node {name}, {ch}");
            assert!(mine.iter().all(|m| m["epoch"] == epochs[ch].as_str()));
        }
    }
    // The history lives on the channel's shard.
    for ch in &channels {
        let stream = format!("herald:{{{ch}}}:stream");
        let meta = format!("herald:{{{ch}}}:meta");
        assert_eq!(cluster.keyslot(&stream), cluster.keyslot(&pubsub_of(ch)));
        assert_eq!(on_owner(&cluster, &stream, &["XLEN", &stream]).trim(), "5");
        assert_eq!(
            on_owner(&cluster, &meta, &["HGET", &meta, "offset"]).trim(),
            "5"
        );
    }
    // It comes back on the other node and recovers 3..5, then gets 6 live, once.
    let mut back = Client::connect(a.addr).await;
    for ch in &channels {
        let r = back
            .request(json!({"op": "subscribe", "channel": ch, "recover": {"epoch": epochs[ch], "offset": 2}}))
            .await;
        assert_eq!(
            r["result"],
            json!({"epoch": epochs[ch], "offset": 5, "recovered": true}),
            "{ch}"
        );
        let missed = back.messages(3, WAIT).await;
        assert_eq!(offsets(&missed), [3, 4, 5], "{ch}");
        assert_eq!(numbers(&missed), [3, 4, 5], "{ch}");
        assert!(missed.iter().all(|m| m["channel"] == ch.as_str()));
    }
    for ch in &channels {
        let (st, r) = publish_http(b.addr, json!({"channel": ch, "data": 6})).await;
        assert_eq!((st, r["offset"].clone()), (200, json!(6)), "{r}");
    }
    let live = back.messages(channels.len(), WAIT).await;
    assert!(
        live.iter().all(|m| m["offset"] == 6 && m["data"] == 6),
        "{live:?}"
    );
    let more = drain_messages(&mut back, Duration::from_millis(300)).await;
    assert!(more.is_empty(), "duplicates after recovery: {more:?}");
    // A wrong epoch cannot be recovered, and says so.
    let mut stranger = Client::connect(b.addr).await;
    let r = stranger
        .request(json!({"op": "subscribe", "channel": channels[0], "recover": {"epoch": "not-it", "offset": 1}}))
        .await;
    assert_eq!(r["result"]["recovered"], false, "{r}");
    assert_eq!(r["result"]["offset"], 6, "{r}");

    // History: the op on a, the endpoint on b, paging forward and newest-first.
    for ch in &channels {
        let h = sa
            .request(json!({"op": "history", "channel": ch, "since": {"epoch": epochs[ch], "offset": 2}, "limit": 2}))
            .await;
        assert_eq!(
            h["result"],
            json!({"epoch": epochs[ch], "offset": 6, "messages": [
                {"offset": 3, "data": 3}, {"offset": 4, "data": 4}]}),
            "{ch}"
        );
        let (st, h) = get_json(
            b.addr,
            &format!(
                "/api/channels/{ch}/history?since=4&epoch={}&limit=10",
                epochs[ch]
            ),
        )
        .await;
        assert_eq!(st, 200, "{h}");
        assert_eq!(
            h,
            json!({"epoch": epochs[ch], "offset": 6, "messages": [
                {"offset": 5, "data": 5}, {"offset": 6, "data": 6}]}),
            "{ch}"
        );
        let (st, h) = get_json(b.addr, &format!("/api/channels/{ch}/history?limit=3")).await;
        assert_eq!(st, 200, "{h}");
        let newest: Vec<u64> = h["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["offset"].as_u64().expect("an offset"))
            .collect();
        assert_eq!(newest, [4, 5, 6], "{ch}");
        let (st, all) = get_json(a.addr, &format!("/api/channels/{ch}/history")).await;
        assert_eq!(st, 200);
        assert_eq!(
            all["messages"].as_array().map(Vec::len),
            Some(6),
            "{ch}: {all}"
        );
    }
}

// ---------------------------------------------------------------------------------
// 3. Idempotent publish

async fn publish_with_header(addr: SocketAddr, body: Value, key: &str) -> (u16, Value) {
    let r = http()
        .post(format!("http://{addr}/api/publish"))
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .expect("an HTTP answer");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The idempotency record of `key` on `channel` exists on the channel's shard, in the
/// channel's slot; returns its value.
fn idempotency_record(cluster: &RedisCluster, channel: &str, key: &str) -> String {
    let record = format!("herald:{{{channel}}}:idem:{key}");
    assert_eq!(
        cluster.keyslot(&record),
        cluster.keyslot(&pubsub_of(channel)),
        "{record} is not in {channel}'s slot"
    );
    let value = on_owner(cluster, &record, &["GET", &record]);
    assert!(!value.trim().is_empty(), "no record {record}");
    value.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_publish_publishes_once_on_a_cluster() {
    let cluster = RedisCluster::start();
    let (a, b) = two_nodes(&cluster, &base_toml()).await;
    let ports: Vec<u16> = cluster.primaries().iter().map(|p| p.port).collect();
    let plain = cluster
        .names_on(ports[0], 1, |i| format!("once{i}"), pubsub_of)
        .remove(0);
    let durable = cluster
        .names_on(ports[1], 1, |i| format!("news:once{i}"), pubsub_of)
        .remove(0);
    let mut subs = Vec::new();
    for n in [&a, &b] {
        let mut c = Client::connect(n.addr).await;
        c.subscribe(&plain).await;
        c.subscribe(&durable).await;
        subs.push(c);
    }

    // Plain: the body field on a, the header on b, the WebSocket op on b.
    let body = json!({"channel": plain, "data": {"n": 1}, "idempotency_key": "k1"});
    let (s1, r1) = publish_http(a.addr, body).await;
    assert_eq!((s1, r1.clone()), (200, json!({})));
    let (s2, r2) =
        publish_with_header(b.addr, json!({"channel": plain, "data": {"n": 1}}), "k1").await;
    assert_eq!(
        (s2, r2),
        (200, r1.clone()),
        "the duplicate answers the first result"
    );
    let mut p = Client::connect(b.addr).await;
    let ws = p
        .request(
            json!({"op": "publish", "channel": plain, "data": {"n": 1}, "idempotency_key": "k1"}),
        )
        .await;
    assert_eq!(ws["result"], json!({}), "{ws}");
    let (s3, conflict) =
        publish_with_header(a.addr, json!({"channel": plain, "data": {"n": 2}}), "k1").await;
    assert_eq!(s3, 422, "{conflict}");
    assert_eq!(conflict["error"]["code"], "conflict");
    let ws = p
        .request(
            json!({"op": "publish", "channel": plain, "data": {"n": 3}, "idempotency_key": "k1"}),
        )
        .await;
    assert_eq!(ws["error"]["code"], "conflict", "{ws}");
    idempotency_record(&cluster, &plain, "k1");

    // Durable, with the same key (keys are per channel): the first result again, with
    // its epoch and offset.
    let (s1, d1) =
        publish_with_header(a.addr, json!({"channel": durable, "data": "d"}), "k1").await;
    assert_eq!(s1, 200, "{d1}");
    assert_eq!(d1["offset"], 1, "{d1}");
    let (s2, d2) = publish_http(
        b.addr,
        json!({"channel": durable, "data": "d", "idempotency_key": "k1"}),
    )
    .await;
    assert_eq!((s2, d2), (200, d1.clone()));
    let ws = p
        .request(json!({"op": "publish", "channel": durable, "data": "d", "idempotency_key": "k1"}))
        .await;
    assert_eq!(ws["result"], d1, "{ws}");
    let (s3, conflict) = publish_http(
        b.addr,
        json!({"channel": durable, "data": "e", "idempotency_key": "k1"}),
    )
    .await;
    assert_eq!(
        (s3, conflict["error"]["code"].clone()),
        (422, json!("conflict")),
        "{conflict}"
    );
    let record = idempotency_record(&cluster, &durable, "k1");
    let epoch = d1["epoch"].as_str().expect("an epoch");
    assert!(
        record.ends_with(&format!(" {epoch} 1")),
        "the record keeps the result: {record}"
    );

    // Twenty concurrent retries through both nodes publish once.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        let channel = plain.clone();
        tasks.push(tokio::spawn(async move {
            publish_with_header(addr, json!({"channel": channel, "data": "burst"}), "burst").await
        }));
    }
    for t in tasks {
        let (st, r) = t.await.expect("a retry");
        assert_eq!(st, 200, "{r}");
    }

    // Each subscriber, on either node, got each message once.
    for (k, c) in subs.iter_mut().enumerate() {
        let got = drain_messages(c, Duration::from_millis(700)).await;
        let seen: Vec<(String, Value)> = got
            .iter()
            .map(|m| {
                (
                    m["channel"].as_str().unwrap_or("").to_string(),
                    m["data"].clone(),
                )
            })
            .collect();
        let mut plain_seen: Vec<&Value> =
            seen.iter().filter(|s| s.0 == plain).map(|s| &s.1).collect();
        plain_seen.sort_by_key(|v| v.to_string());
        assert_eq!(
            plain_seen,
            [&json!("burst"), &json!({"n": 1})],
            "subscriber {k}"
        );
        let durable_seen: Vec<&Value> = got
            .iter()
            .filter(|m| m["channel"] == durable.as_str())
            .collect();
        assert_eq!(durable_seen.len(), 1, "subscriber {k}: {durable_seen:?}");
        assert_eq!(durable_seen[0]["offset"], 1);
    }
}

// ---------------------------------------------------------------------------------
// 4. The `channels` form of publish

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publish_to_channels_on_every_shard_reaches_all_of_them() {
    let cluster = RedisCluster::start();
    let (a, b) = two_nodes(&cluster, &base_toml()).await;
    let mut channels = channel_per_shard(&cluster, "multi");
    channels.extend(channel_per_shard(&cluster, "news:multi"));
    let shards: HashSet<u16> = channels
        .iter()
        .map(|c| owner_of_key(&cluster, &pubsub_of(c)))
        .collect();
    assert_eq!(shards.len(), 3);
    let mut subs = Vec::new();
    for n in [&a, &b, &a] {
        let mut c = Client::connect(n.addr).await;
        for ch in &channels {
            c.subscribe(ch).await;
        }
        subs.push(c);
    }
    let (st, r) = publish_http(a.addr, json!({"channels": channels, "data": "all"})).await;
    assert_eq!(st, 200, "{r}");
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), channels.len());
    for (res, ch) in results.iter().zip(&channels) {
        assert_eq!(res["channel"], ch.as_str(), "results in request order: {r}");
        if ch.starts_with("news:") {
            assert_eq!(res["offset"], 1, "{res}");
        } else {
            assert_eq!(res, &json!({"channel": ch}));
        }
    }
    // Again with an idempotency key, sent twice (the retry to the other node): one more
    // delivery per channel, and the retry answers the same results.
    let body = json!({"channels": channels, "data": "keyed", "idempotency_key": "multi-1"});
    let (s1, r1) = publish_http(b.addr, body.clone()).await;
    let (s2, r2) = publish_http(a.addr, body).await;
    assert_eq!((s1, s2), (200, 200), "{r1} {r2}");
    assert_eq!(r1, r2, "the retry answers the first results");
    let (s3, r3) = publish_http(
        a.addr,
        json!({"channels": channels, "data": "other", "idempotency_key": "multi-1"}),
    )
    .await;
    assert_eq!(s3, 422, "{r3}");
    for res in r3["results"].as_array().expect("results") {
        assert_eq!(res["error"]["code"], "conflict", "{res}");
    }
    let mut want: Vec<(String, String)> = channels
        .iter()
        .flat_map(|c| {
            [
                (c.clone(), "all".to_string()),
                (c.clone(), "keyed".to_string()),
            ]
        })
        .collect();
    want.sort();
    for (k, c) in subs.iter_mut().enumerate() {
        let got = c.messages(want.len(), WAIT).await;
        let mut seen: Vec<(String, String)> = got
            .iter()
            .map(|m| {
                (
                    m["channel"].as_str().unwrap_or("").to_string(),
                    m["data"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        seen.sort();
        assert_eq!(seen, want, "subscriber {k}");
        let more = drain_messages(c, Duration::from_millis(300)).await;
        assert!(more.is_empty(), "subscriber {k}: more than once: {more:?}");
    }
}

// ---------------------------------------------------------------------------------
// 5. Upstream

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_publishes_land_in_streams_on_the_cluster() {
    let cluster = RedisCluster::start();
    let ports: Vec<u16> = cluster.primaries().iter().map(|p| p.port).collect();
    let up = |i: usize| format!("up{i}");
    let key = |ns: &str| format!("herald:upstream:{ns}");
    let namespaces = [
        cluster.names_on(ports[0], 1, up, key).remove(0),
        cluster.names_on(ports[1], 1, up, key).remove(0),
    ];
    let mut toml = base_toml();
    for ns in &namespaces {
        toml.push_str(&format!(
            "\n[namespaces.{ns}]\nupstream = true\npublish = \"anyone\"\nupstream_maxlen = 1000\n"
        ));
    }
    let (a, b) = two_nodes(&cluster, &toml).await;
    let mut watchers = Vec::new();
    for n in [&a, &b] {
        let mut w = Client::connect(n.addr).await;
        for ns in &namespaces {
            w.subscribe(&format!("{ns}:seat")).await;
        }
        watchers.push(w);
    }
    let mut ca = Client::connect(a.addr).await;
    let mut cb = connect_as(b.addr, "buyer").await;
    for ns in &namespaces {
        let channel = format!("{ns}:seat");
        let ra = ca.publish(&channel, json!({"seat": "A1"})).await;
        let rb = cb.publish(&channel, json!({"seat": "B2"})).await;
        let ids: Vec<String> = [&ra, &rb]
            .iter()
            .map(|r| {
                r["result"]["stream_id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a stream id: {r}"))
                    .to_string()
            })
            .collect();
        let stream = key(ns);
        let entries = on_owner(&cluster, &stream, &["XRANGE", &stream, "-", "+"]);
        let lines: Vec<&str> = entries.lines().collect();
        // Two entries of six fields each: id, then name/value pairs.
        assert_eq!(lines.len(), 2 * 13, "{entries}");
        for (k, (id, seat, session, node, user)) in [
            (&ids[0], r#"{"seat":"A1"}"#, session_of(&ca), "a", ""),
            (&ids[1], r#"{"seat":"B2"}"#, session_of(&cb), "b", "buyer"),
        ]
        .into_iter()
        .enumerate()
        {
            let e = &lines[k * 13..(k + 1) * 13];
            assert_eq!(e[0], id.as_str());
            let fields: HashMap<&str, &str> = e[1..].chunks(2).map(|p| (p[0], p[1])).collect();
            assert_eq!(fields["channel"], channel);
            assert_eq!(fields["data"], seat);
            assert_eq!(fields["session"], session);
            assert_eq!(fields["node"], node);
            assert_eq!(fields["user"], user);
            assert!(fields["ts"].parse::<u64>().is_ok(), "{entries}");
        }
        // A backend's consumer group reads them on the cluster.
        on_owner(
            &cluster,
            &stream,
            &["XGROUP", "CREATE", &stream, "svc", "0"],
        );
        let read = on_owner(
            &cluster,
            &stream,
            &[
                "XREADGROUP",
                "GROUP",
                "svc",
                "w1",
                "COUNT",
                "10",
                "STREAMS",
                &stream,
                ">",
            ],
        );
        assert!(read.contains(&ids[0]) && read.contains(&ids[1]), "{read}");
    }
    for (k, w) in watchers.iter_mut().enumerate() {
        let got = drain_messages(w, Duration::from_millis(300)).await;
        assert!(
            got.is_empty(),
            "watcher {k}: upstream publishes fanned out: {got:?}"
        );
    }
    // An HTTP publish to the namespace is an ordinary fan-out publish, on both nodes.
    let channel = format!("{}:seat", namespaces[1]);
    let (st, r) = publish_http(a.addr, json!({"channel": channel, "data": "from backend"})).await;
    assert_eq!(st, 200, "{r}");
    for w in &mut watchers {
        let m = w.next_message(WAIT).await.expect("the backend's publish");
        assert_eq!(m["data"], "from backend");
    }
}

// ---------------------------------------------------------------------------------
// 6. Ingest

/// `XADD`s every entry (field/value pairs) to `stream` through one `redis-cli` on the
/// stream's primary.
fn xadd_all(cluster: &RedisCluster, stream: &str, entries: &[Vec<String>]) {
    let mut script = String::new();
    for fields in entries {
        script.push_str(&format!("XADD {stream} *"));
        for f in fields {
            // redis-cli reads quoted arguments.
            script.push_str(&format!(
                " \"{}\"",
                f.replace('\\', "\\\\").replace('"', "\\\"")
            ));
        }
        script.push('\n');
    }
    let port = owner_of_key(cluster, stream);
    let mut child = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-cli");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(script.as_bytes())
            .expect("the XADDs written");
    }
    let out = wait_bounded(&mut child, COMMAND_LIMIT).expect("redis-cli runs");
    assert!(
        out.is_some_and(|s| s.success()),
        "redis-cli XADD to {stream} failed"
    );
    let mut text = String::new();
    if let Some(mut o) = child.stdout.take() {
        use std::io::Read;
        let _ = o.read_to_string(&mut text);
    }
    assert_eq!(
        text.lines().filter(|l| is_stream_id(l.trim())).count(),
        entries.len(),
        "every XADD answered an id: {text}"
    );
}

fn is_stream_id(s: &str) -> bool {
    s.split_once('-').is_some_and(|(ms, seq)| {
        [ms, seq]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn fields(pairs: &[(&str, &str)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(k, v)| [k.to_string(), v.to_string()])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_ordered_and_unordered_sources_on_a_cluster() {
    let logs = captured_logs();
    let cluster = RedisCluster::start();
    let ports: Vec<u16> = cluster.primaries().iter().map(|p| p.port).collect();
    // Streams on two shards, the channels they feed on the third.
    let ordered = cluster
        .names_on(
            ports[0],
            1,
            |i| format!("orders{i}.events"),
            |s: &str| s.to_string(),
        )
        .remove(0);
    let unordered = cluster
        .names_on(
            ports[1],
            1,
            |i| format!("clicks{i}.events"),
            |s: &str| s.to_string(),
        )
        .remove(0);
    let customer = cluster
        .names_on(
            ports[2],
            1,
            |i| format!("c{i}"),
            |c| pubsub_of(&format!("orders:{c}")),
        )
        .remove(0);
    let orders = format!("orders:{customer}");
    let feed = cluster
        .names_on(ports[2], 1, |i| format!("feed:f{i}"), pubsub_of)
        .remove(0);
    let toml = format!(
        r#"{}
[namespaces.orders]
history_size = 5000
publish = "anyone"

[namespaces.feed]
publish = "anyone"

[[ingest]]
stream = "{ordered}"
channel = "orders:{{customer}}"
start = "0"
reclaim_idle = "600ms"
max_deliveries = 3
batch = 50

[[ingest]]
stream = "{unordered}"
channel_field = "channel"
ordered = false
start = "0"
reclaim_idle = "600ms"
batch = 50
"#,
        base_toml()
    );
    let (a, b) = two_nodes(&cluster, &toml).await;
    let mut subs = Vec::new();
    for n in [&a, &b] {
        let mut c = Client::connect(n.addr).await;
        c.subscribe(&orders).await;
        c.subscribe(&feed).await;
        subs.push(c);
    }

    // The ordered source: one node holds the lease, in Redis Cluster.
    let lease = format!("herald:ingest:{ordered}:herald:lease");
    assert!(
        eventually(WAIT, || async {
            matches!(
                on_owner(&cluster, &lease, &["GET", &lease]).trim(),
                "a" | "b"
            )
        })
        .await,
        "no node took the lease {lease}"
    );
    let holder = on_owner(&cluster, &lease, &["GET", &lease])
        .trim()
        .to_string();
    let pttl: i64 = on_owner(&cluster, &lease, &["PTTL", &lease])
        .trim()
        .parse()
        .unwrap_or(-9);
    assert!(
        pttl > 0 && pttl <= 600,
        "the lease expires unless renewed: {pttl}"
    );

    let n = 300;
    let entries: Vec<Vec<String>> = (0..n)
        .map(|i| fields(&[("customer", &customer), ("data", &i.to_string())]))
        .collect();
    xadd_all(&cluster, &ordered, &entries);
    let clicks: Vec<Vec<String>> = (0..n)
        .map(|i| fields(&[("channel", &feed), ("data", &format!("{{\"click\":{i}}}"))]))
        .collect();
    xadd_all(&cluster, &unordered, &clicks);

    for (k, c) in subs.iter_mut().enumerate() {
        let got = c.messages(2 * n, Duration::from_secs(30)).await;
        let (mine, theirs): (Vec<Value>, Vec<Value>) = got
            .into_iter()
            .partition(|m| m["channel"] == orders.as_str());
        assert_eq!(
            numbers(&mine),
            (0..n as i64).collect::<Vec<_>>(),
            "node {k}: stream order, each once"
        );
        assert_eq!(
            offsets(&mine),
            (1..=n as u64).collect::<Vec<_>>(),
            "node {k}"
        );
        assert!(
            mine.iter()
                .all(|m| m["source"]["stream"] == ordered.as_str())
        );
        let mut clicks: Vec<i64> = theirs
            .iter()
            .map(|m| {
                assert_eq!(m["channel"], feed.as_str());
                assert_eq!(m["source"]["stream"], unordered.as_str());
                m["data"]["click"].as_i64().expect("a click")
            })
            .collect();
        clicks.sort();
        assert_eq!(
            clicks,
            (0..n as i64).collect::<Vec<_>>(),
            "node {k}: each click once"
        );
        let more = drain_messages(c, Duration::from_millis(500)).await;
        assert!(more.is_empty(), "node {k}: published twice: {more:?}");
    }
    // Each publication carried its idempotency key, recorded in the channel's slot.
    let first_id = on_owner(
        &cluster,
        &ordered,
        &["XRANGE", &ordered, "-", "+", "COUNT", "1"],
    );
    let first_id = first_id
        .lines()
        .next()
        .expect("an entry id")
        .trim()
        .to_string();
    idempotency_record(&cluster, &orders, &format!("ingest:{ordered}:{first_id}"));
    // Both nodes read the unordered source; nothing is left pending on either source;
    // the unordered one holds no lease.
    let consumers = on_owner(
        &cluster,
        &unordered,
        &["XINFO", "CONSUMERS", &unordered, "herald"],
    );
    for node in ["a", "b"] {
        assert!(
            consumers.lines().any(|l| l.trim() == node),
            "{node} reads {unordered}: {consumers}"
        );
    }
    let unordered_lease = format!("herald:ingest:{unordered}:herald:lease");
    assert_eq!(
        on_owner(&cluster, &unordered_lease, &["EXISTS", &unordered_lease]).trim(),
        "0"
    );
    for stream in [&ordered, &unordered] {
        assert!(
            eventually(WAIT, || async {
                on_owner(&cluster, stream, &["XPENDING", stream, "herald"])
                    .lines()
                    .next()
                    == Some("0")
            })
            .await,
            "entries left pending on {stream}"
        );
    }

    // Malformed entries go to the dead-letter stream (another slot); the source flows on.
    let dead = format!("{ordered}:dead");
    xadd_all(
        &cluster,
        &ordered,
        &[
            fields(&[("customer", &customer), ("data", "{not json")]),
            fields(&[("data", "{\"no\":\"customer\"}")]),
            fields(&[("customer", &customer), ("data", "\"after\"")]),
        ],
    );
    for (k, c) in subs.iter_mut().enumerate() {
        let m = c
            .next_message(WAIT)
            .await
            .expect("the entry after the poison");
        assert_eq!(
            (m["data"].clone(), m["offset"].clone()),
            (json!("after"), json!(n + 1)),
            "node {k}"
        );
    }
    assert!(
        eventually(WAIT, || async {
            on_owner(&cluster, &dead, &["XLEN", &dead]).trim() == "2"
        })
        .await,
        "two entries dead-lettered to {dead}"
    );
    let letters = on_owner(&cluster, &dead, &["XRANGE", &dead, "-", "+"]);
    for want in ["is not JSON", "missing field 'customer'", ordered.as_str()] {
        assert!(letters.contains(want), "{want} in {letters}");
    }

    // Not one ingest command failed on the way (each would be logged and retried).
    let logged = captured_text(&logs);
    assert!(!logged.contains("ingest step failed"), "{logged}");

    // The holder stops: once its lease lapses (reclaim_idle), the other node takes it
    // over and goes on in order.
    let (gone, stays, mut sub) = if holder == "a" {
        let sub = subs.remove(1);
        (a, b, sub)
    } else {
        let sub = subs.remove(0);
        (b, a, sub)
    };
    let other = if holder == "a" { "b" } else { "a" };
    gone.stop().await;
    let stopped = Instant::now();
    assert!(
        eventually(WAIT, || async {
            on_owner(&cluster, &lease, &["GET", &lease]).trim() == other
        })
        .await,
        "node {other} did not take the lease over"
    );
    println!(
        "ingest lease taken over {:?} after the holder stopped",
        stopped.elapsed()
    );
    let later: Vec<Vec<String>> = (0..50)
        .map(|i| fields(&[("customer", &customer), ("data", &(1000 + i).to_string())]))
        .collect();
    xadd_all(&cluster, &ordered, &later);
    let got = sub.messages(50, WAIT).await;
    assert_eq!(
        numbers(&got),
        (1000..1050).collect::<Vec<_>>(),
        "after the takeover"
    );
    assert_eq!(
        offsets(&got),
        (n as u64 + 2..n as u64 + 52).collect::<Vec<_>>()
    );
    let more = drain_messages(&mut sub, Duration::from_millis(500)).await;
    assert!(more.is_empty(), "duplicates after the takeover: {more:?}");
    drop(stays);
}
