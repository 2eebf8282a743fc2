//! Redis outages (PROTOCOL §2.2, §2.3, §3): a node cut off from Redis says so (not
//! ready, `unavailable` for publishes and subscribes, never a hang) and, once Redis is
//! back, serves its existing clients again without any of them reconnecting.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// Polls /readyz until it answers `status`; returns how long that took.
async fn wait_ready_status(addr: SocketAddr, status: u16, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut last = 0;
    while start.elapsed() < limit {
        last = ready_status(addr).await;
        if last == status {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("/readyz of {addr} answered {last}, not {status}, after {limit:?}");
}

/// The pub/sub channels of Herald channels (`herald:{c}:ch`; not node channels).
fn pubsub_channels(redis: &Redis) -> Vec<String> {
    let mut v: Vec<String> = redis
        .cli(&["PUBSUB", "CHANNELS", "herald:{*"])
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    v.sort();
    v
}

/// Every message of `clients` is `data` on `channel`, exactly once.
async fn expect_each(clients: &mut [Client], channel: &str, data: &[Value]) {
    for (k, c) in clients.iter_mut().enumerate() {
        let got = c.messages(data.len(), Duration::from_secs(10)).await;
        for (m, want) in got.iter().zip(data) {
            assert_eq!(m["channel"], channel, "client {k}: {m}");
            assert_eq!(&m["data"], want, "client {k}");
        }
        assert!(
            c.next_message(Duration::from_millis(200)).await.is_none(),
            "client {k}: an extra message arrived"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_is_survived_without_reconnecting_clients() {
    let mut redis = Redis::start();
    let a = start(config(Some(&redis), "a")).await;
    let b = start(config(Some(&redis), "b")).await;
    let mut clients = Vec::new();
    for node in [&a, &b] {
        for _ in 0..2 {
            let mut c = Client::connect(node.addr).await;
            c.subscribe("news").await;
            clients.push(c);
        }
    }
    let mut publisher = Client::connect(b.addr).await;
    // Before the outage everything flows.
    let (status, _) = publish_http(a.addr, json!({"channel": "news", "data": "before"})).await;
    assert_eq!(status, 200);
    expect_each(&mut clients, "news", &[json!("before")]).await;
    let sessions: Vec<Value> = clients
        .iter()
        .map(|c| c.welcome["session"].clone())
        .collect();
    assert_eq!(
        metric_of(a.addr, "herald_backplane_reconnects_total").await,
        0.0
    );

    redis.kill();
    let killed = Instant::now();
    for node in [&a, &b] {
        let took = wait_ready_status(node.addr, 503, Duration::from_secs(5)).await;
        eprintln!("{} not ready {took:?} after the kill", node.addr);
    }
    // Publishing is refused at once, with the documented code, on both doors.
    for node in [&a, &b] {
        let started = Instant::now();
        let (status, body) =
            publish_http(node.addr, json!({"channel": "news", "data": "lost"})).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the publish hung"
        );
        // The channels form: every channel failed, so 503.
        let (status, body) = publish_http(
            node.addr,
            json!({"channels": ["news", "other"], "data": "lost"}),
        )
        .await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["results"][0]["error"]["code"], "unavailable", "{body}");
        assert_eq!(body["results"][1]["error"]["code"], "unavailable", "{body}");
    }
    let started = Instant::now();
    let r = publisher.publish("news", json!("lost")).await;
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the publish hung"
    );
    // Nobody was disconnected, and nothing arrived.
    for c in &mut clients {
        let f = c.next_frame(Duration::from_millis(100)).await;
        assert!(f.is_none(), "a client got {f:?} during the outage");
    }
    // Still down after a while (no false recovery; long enough for the reconnect
    // backoff to grow), and the node answers health.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(ready_status(b.addr).await, 503);
    assert_eq!(ready_status(a.addr).await, 503);
    for node in [&a, &b] {
        assert_eq!(
            metric_of(node.addr, "herald_backplane_connected").await,
            0.0
        );
        assert_eq!(metric_of(node.addr, "herald_ready").await, 0.0);
    }
    let health = http()
        .get(format!("http://{}/healthz", a.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    redis.restart();
    eprintln!("redis back {:?} after the kill", killed.elapsed());
    for node in [&a, &b] {
        let took = wait_ready_status(node.addr, 200, Duration::from_secs(12)).await;
        eprintln!("{} ready {took:?} after the restart", node.addr);
    }
    for node in [&a, &b] {
        assert_eq!(
            metric_of(node.addr, "herald_backplane_connected").await,
            1.0
        );
        assert_eq!(metric_of(node.addr, "herald_ready").await, 1.0);
    }
    // Both nodes are subscribed to the channel again in the new (empty) Redis, and
    // each to its own node channel (PROTOCOL §4).
    assert_eq!(pubsub_channels(&redis), vec!["herald:{news}:ch"]);
    let node_channels = redis.cli(&["PUBSUB", "CHANNELS", "herald:node:*"]);
    let mut node_channels: Vec<&str> = node_channels.lines().filter(|l| !l.is_empty()).collect();
    node_channels.sort();
    assert_eq!(node_channels, vec!["herald:node:{a}", "herald:node:{b}"]);
    let numsub = redis.cli(&["PUBSUB", "NUMSUB", "herald:{news}:ch"]);
    assert_eq!(
        numsub.lines().nth(1).map(str::trim),
        Some("2"),
        "both nodes subscribed: {numsub}"
    );

    // The same client objects receive again, from either node and straight from Redis.
    let (status, body) = publish_http(a.addr, json!({"channel": "news", "data": 1})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = publish_http(b.addr, json!({"channel": "news", "data": 2})).await;
    assert_eq!(status, 200, "{body}");
    let r = publisher.publish("news", json!(3)).await;
    assert_eq!(r["result"], json!({}), "{r}");
    let direct = r#"{"type":"message","channel":"news","data":4}"#;
    assert_eq!(
        redis.cli(&["PUBLISH", "herald:{news}:ch", direct]).trim(),
        "2"
    );
    expect_each(
        &mut clients,
        "news",
        &[json!(1), json!(2), json!(3), json!(4)],
    )
    .await;
    let now: Vec<Value> = clients
        .iter()
        .map(|c| c.welcome["session"].clone())
        .collect();
    assert_eq!(sessions, now);
    for (k, c) in clients.iter_mut().enumerate() {
        let r = c.request(json!({"op": "ping"})).await;
        assert_eq!(r["result"], json!({}), "client {k}");
    }
    assert_eq!(metric_of(a.addr, "herald_connections").await, 2.0);
    assert_eq!(metric_of(b.addr, "herald_connections").await, 3.0);

    for node in [&a, &b] {
        assert_backplane_reconnected(node.addr).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_while_redis_is_down_answers_unavailable() {
    let mut redis = Redis::start();
    let node = start(config(Some(&redis), "a")).await;
    let mut holder = Client::connect(node.addr).await;
    holder.subscribe("held").await;
    let mut late = Client::connect(node.addr).await;

    redis.kill();
    wait_ready_status(node.addr, 503, Duration::from_secs(5)).await;

    // A channel nobody on the node holds, and one another session holds: both refused
    // promptly, neither a hang.
    for channel in ["fresh", "held"] {
        let started = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            late.request(json!({"op": "subscribe", "channel": channel})),
        )
        .await
        .unwrap_or_else(|_| panic!("subscribe to {channel} hung for 10 s"));
        assert_eq!(r["error"]["code"], "unavailable", "{channel}: {r}");
        assert!(r.get("result").is_none(), "{r}");
        eprintln!("subscribe {channel} refused in {:?}", started.elapsed());
    }
    // The refused session is not counted as subscribed.
    assert_eq!(metric_of(node.addr, "herald_subscriptions").await, 1.0);
    // The connection is fine.
    assert_eq!(
        late.request(json!({"op": "ping"})).await["result"],
        json!({})
    );

    redis.restart();
    wait_ready_status(node.addr, 200, Duration::from_secs(12)).await;
    // The refused subscribes left nothing behind: `late` gets nothing, `holder` does.
    let (status, _) = publish_http(node.addr, json!({"channel": "held", "data": 1})).await;
    assert_eq!(status, 200);
    let (status, _) = publish_http(node.addr, json!({"channel": "fresh", "data": 2})).await;
    assert_eq!(status, 200);
    let m = holder
        .next_message(Duration::from_secs(5))
        .await
        .expect("holder gets messages again");
    assert_eq!(
        (m["channel"].clone(), m["data"].clone()),
        (json!("held"), json!(1))
    );
    assert!(
        late.next_message(Duration::from_millis(300))
            .await
            .is_none(),
        "a refused subscribe delivers messages"
    );
    // Subscribing now works.
    late.subscribe("fresh").await;
    let (status, _) = publish_http(node.addr, json!({"channel": "fresh", "data": 3})).await;
    assert_eq!(status, 200);
    let m = late
        .next_message(Duration::from_secs(5))
        .await
        .expect("fresh");
    assert_eq!(m["data"], 3);
}
