//! Event streams: idempotent publish, upstream to backends, and ingest of
//! microservices' streams into channels, against real redis-server processes.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const CONFIG: &str = r#"
[server]
idempotency_ttl = "2s"

[limits]
messages_per_sec = 100000
new_connections_per_sec = 100000

[default_namespace]
publish = "anyone"

[namespaces.orders]
history_size = 20000
publish = "anyone"

[namespaces.req]
upstream = true
publish = "anyone"
upstream_maxlen = 1000

[namespaces.closed]
upstream = true

[[ingest]]
stream = "orders.events"
channel = "orders:{customer}"
reclaim_idle = "600ms"
max_deliveries = 3
batch = 50
start = "0"
"#;

/// The configuration without its ingest source (a node that only watches).
fn without_ingest() -> String {
    CONFIG
        .split("[[ingest]]")
        .next()
        .unwrap_or(CONFIG)
        .to_string()
}

fn unordered_config() -> String {
    CONFIG.replace("start = \"0\"", "start = \"0\"\nordered = false")
}

async fn idem_http(addr: std::net::SocketAddr, body: Value, header: Option<&str>) -> (u16, Value) {
    let mut req = http()
        .post(format!("http://{addr}/api/publish"))
        .json(&body);
    if let Some(k) = header {
        req = req.header("Idempotency-Key", k);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_publish_redis_and_memory() {
    for redis in [Some(Redis::start()), None] {
        let toml = if redis.is_some() {
            CONFIG.to_string()
        } else {
            without_ingest()
        };
        let a = start(config_from_toml(redis.as_ref(), "a", &toml)).await;
        let mut sub = Client::connect(a.addr).await;
        sub.subscribe("orders:7").await;
        sub.subscribe("plain").await;

        // A retried durable publish answers the same epoch and offset, once in the channel.
        let body = json!({"channel": "orders:7", "data": {"n": 1}});
        let (s1, r1) = idem_http(a.addr, body.clone(), Some("k-1")).await;
        let (s2, r2) = idem_http(a.addr, body.clone(), Some("k-1")).await;
        assert_eq!((s1, s2), (200, 200));
        assert_eq!(r1, r2);
        assert_eq!(r1["offset"], 1);
        // The body field works like the header.
        let (_, r3) = idem_http(
            a.addr,
            json!({"channel": "orders:7", "data": {"n": 1}, "idempotency_key": "k-1"}),
            None,
        )
        .await;
        assert_eq!(r3, r1);
        // Different data: 422 conflict, nothing published.
        let (s, e) = idem_http(
            a.addr,
            json!({"channel": "orders:7", "data": {"n": 2}}),
            Some("k-1"),
        )
        .await;
        assert_eq!(s, 422);
        assert_eq!(e["error"]["code"], "conflict");
        assert_eq!(offsets(&sub.messages(1, WAIT).await), vec![1]);
        assert!(sub.next_message(Duration::from_millis(300)).await.is_none());

        // 50 concurrent retries on a plain channel publish once.
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let addr = a.addr;
            tasks.push(tokio::spawn(async move {
                idem_http(
                    addr,
                    json!({"channel": "plain", "data": "once"}),
                    Some("burst"),
                )
                .await
                .0
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200);
        }
        assert_eq!(sub.messages(1, WAIT).await[0]["data"], "once");
        assert!(
            sub.next_message(Duration::from_millis(300)).await.is_none(),
            "published more than once"
        );

        // The WebSocket op behaves the same.
        let mut p = Client::connect(a.addr).await;
        let op =
            json!({"op": "publish", "channel": "orders:7", "data": "ws", "idempotency_key": "w"});
        let x = p.request(op.clone()).await;
        let y = p.request(op).await;
        assert_eq!(x["result"], y["result"]);
        let z = p.request(json!({"op": "publish", "channel": "orders:7", "data": "other", "idempotency_key": "w"})).await;
        assert_eq!(z["error"]["code"], "conflict");
        assert_eq!(sub.messages(1, WAIT).await[0]["data"], "ws");

        // After the window (2 s) the key is forgotten: the same publish goes out again.
        tokio::time::sleep(Duration::from_millis(2300)).await;
        let (_, again) = idem_http(a.addr, body, Some("k-1")).await;
        assert_ne!(again["offset"], r1["offset"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_appends_client_publishes_for_backends() {
    let mut redis = Redis::start();
    let a = start(config_from_toml(Some(&redis), "node-up", CONFIG)).await;
    let mut c = Client::connect(a.addr).await;
    let mut watcher = Client::connect(a.addr).await;
    watcher.subscribe("req:seat").await;
    let r = c.publish("req:seat", json!({"seat": "A1"})).await;
    let id = r["result"]["stream_id"]
        .as_str()
        .expect("stream_id")
        .to_string();
    let entry = redis.cli(&["XRANGE", "herald:upstream:req", "-", "+"]);
    for want in [
        id.as_str(),
        "channel",
        "req:seat",
        "data",
        "{\"seat\":\"A1\"}",
        "session",
        c.welcome["session"].as_str().unwrap(),
        "node",
        "node-up",
        "ts",
        "user",
    ] {
        assert!(entry.contains(want), "missing {want} in {entry}");
    }
    assert!(
        watcher
            .next_message(Duration::from_millis(300))
            .await
            .is_none(),
        "upstream publishes are not fanned out"
    );
    // An HTTP publish to the namespace is an ordinary fan-out publish.
    publish_http(
        a.addr,
        json!({"channel": "req:seat", "data": "from backend"}),
    )
    .await;
    assert_eq!(
        watcher.next_message(WAIT).await.unwrap()["data"],
        "from backend"
    );
    // Rules apply: `closed` does not allow client publishes.
    let r = c.publish("closed:x", json!(1)).await;
    assert_eq!(r["error"]["code"], "forbidden");
    // Backends read with a consumer group; two consumers, one dies with entries pending.
    redis.cli(&["XGROUP", "CREATE", "herald:upstream:req", "svc", "0"]);
    for i in 0..4 {
        c.publish("req:seat", json!({"i": i})).await;
    }
    let first = redis.cli(&[
        "XREADGROUP",
        "GROUP",
        "svc",
        "dead-worker",
        "COUNT",
        "5",
        "STREAMS",
        "herald:upstream:req",
        ">",
    ]);
    assert!(first.contains("\"i\":3"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let claimed = redis.cli(&[
        "XAUTOCLAIM",
        "herald:upstream:req",
        "svc",
        "live-worker",
        "10",
        "0-0",
    ]);
    assert!(
        claimed.contains("\"i\":0") && claimed.contains("\"i\":3"),
        "{claimed}"
    );
    // During an outage: unavailable, nothing appended.
    redis.kill();
    assert!(
        eventually(Duration::from_secs(5), || async {
            ready_status(a.addr).await == 503
        })
        .await
    );
    let r = c.publish("req:seat", json!("lost?")).await;
    assert_eq!(r["error"]["code"], "unavailable");
    redis.restart();
    wait_ready(a.addr).await;
    assert_eq!(redis.cli(&["XLEN", "herald:upstream:req"]).trim(), "0");
}

fn xadd(redis: &Redis, fields: &[&str]) -> String {
    let mut args = vec!["XADD", "orders.events", "*"];
    args.extend_from_slice(fields);
    redis.cli(&args).trim().to_string()
}

/// Reads every frame of a client for a while; returns the message frames.
async fn drain_messages(c: &mut Client, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(f) = c.next_message(quiet).await {
        out.push(f);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_ordered_three_nodes_exactly_once_in_order() {
    let redis = Redis::start();
    let nodes = [
        start(config_from_toml(Some(&redis), "a", CONFIG)).await,
        start(config_from_toml(Some(&redis), "b", CONFIG)).await,
        start(config_from_toml(Some(&redis), "c", CONFIG)).await,
    ];
    let mut subs = Vec::new();
    for n in &nodes {
        let mut c = Client::connect(n.addr).await;
        c.subscribe("orders:42").await;
        subs.push(c);
    }
    let total = 10_000;
    let started = Instant::now();
    // XADD at full speed through one redis-cli pipe.
    let mut script = String::new();
    for i in 0..total {
        script.push_str(&format!("XADD orders.events * customer 42 data {i}\n"));
    }
    let mut child = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    child.wait().unwrap();
    for c in &mut subs {
        let got = c.messages(total, Duration::from_secs(60)).await;
        let data: Vec<i64> = got.iter().map(|m| m["data"].as_i64().unwrap()).collect();
        assert_eq!(
            data,
            (0..total as i64).collect::<Vec<_>>(),
            "stream order, each once"
        );
        assert_eq!(offsets(&got), (1..=total as u64).collect::<Vec<_>>());
        let ids: HashSet<&str> = got
            .iter()
            .map(|m| m["source"]["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), total);
        assert!(got.iter().all(|m| m["source"]["stream"] == "orders.events"));
    }
    println!(
        "ingested {total} entries to 3x1 subscribers in {:?}",
        started.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            redis
                .cli(&["XPENDING", "orders.events", "herald"])
                .lines()
                .next()
                == Some("0")
        })
        .await,
        "nothing pending at the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_poison_entries_go_to_the_dead_letter_stream() {
    let redis = Redis::start();
    let a = start(config_from_toml(Some(&redis), "a", CONFIG)).await;
    let mut c = Client::connect(a.addr).await;
    c.subscribe("orders:1").await;
    xadd(&redis, &["customer", "1", "data", "{\"ok\":1}"]);
    xadd(&redis, &["data", "{\"no\":\"customer\"}"]);
    xadd(&redis, &["customer", "1", "data", "{not json"]);
    xadd(&redis, &["customer", "bad name", "data", "1"]);
    xadd(&redis, &["customer", "1"]);
    xadd(&redis, &["customer", "1", "data", "{\"ok\":2}"]);
    let got = c.messages(2, WAIT).await;
    assert_eq!(got[0]["data"], json!({"ok": 1}));
    assert_eq!(got[1]["data"], json!({"ok": 2}));
    assert!(
        eventually(WAIT, || async {
            redis.cli(&["XLEN", "orders.events:dead"]).trim() == "4"
        })
        .await,
        "four poison entries dead-lettered"
    );
    let dead = redis.cli(&["XRANGE", "orders.events:dead", "-", "+"]);
    for reason in [
        "missing field 'customer'",
        "is not JSON",
        "invalid channel",
        "missing field 'data'",
    ] {
        assert!(dead.contains(reason), "{reason} in {dead}");
    }

    // A publish that keeps failing (the durable channel's meta key has the wrong type)
    // is retried, then dead-lettered after max_deliveries.
    redis.cli(&["SET", "herald:{orders:9}:meta", "not-a-hash"]);
    xadd(&redis, &["customer", "9", "data", "{\"doomed\":true}"]);
    assert!(
        eventually(Duration::from_secs(15), || async {
            redis.cli(&["XLEN", "orders.events:dead"]).trim() == "5"
        })
        .await,
        "the failing entry was dead-lettered"
    );
    let dead = redis.cli(&["XREVRANGE", "orders.events:dead", "+", "-", "COUNT", "1"]);
    assert!(dead.contains("without success"), "{dead}");
    // And the source flows on.
    xadd(&redis, &["customer", "1", "data", "{\"ok\":3}"]);
    assert_eq!(
        c.next_message(WAIT).await.unwrap()["data"],
        json!({"ok": 3})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_survives_a_lost_group() {
    let mut redis = Redis::start();
    let a = start(config_from_toml(Some(&redis), "a", CONFIG)).await;
    let mut c = Client::connect(a.addr).await;
    c.subscribe("orders:5").await;
    xadd(&redis, &["customer", "5", "data", "1"]);
    assert_eq!(c.next_message(WAIT).await.unwrap()["data"], 1);
    // The stream is deleted: the group goes with it, and comes back at 0.
    redis.cli(&["DEL", "orders.events"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    xadd(&redis, &["customer", "5", "data", "2"]);
    xadd(&redis, &["customer", "5", "data", "3"]);
    let got = c.messages(2, Duration::from_secs(10)).await;
    assert_eq!(
        got.iter().map(|m| m["data"].clone()).collect::<Vec<_>>(),
        vec![json!(2), json!(3)]
    );
    // Redis restarted empty: the same. (The durable channel's epoch is gone, so the
    // old subscriber is closed with 4008 and a client subscribes again.)
    redis.restart();
    wait_ready(a.addr).await;
    assert_eq!(c.closed(WAIT).await, Some(Closed::Code(4008)));
    let mut c = Client::connect(a.addr).await;
    c.subscribe("orders:5").await;
    xadd(&redis, &["customer", "5", "data", "4"]);
    let got = drain_messages(&mut c, Duration::from_secs(5)).await;
    assert_eq!(
        got.iter().map(|m| m["data"].clone()).collect::<Vec<_>>(),
        vec![json!(4)],
        "the entry written after the restart arrived, once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_unordered_three_nodes_share_the_work() {
    let redis = Redis::start();
    let toml = unordered_config();
    let nodes = [
        start(config_from_toml(Some(&redis), "a", &toml)).await,
        start(config_from_toml(Some(&redis), "b", &toml)).await,
        start(config_from_toml(Some(&redis), "c", &toml)).await,
    ];
    let mut c = Client::connect(nodes[0].addr).await;
    c.subscribe("orders:3").await;
    let total = 600;
    for i in 0..total {
        xadd(&redis, &["customer", "3", "data", &i.to_string()]);
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let got = c.messages(total, Duration::from_secs(30)).await;
    let mut data: Vec<i64> = got.iter().map(|m| m["data"].as_i64().unwrap()).collect();
    data.sort();
    assert_eq!(
        data,
        (0..total as i64).collect::<Vec<_>>(),
        "every entry exactly once"
    );
    assert!(c.next_message(Duration::from_millis(500)).await.is_none());
    let consumers = redis.cli(&["XINFO", "CONSUMERS", "orders.events", "herald"]);
    let readers = ["a", "b", "c"]
        .iter()
        .filter(|n| consumers.lines().any(|l| l == **n))
        .count();
    assert!(readers >= 2, "several nodes read: {consumers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_fails_over_from_a_killed_lease_holder_without_gap_or_duplicate() {
    let redis = Redis::start();
    let dir = std::env::temp_dir().join(format!("herald-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("herald.toml");
    std::fs::write(&file, CONFIG).unwrap();
    let url = redis.url();
    let args = [
        "--redis",
        url.as_str(),
        "--config",
        file.to_str().unwrap(),
        "--node-id",
    ];
    let first = NodeProcess::spawn(&[&args[..], &["first"]].concat()).await;
    let mut c = Client::connect(first.addr).await;
    c.subscribe("orders:8").await;
    // Only once the first node holds the lease (its ingest task takes it shortly
    // after the node listens) does the second one start.
    let lease_key = "herald:ingest:orders.events:herald:lease";
    assert!(
        eventually(Duration::from_secs(10), || async {
            redis.cli(&["GET", lease_key]).trim() == "first"
        })
        .await,
        "the first node never took the lease"
    );
    let second = NodeProcess::spawn(&[&args[..], &["second"]].concat()).await;
    let mut watcher = Client::connect(second.addr).await;
    watcher.subscribe("orders:8").await;
    let lease = redis.cli(&["GET", lease_key]);
    assert_eq!(lease.trim(), "first");

    let writer = {
        let port = redis.port;
        tokio::spawn(async move {
            for i in 0..300 {
                let _ = std::process::Command::new("redis-cli")
                    .args([
                        "-p",
                        &port.to_string(),
                        "XADD",
                        "orders.events",
                        "*",
                        "customer",
                        "8",
                        "data",
                        &i.to_string(),
                    ])
                    .output();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.signal("-KILL");
    let killed = Instant::now();
    writer.await.unwrap();
    let got = watcher.messages(300, Duration::from_secs(20)).await;
    println!(
        "all 300 entries arrived {:?} after the kill",
        killed.elapsed()
    );
    let data: Vec<i64> = got.iter().map(|m| m["data"].as_i64().unwrap()).collect();
    assert_eq!(
        data,
        (0..300).collect::<Vec<_>>(),
        "no gap, no duplicate, stream order"
    );
    assert_eq!(offsets(&got), (1..=300).collect::<Vec<_>>());
    assert!(
        watcher
            .next_message(Duration::from_millis(500))
            .await
            .is_none()
    );
    drop(second);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_crash_between_publish_and_ack_publishes_once() {
    let redis = Redis::start();
    let dir = std::env::temp_dir().join(format!("herald-ingest-ack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("herald.toml");
    std::fs::write(&file, CONFIG).unwrap();
    let url = redis.url();
    let watcher_node = start(config_from_toml(Some(&redis), "watch", &without_ingest())).await;
    let mut watcher = Client::connect(watcher_node.addr).await;
    watcher.subscribe("orders:4").await;

    // This node aborts right after its third publish, before acknowledging it.
    let port = free_port();
    let mut crashing = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--redis",
            &url,
            "--config",
            file.to_str().unwrap(),
            "--node-id",
            "crashy",
        ])
        .env("HERALD_TEST_ABORT_AFTER_INGEST_PUBLISH", "3")
        .env("RUST_LOG", "error")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for i in 0..5 {
        xadd(&redis, &["customer", "4", "data", &i.to_string()]);
    }
    let deadline = Instant::now() + WAIT;
    while crashing.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the fault point did not fire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Entry 3 (data 2) was published but never acknowledged.
    assert!(
        redis
            .cli(&["XPENDING", "orders.events", "herald"])
            .lines()
            .next()
            != Some("0")
    );
    // The same node restarts under the same name and processes its pending list first.
    let again = NodeProcess::spawn(&[
        "--redis",
        &url,
        "--config",
        file.to_str().unwrap(),
        "--node-id",
        "crashy",
    ])
    .await;
    let got = watcher.messages(5, Duration::from_secs(15)).await;
    assert_eq!(
        got.iter()
            .map(|m| m["data"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert!(
        watcher
            .next_message(Duration::from_millis(800))
            .await
            .is_none(),
        "published twice"
    );
    let metrics = http()
        .get(format!("http://{}/metrics", again.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Entries published before the crash but not acknowledged were recognised.
    let duplicates = metric_in(
        &metrics,
        "herald_ingest_duplicates_total{node=\"crashy\",stream=\"orders.events\"}",
    )
    .unwrap_or(0.0);
    assert!(duplicates >= 1.0, "{metrics}");
    let _ = std::fs::remove_dir_all(dir);
}
