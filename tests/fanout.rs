//! Fan-out across nodes: every subscriber gets every message once, in order; the
//! subscribe barrier; interest-based Redis subscriptions.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_every_message_once_in_order() {
    let redis = Redis::start();
    let nodes = [
        start(config(Some(&redis), "a")).await,
        start(config(Some(&redis), "b")).await,
        start(config(Some(&redis), "c")).await,
    ];
    let mut clients = Vec::new();
    for node in &nodes {
        for _ in 0..2 {
            let mut c = Client::connect(node.addr).await;
            c.subscribe("news").await;
            clients.push(c);
        }
    }
    // 30 publishes over HTTP, round-robin over the nodes, each awaited: a total order.
    for i in 0..30 {
        let (status, _) =
            publish_http(nodes[i % 3].addr, json!({"channel": "news", "data": i})).await;
        assert_eq!(status, 200);
    }
    // And 10 over WebSocket from a client on node b.
    let mut publisher = Client::connect(nodes[1].addr).await;
    for i in 30..40 {
        let r = publisher.publish("news", json!(i)).await;
        assert_eq!(r["result"], json!({}), "{r}");
    }
    for c in &mut clients {
        let got = c.messages(40, Duration::from_secs(10)).await;
        assert_eq!(numbers(&got), (0..40).collect::<Vec<_>>());
        assert!(
            c.next_message(Duration::from_millis(200)).await.is_none(),
            "a duplicate arrived"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_is_a_barrier_across_nodes() {
    let redis = Redis::start();
    let a = start(config(Some(&redis), "a")).await;
    let b = start(config(Some(&redis), "b")).await;
    let mut client = Client::connect(a.addr).await;
    for round in 0..200 {
        let channel = format!("barrier:{round}");
        client.subscribe(&channel).await;
        let (status, _) = publish_http(b.addr, json!({"channel": channel, "data": round})).await;
        assert_eq!(status, 200);
        let m = client
            .next_message(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| {
                panic!("round {round}: the message published after the subscribe reply was lost")
            });
        assert_eq!(m["channel"], json!(channel));
        assert_eq!(m["data"], json!(round));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_subscriptions_follow_local_interest() {
    let redis = Redis::start();
    let a = start(config(Some(&redis), "a")).await;
    let b = start(config(Some(&redis), "b")).await;
    let channels = |r: &Redis| {
        let mut v: Vec<String> = r
            .cli(&["PUBSUB", "CHANNELS", "herald:{*"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        v.sort();
        v
    };
    assert!(channels(&redis).is_empty());

    let mut c1 = Client::connect(a.addr).await;
    c1.subscribe("x").await;
    let mut c2 = Client::connect(b.addr).await;
    c2.subscribe("y").await;
    c2.subscribe("x").await;
    assert_eq!(channels(&redis), vec!["herald:{x}:ch", "herald:{y}:ch"]);

    // Unsubscribing y on b drops it; x stays while a subscriber remains anywhere.
    let r = c2
        .request(json!({"op": "unsubscribe", "channel": "y"}))
        .await;
    assert_eq!(r["result"], json!({}));
    assert!(
        eventually(Duration::from_secs(5), || async {
            channels(&redis) == vec!["herald:{x}:ch"]
        })
        .await
    );

    // A disconnect counts as leaving.
    c1.close().await;
    c2.close().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            channels(&redis).is_empty()
        })
        .await,
        "{:?}",
        channels(&redis)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backplane_fans_out_in_order() {
    let node = start(config(None, "solo")).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(node.addr).await;
        c.subscribe("room").await;
        clients.push(c);
    }
    let mut publisher = Client::connect(node.addr).await;
    for i in 0..50 {
        if i % 2 == 0 {
            publisher.publish("room", json!(i)).await;
        } else {
            publish_http(node.addr, json!({"channel": "room", "data": i})).await;
        }
    }
    for c in &mut clients {
        assert_eq!(
            numbers(&c.messages(50, Duration::from_secs(5)).await),
            (0..50).collect::<Vec<_>>()
        );
    }
    // Subscribing twice changes nothing: no duplicate deliveries.
    clients[0].subscribe("room").await;
    publish_http(node.addr, json!({"channel": "room", "data": 99})).await;
    assert_eq!(
        numbers(&clients[0].messages(1, Duration::from_secs(5)).await),
        vec![99]
    );
    assert!(
        clients[0]
            .next_message(Duration::from_millis(200))
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_many_channels_over_http() {
    let node = start(config(None, "solo")).await;
    let mut c = Client::connect(node.addr).await;
    c.subscribe("a").await;
    c.subscribe("b").await;
    let (status, body) =
        publish_http(node.addr, json!({"channels": ["a", "b"], "data": {"k": 1}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"], json!([{"channel": "a"}, {"channel": "b"}]));
    let got = c.messages(2, Duration::from_secs(5)).await;
    assert_eq!(got[0]["channel"], "a");
    assert_eq!(got[1]["channel"], "b");
    // Validated as a whole: one bad name publishes nothing.
    let (status, _) =
        publish_http(node.addr, json!({"channels": ["a", "bad name"], "data": 1})).await;
    assert_eq!(status, 400);
    assert!(c.next_message(Duration::from_millis(200)).await.is_none());
}

/// The `channels` form publishes distinct channels concurrently (PROTOCOL §3): on Redis,
/// with plain and durable channels mixed, every result is still the one of its own
/// entry, in request order, and the subscriber on the other node gets each message
/// once. A channel listed twice gets its two messages in request order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_many_channels_on_redis_keeps_each_result_in_place() {
    let redis = Redis::start();
    let toml = "[namespaces.log]\nhistory_size = 100\npublish = \"anyone\"\n";
    let a = start(config_from_toml(Some(&redis), "a", toml)).await;
    let b = start(config_from_toml(Some(&redis), "b", toml)).await;
    let names: Vec<String> = (0..40)
        .map(|i| {
            if i % 2 == 0 {
                format!("p{i}")
            } else {
                format!("log:d{i}")
            }
        })
        .collect();
    // Durable channel log:d{i} holds i / 2 messages first, so that every durable
    // result has its own offset: a result in the wrong place would show.
    for i in (1..40).step_by(2) {
        for _ in 0..i / 2 {
            let (status, _) =
                publish_http(a.addr, json!({"channel": format!("log:d{i}"), "data": 0})).await;
            assert_eq!(status, 200);
        }
    }
    let mut c = Client::connect(b.addr).await;
    for name in &names {
        c.subscribe(name).await;
    }
    let (status, body) = publish_http(a.addr, json!({"channels": names, "data": 1})).await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 40);
    for (i, (name, r)) in names.iter().zip(results).enumerate() {
        assert_eq!(r["channel"], json!(name), "{body}");
        if name.starts_with("log:") {
            assert_eq!(r["offset"], json!(i / 2 + 1), "{name}: {r}");
        } else {
            assert!(r.get("offset").is_none(), "{name}: {r}");
        }
    }
    let got = c.messages(40, Duration::from_secs(10)).await;
    let channels: std::collections::BTreeSet<&str> =
        got.iter().filter_map(|m| m["channel"].as_str()).collect();
    assert_eq!(channels.len(), 40, "{got:?}");

    // With the scripts flushed, each durable publish first fails NOSCRIPT and is
    // retried after loading it: the slow path where a repeat could overtake.
    redis.cli(&["SCRIPT", "FLUSH"]);
    let twice = json!({"channels": ["log:d1", "p0", "log:d1"], "data": 2});
    let (status, body) = publish_http(a.addr, twice).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["offset"], json!(2), "{body}");
    assert_eq!(body["results"][2]["offset"], json!(3), "{body}");
    let got = c.messages(3, Duration::from_secs(10)).await;
    let d1: Vec<&Value> = got.iter().filter(|m| m["channel"] == "log:d1").collect();
    assert_eq!(d1.len(), 2, "{got:?}");
    assert_eq!(
        (d1[0]["offset"].clone(), d1[1]["offset"].clone()),
        (json!(2), json!(3))
    );
    assert!(c.next_message(Duration::from_millis(200)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_coalescing_keeps_every_message_in_order_across_nodes() {
    let redis = Redis::start();
    let coalescing = |id| {
        let mut c = config(Some(&redis), id);
        c.limits.write_coalesce = Duration::from_millis(20);
        c
    };
    let a = start(coalescing("a")).await;
    let b = start(coalescing("b")).await;
    let mut clients = Vec::new();
    for node in [&a, &b, &a, &b] {
        let mut c = Client::connect(node.addr).await;
        c.subscribe("ticks").await;
        c.subscribe("other").await;
        clients.push(c);
    }
    let mut publisher = Client::connect(a.addr).await;
    for i in 0..200 {
        // Two channels interleaved: one socket's frames of both share the ticks.
        let channel = if i % 2 == 0 { "ticks" } else { "other" };
        publisher.publish(channel, json!(i)).await;
    }
    // Each channel's order is kept (PROTOCOL §2.2, guarantee 2); a tick batches each
    // channel's frames, so the two channels' frames need not interleave as published.
    for c in &mut clients {
        let got = c.messages(200, Duration::from_secs(10)).await;
        for (channel, parity) in [("ticks", 0), ("other", 1)] {
            let of_channel: Vec<Value> = got
                .iter()
                .filter(|m| m["channel"] == channel)
                .cloned()
                .collect();
            assert_eq!(
                numbers(&of_channel),
                (0..200).filter(|i| i % 2 == parity).collect::<Vec<_>>()
            );
        }
    }
}
