//! Durable channels: offsets, history, loss-free recovery and gap handling, against a
//! real redis-server and (where one node suffices) the memory backplane.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const DURABLE: &str = "[limits]\nmessages_per_sec = 100000\n\n[namespaces.news]\nhistory_size = 5000\nhistory_ttl = \"1h\"\npublish = \"anyone\"\n\n[namespaces.tiny]\nhistory_size = 5\npublish = \"anyone\"\n";

fn durable_config(redis: Option<&Redis>, id: &str) -> herald::config::Config {
    config_from_toml(redis, id, DURABLE)
}

async fn recover(c: &mut Client, channel: &str, epoch: &Value, offset: u64) -> Value {
    let r = c
        .request(json!({"op": "subscribe", "channel": channel, "recover": {"epoch": epoch, "offset": offset}}))
        .await;
    assert!(r.get("result").is_some(), "recover failed: {r}");
    r["result"].clone()
}

/// Disconnect, publish N elsewhere, reconnect to another node with `recover`.
async fn missed_messages_are_recovered(redis: Option<&Redis>) {
    let a = start(durable_config(redis, "a")).await;
    let b = if redis.is_some() {
        Some(start(durable_config(redis, "b")).await)
    } else {
        None
    };
    let b_addr = b.as_ref().map(|n| n.addr).unwrap_or(a.addr);

    let mut c = Client::connect(a.addr).await;
    let sub = c.subscribe("news:eu").await;
    assert_eq!(sub["offset"], 0);
    let epoch = sub["epoch"].clone();
    for i in 1..=3 {
        let (s, body) = publish_http(a.addr, json!({"channel": "news:eu", "data": i})).await;
        assert_eq!(s, 200);
        assert_eq!(body, json!({"epoch": epoch, "offset": i}));
    }
    let got = c.messages(3, WAIT).await;
    assert_eq!(offsets(&got), vec![1, 2, 3]);
    let last = 3;
    c.close().await;

    for i in 4..=23 {
        let (s, _) = publish_http(b_addr, json!({"channel": "news:eu", "data": i})).await;
        assert_eq!(s, 200);
    }
    let mut c = Client::connect(b_addr).await;
    let r = recover(&mut c, "news:eu", &epoch, last).await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["epoch"], epoch);
    assert_eq!(r["offset"], 23);
    for i in 24..=26 {
        publish_http(a.addr, json!({"channel": "news:eu", "data": i})).await;
    }
    let got = c.messages(23, WAIT).await;
    assert_eq!(offsets(&got), (4..=26).collect::<Vec<_>>());
    assert_eq!(numbers(&got), (4..=26).collect::<Vec<_>>());
    assert!(
        c.next_message(Duration::from_millis(300)).await.is_none(),
        "duplicate after recovery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_after_disconnect_redis() {
    let redis = Redis::start();
    missed_messages_are_recovered(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_after_disconnect_memory() {
    missed_messages_are_recovered(None).await;
}

/// Recover while a publisher hammers the channel: offsets stay consecutive across the
/// history/live boundary.
async fn recovery_races_a_publisher(redis: Option<&Redis>) {
    let a = start(durable_config(redis, "a")).await;
    let b = if redis.is_some() {
        Some(start(durable_config(redis, "b")).await)
    } else {
        None
    };
    let b_addr = b.as_ref().map(|n| n.addr).unwrap_or(a.addr);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut p = Client::connect(a.addr).await;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = p.publish("news:race", json!(i)).await;
                assert!(r.get("result").is_some(), "{r}");
                i += 1;
            }
            i
        })
    };
    let mut probe = Client::connect(b_addr).await;
    let first = probe.subscribe("news:race").await;
    let epoch = first["epoch"].clone();
    probe.close().await;
    for round in 0..25 {
        // Start somewhere in the recent past.
        let mut c = Client::connect(b_addr).await;
        let pos = c.subscribe("news:race").await;
        c.close().await;
        let from = pos["offset"].as_u64().unwrap().saturating_sub(5);
        let mut c = Client::connect(b_addr).await;
        let r = recover(&mut c, "news:race", &epoch, from).await;
        assert_eq!(r["recovered"], true, "round {round}: {r}");
        let got = c.messages(40, WAIT).await;
        let offs = offsets(&got);
        let want: Vec<u64> = (from + 1..from + 41).collect();
        assert_eq!(
            offs, want,
            "round {round}: offsets not consecutive across the boundary"
        );
        c.close().await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(hammer.await.unwrap() > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_races_a_publisher_redis() {
    let redis = Redis::start();
    recovery_races_a_publisher(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_races_a_publisher_memory() {
    recovery_races_a_publisher(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_or_lost_history_is_reported_not_recovered() {
    let redis = Redis::start();
    let a = start(durable_config(Some(&redis), "a")).await;
    let mut c = Client::connect(a.addr).await;
    let epoch = c.subscribe("tiny:t").await["epoch"].clone();
    c.close().await;
    // history_size 5: after 200 publishes, offset 1 is long gone (MAXLEN ~ trims in
    // whole nodes, so allow plenty).
    for i in 0..200 {
        publish_http(a.addr, json!({"channel": "tiny:t", "data": i})).await;
    }
    let mut c = Client::connect(a.addr).await;
    let r = recover(&mut c, "tiny:t", &epoch, 1).await;
    assert_eq!(r["recovered"], false, "{r}");
    assert_eq!(r["offset"], 200);
    assert_eq!(r["epoch"], epoch);
    // No history is replayed after recovered:false; live messages flow.
    publish_http(a.addr, json!({"channel": "tiny:t", "data": "live"})).await;
    let m = c.next_message(WAIT).await.unwrap();
    assert_eq!(m["offset"], 201);
    c.close().await;

    // The keys are deleted: a new epoch starts and recovery says so.
    redis.cli(&[
        "DEL",
        "herald:{news:gone}:meta",
        "herald:{news:gone}:stream",
    ]);
    let mut c = Client::connect(a.addr).await;
    let e1 = c.subscribe("news:gone").await["epoch"].clone();
    c.close().await;
    publish_http(a.addr, json!({"channel": "news:gone", "data": 1})).await;
    redis.cli(&[
        "DEL",
        "herald:{news:gone}:meta",
        "herald:{news:gone}:stream",
    ]);
    let mut c = Client::connect(a.addr).await;
    let r = recover(&mut c, "news:gone", &e1, 1).await;
    assert_eq!(r["recovered"], false, "{r}");
    assert_ne!(r["epoch"], e1);
    assert_eq!(r["offset"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_never_leaves_a_silent_gap() {
    let mut redis = Redis::start();
    let a = start(durable_config(Some(&redis), "a")).await;
    let b = start(durable_config(Some(&redis), "b")).await;
    let mut subs = Vec::new();
    for node in [&a, &b] {
        for _ in 0..3 {
            let mut c = Client::connect(node.addr).await;
            c.subscribe("news:r").await;
            subs.push(c);
        }
    }
    for i in 1..=5 {
        publish_http(a.addr, json!({"channel": "news:r", "data": i})).await;
    }
    redis.restart();
    wait_ready(a.addr).await;
    wait_ready(b.addr).await;
    for i in 6..=10 {
        // The nodes may not have noticed the restart when `/readyz` was asked: a publish
        // in that moment is answered 503 (nothing published, retry later, PROTOCOL §3).
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (s, body) = publish_http(b.addr, json!({"channel": "news:r", "data": i})).await;
            if s == 200 {
                break;
            }
            assert_eq!(s, 503, "{body}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "publish {i} still refused after the restart: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Every subscriber either sees a gap-free sequence or is closed with 4008.
    for (n, c) in subs.iter_mut().enumerate() {
        let mut seen: Vec<(String, u64)> = Vec::new();
        let mut closed = None;
        while let Some(f) = c.next_frame(Duration::from_secs(3)).await {
            match f["type"].as_str() {
                Some("message") => seen.push((
                    f["epoch"].as_str().unwrap().into(),
                    f["offset"].as_u64().unwrap(),
                )),
                Some("closed") => {
                    closed = Some(f["code"].clone());
                    break;
                }
                _ => {}
            }
        }
        for w in seen.windows(2) {
            let ok =
                (w[0].0 == w[1].0 && w[1].1 == w[0].1 + 1) || w[0].0 != w[1].0 && closed.is_some();
            assert!(ok, "subscriber {n}: silent gap {:?} -> {:?}", w[0], w[1]);
        }
        let epochs: std::collections::HashSet<_> = seen.iter().map(|s| s.0.clone()).collect();
        assert!(
            closed == Some(json!(4008)) || (epochs.len() == 1 && seen.len() == 10),
            "subscriber {n}: neither every offset nor a 4008 close: {seen:?} {closed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_share_one_order() {
    let redis = Redis::start();
    let nodes = [
        start(durable_config(Some(&redis), "a")).await,
        start(durable_config(Some(&redis), "b")).await,
        start(durable_config(Some(&redis), "c")).await,
    ];
    let mut watchers = Vec::new();
    for n in &nodes {
        let mut c = Client::connect(n.addr).await;
        c.subscribe("news:order").await;
        watchers.push(c);
    }
    let mut tasks = Vec::new();
    for (k, n) in nodes.iter().enumerate() {
        let addr = n.addr;
        tasks.push(tokio::spawn(async move {
            let mut p = Client::connect(addr).await;
            for i in 0..100 {
                let r = p.publish("news:order", json!(format!("{k}-{i}"))).await;
                assert!(r.get("result").is_some(), "{r}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut orders = Vec::new();
    for w in &mut watchers {
        let got = w.messages(300, WAIT).await;
        assert_eq!(offsets(&got), (1..=300).collect::<Vec<_>>());
        orders.push(got.iter().map(|m| m["data"].clone()).collect::<Vec<_>>());
    }
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[1], orders[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_over_websocket_and_http() {
    for redis in [Some(Redis::start()), None] {
        let a = start(durable_config(redis.as_ref(), "a")).await;
        for i in 1..=10 {
            publish_http(a.addr, json!({"channel": "news:h", "data": {"n": i}})).await;
        }
        let mut c = Client::connect(a.addr).await;
        let r = c
            .request(json!({"op": "history", "channel": "news:h", "limit": 3}))
            .await;
        let res = &r["result"];
        assert_eq!(res["offset"], 10);
        let offs: Vec<u64> = res["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offs, vec![8, 9, 10]);
        assert_eq!(res["messages"][0]["data"], json!({"n": 8}));

        let r = c.request(json!({"op": "history", "channel": "news:h", "since": {"epoch": res["epoch"], "offset": 2}, "limit": 2})).await;
        let offs: Vec<u64> = r["result"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offs, vec![3, 4]);

        let body: Value = http()
            .get(format!(
                "http://{}/api/channels/news:h/history?since=7",
                a.addr
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let offs: Vec<u64> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offs, vec![8, 9, 10]);

        // A plain channel keeps no history.
        let r = c
            .request(json!({"op": "history", "channel": "plain"}))
            .await;
        assert_eq!(r["error"]["code"], "bad_request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_recovers_without_loss() {
    let redis = Redis::start();
    let mut cfg = durable_config(Some(&redis), "a");
    cfg.limits.outbox_messages = 16;
    let a = start(cfg).await;
    // A raw client that subscribes, then stops reading.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", a.addr))
        .await
        .unwrap();
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::Text(
        r#"{"id":1,"op":"subscribe","channel":"news:slow"}"#.into(),
    ))
    .await
    .unwrap();
    let mut epoch = Value::Null;
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == 1 {
                epoch = v["result"]["epoch"].clone();
                break;
            }
        }
    }
    // Far more than the socket buffers of loopback TCP can absorb, published while
    // the client does not read. The node gives the 4008 close frame a few seconds
    // before it drops the connection, so the client resumes reading once the node
    // reports the cut-off.
    let addr = a.addr;
    let publisher = tokio::spawn(async move {
        let big = "x".repeat(16_000);
        for i in 1..=2000 {
            publish_http(
                addr,
                json!({"channel": "news:slow", "data": {"i": i, "pad": big}}),
            )
            .await;
        }
    });
    let closes = || async move {
        let text = http()
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric_in(&text, "herald_slow_consumer_closes_total").unwrap_or(0.0)
    };
    assert!(
        eventually(Duration::from_secs(60), || async { closes().await >= 1.0 }).await,
        "never cut off"
    );
    // Now read: frames, then the 4008 close.
    let mut last = 0;
    let mut code = None;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        match m {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if let Some(o) = v["offset"].as_u64() {
                    assert_eq!(o, last + 1);
                    last = o;
                }
            }
            Message::Close(f) => {
                code = f.map(|f| u16::from(f.code));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(
        code,
        Some(4008),
        "a client that stopped reading is closed as a slow consumer"
    );
    publisher.await.unwrap();
    assert!(last < 2000);
    let mut c = Client::connect(a.addr).await;
    let r = recover(&mut c, "news:slow", &epoch, last).await;
    assert_eq!(r["recovered"], true);
    let got = c.messages((2000 - last) as usize, WAIT).await;
    assert_eq!(offsets(&got), (last + 1..=2000).collect::<Vec<_>>());
}

/// PROTOCOL §4: a backend may publish to a durable channel by running Herald's publish
/// script itself. Its message takes the channel's next offset, between publishes made
/// through a node, and is in the history like theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_running_the_publish_script_shares_the_channels_offsets() {
    let redis = Redis::start();
    let node = start(durable_config(Some(&redis), "a")).await;
    let mut c = Client::connect(node.addr).await;
    c.subscribe("news:direct").await;
    let (s, first) = publish_http(
        node.addr,
        json!({"channel": "news:direct", "data": "first"}),
    )
    .await;
    assert_eq!(s, 200, "{first}");

    let sha = redis.cli(&[
        "SCRIPT",
        "LOAD",
        include_str!("../src/backplane/publish.lua"),
    ]);
    let out = redis.cli(&[
        "EVALSHA",
        sha.trim(),
        "3",
        "herald:{news:direct}:meta",
        "herald:{news:direct}:stream",
        "herald:{news:direct}:ch",
        r#"{"type":"message","channel":"news:direct","data":"second""#,
        "5000",
        "3600",
        "an-epoch-for-a-new-channel-only",
    ]);
    let reply: Vec<&str> = out.lines().collect();
    assert_eq!(
        reply,
        ["ok", first["epoch"].as_str().unwrap(), "2"],
        "{out}"
    );

    let (s, third) = publish_http(
        node.addr,
        json!({"channel": "news:direct", "data": "third"}),
    )
    .await;
    assert_eq!(s, 200, "{third}");
    assert_eq!(third["offset"], 3);

    let got = c.messages(3, WAIT).await;
    assert_eq!(offsets(&got), [1, 2, 3]);
    let data: Vec<&Value> = got.iter().map(|m| &m["data"]).collect();
    assert_eq!(data, [&json!("first"), &json!("second"), &json!("third")]);
    assert!(got.iter().all(|m| m["epoch"] == first["epoch"]), "{got:?}");

    let history = c
        .request(json!({"op": "history", "channel": "news:direct", "since": {"epoch": first["epoch"], "offset": 1}}))
        .await;
    let entries = history["result"]["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(offsets(&entries), [2, 3], "{history}");
    assert_eq!(entries[0]["data"], "second");
}
