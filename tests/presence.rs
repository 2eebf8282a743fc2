//! Presence and join/leave across the fleet: events in order with messages, crashed
//! nodes' sessions swept with exactly one leave each, distinct-user counts, rebuild
//! after Redis loses everything, and the namespace rules.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use support::*;

const SECRET: &str = "presence-secret-presence-secret-!!";
const CONFIG: &str = r#"
[auth]
jwt_hs256_secret = "presence-secret-presence-secret-!!"
require_token = false

[limits]
messages_per_sec = 100000
new_connections_per_sec = 100000

[namespaces.room]
publish = "anyone"
presence = true
join_leave = true
presence_ttl = "3s"

[namespaces.quiet]
publish = "anyone"
presence = true
presence_read = "authenticated"

[namespaces.dur]
publish = "anyone"
history_size = 100
presence = true
join_leave = true
"#;

fn token(user: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": user, "exp": exp, "info": {"name": user}}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn connect_as(addr: std::net::SocketAddr, user: &str) -> Client {
    Client::connect_path(addr, &format!("/ws?token={}", token(user)))
        .await
        .unwrap()
}

fn sessions(v: &Value) -> Vec<String> {
    let mut s: Vec<String> = v["result"]["clients"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|c| c["session"].as_str().unwrap().to_string())
        .collect();
    s.sort();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_leaves_arrive_in_order_with_messages() {
    let redis = Redis::start();
    let nodes = [
        start(config_from_toml(Some(&redis), "a", CONFIG)).await,
        start(config_from_toml(Some(&redis), "b", CONFIG)).await,
        start(config_from_toml(Some(&redis), "c", CONFIG)).await,
    ];
    let mut watcher = connect_as(nodes[0].addr, "watcher").await;
    watcher.subscribe("room:1").await;
    let own = watcher.next_frame(WAIT).await.unwrap();
    assert_eq!(own["type"], "join", "a session sees its own join: {own}");
    assert_eq!(own["client"]["user"], "watcher");
    assert_eq!(own["client"]["info"], json!({"name": "watcher"}));

    // One session joins on each node, a message follows each join, then each leaves.
    let mut expected = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let user = format!("u{i}");
        let mut c = connect_as(node.addr, &user).await;
        c.subscribe("room:1").await;
        let session = c.welcome["session"].as_str().unwrap().to_string();
        expected.push(format!("join {session}"));
        publish_http(
            nodes[(i + 1) % 3].addr,
            json!({"channel": "room:1", "data": i}),
        )
        .await;
        expected.push(format!("message {i}"));
        let r = c
            .request(json!({"op": "unsubscribe", "channel": "room:1"}))
            .await;
        assert_eq!(r["result"], json!({}));
        expected.push(format!("leave {session}"));
        publish_http(nodes[i].addr, json!({"channel": "room:1", "data": i + 10})).await;
        expected.push(format!("message {}", i + 10));
    }
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        let f = watcher.next_frame(WAIT).await.expect("every event arrives");
        match f["type"].as_str().unwrap() {
            "join" | "leave" => {
                assert!(f.get("offset").is_none());
                seen.push(format!(
                    "{} {}",
                    f["type"].as_str().unwrap(),
                    f["client"]["session"].as_str().unwrap()
                ));
            }
            "message" => seen.push(format!("message {}", f["data"])),
            other => panic!("unexpected {other}: {f}"),
        }
    }
    assert_eq!(seen, expected);
    assert!(
        watcher
            .next_frame(Duration::from_millis(300))
            .await
            .is_none(),
        "no duplicate events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_nodes_sessions_leave_exactly_once() {
    let redis = Redis::start();
    let dir = std::env::temp_dir().join(format!("herald-presence-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("herald.toml");
    std::fs::write(&file, CONFIG).unwrap();
    let url = redis.url();
    let args = ["--redis", url.as_str(), "--config", file.to_str().unwrap()];
    let survivor_a = NodeProcess::spawn(&args).await;
    let survivor_b = NodeProcess::spawn(&args).await;
    let doomed = NodeProcess::spawn(&args).await;

    let mut watchers = vec![
        connect_as(survivor_a.addr, "w1").await,
        connect_as(survivor_b.addr, "w2").await,
    ];
    for w in &mut watchers {
        w.subscribe("room:crash").await;
    }
    let mut victims = Vec::new();
    for i in 0..50 {
        let mut c = connect_as(doomed.addr, &format!("v{i}")).await;
        c.subscribe("room:crash").await;
        victims.push(c);
    }
    let doomed_sessions: Vec<String> = victims
        .iter()
        .map(|c| c.welcome["session"].as_str().unwrap().to_string())
        .collect();
    let r = watchers[0]
        .request(json!({"op": "presence", "channel": "room:crash"}))
        .await;
    assert_eq!(sessions(&r).len(), 52);

    doomed.signal("-KILL");
    let killed = Instant::now();
    // Within presence_ttl (3 s) plus slack, nobody lists them any more.
    assert!(
        eventually(Duration::from_secs(8), || {
            let addr = survivor_b.addr;
            async move {
                let v: Value = http()
                    .get(format!("http://{addr}/api/channels/room:crash/presence"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                v["clients"].as_array().map(|a| a.len()) == Some(2)
            }
        })
        .await,
        "crashed sessions still listed"
    );
    println!(
        "crashed sessions left presence after {:?}",
        killed.elapsed()
    );
    // Every remaining subscriber got exactly one leave per crashed session.
    for w in &mut watchers {
        let mut leaves: HashMap<String, u32> = HashMap::new();
        while let Some(f) = w.next_frame(Duration::from_secs(2)).await {
            if f["type"] == "leave" {
                *leaves
                    .entry(f["client"]["session"].as_str().unwrap().into())
                    .or_default() += 1;
            }
        }
        for s in &doomed_sessions {
            assert_eq!(leaves.get(s), Some(&1), "session {s}: leaves {leaves:?}");
        }
    }
    // Nothing lingers: only the two survivors' watchers remain in Redis.
    assert_eq!(
        redis.cli(&["HLEN", "herald:{room:crash}:presence"]).trim(),
        "2"
    );
    assert_eq!(
        redis
            .cli(&["ZCARD", "herald:{room:crash}:presence:exp"])
            .trim(),
        "2"
    );
    assert_eq!(
        redis
            .cli(&["HLEN", "herald:{room:crash}:presence:users"])
            .trim(),
        "2"
    );
    let _ = std::fs::remove_dir_all(dir);
}

async fn one_user_two_sessions(redis: Option<&Redis>) {
    let a = start(config_from_toml(redis, "a", CONFIG)).await;
    let mut s1 = connect_as(a.addr, "ada").await;
    let mut s2 = connect_as(a.addr, "ada").await;
    let mut anon = Client::connect(a.addr).await;
    s1.subscribe("room:u").await;
    s2.subscribe("room:u").await;
    anon.subscribe("room:u").await;
    let r = s1
        .request(json!({"op": "presence_stats", "channel": "room:u"}))
        .await;
    assert_eq!(
        r["result"],
        json!({"clients": 3, "users": 1}),
        "anonymous sessions have no user"
    );
    s2.close().await;
    let ok = eventually(WAIT, || {
        let addr = a.addr;
        async move {
            let v: Value = http()
                .get(format!("http://{addr}/api/channels/room:u/presence_stats"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v == json!({"clients": 2, "users": 1})
        }
    })
    .await;
    assert!(ok, "one session of two left: users stays 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_users_redis() {
    let redis = Redis::start();
    one_user_two_sessions(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_users_memory() {
    one_user_two_sessions(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_rebuilt_after_redis_restarts_empty() {
    let mut redis = Redis::start();
    let a = start(config_from_toml(Some(&redis), "a", CONFIG)).await;
    let b = start(config_from_toml(Some(&redis), "b", CONFIG)).await;
    let mut c1 = connect_as(a.addr, "x").await;
    let mut c2 = connect_as(b.addr, "y").await;
    c1.subscribe("room:r").await;
    c2.subscribe("room:r").await;
    redis.restart();
    wait_ready(a.addr).await;
    wait_ready(b.addr).await;
    let back = Instant::now();
    // Refresh interval: presence_ttl / 3 = 1 s, plus the node's one-second tick.
    assert!(
        eventually(Duration::from_secs(3), || async {
            redis.cli(&["HLEN", "herald:{room:r}:presence"]).trim() == "2"
        })
        .await,
        "presence not rebuilt"
    );
    println!(
        "presence rebuilt {:?} after the nodes were ready",
        back.elapsed()
    );
    // Right after a restart a request may still meet `unavailable` while the
    // command connection comes back; the answer must settle on the rebuilt state.
    let mut last = Value::Null;
    for _ in 0..50 {
        last = c1
            .request(json!({"op": "presence_stats", "channel": "room:r"}))
            .await;
        if last["result"] == json!({"clients": 2, "users": 2}) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("presence_stats after the rebuild: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_absence_from_history() {
    let redis = Redis::start();
    let a = start(config_from_toml(Some(&redis), "a", CONFIG)).await;
    let mut anon = Client::connect(a.addr).await;
    anon.subscribe("quiet:1").await;
    let r = anon
        .request(json!({"op": "presence", "channel": "quiet:1"}))
        .await;
    assert_eq!(r["error"]["code"], "forbidden");
    let mut user = connect_as(a.addr, "u").await;
    let r = user
        .request(json!({"op": "presence", "channel": "quiet:1"}))
        .await;
    assert_eq!(sessions(&r).len(), 1);
    // quiet has presence but no join_leave: no events.
    user.subscribe("quiet:1").await;
    publish_http(a.addr, json!({"channel": "quiet:1", "data": 1})).await;
    let f = anon.next_frame(WAIT).await.unwrap();
    assert_eq!(
        f["type"], "message",
        "no join event where join_leave is off: {f}"
    );
    // A plain namespace has no presence at all.
    let r = user
        .request(json!({"op": "presence", "channel": "plain"}))
        .await;
    assert_eq!(r["error"]["code"], "bad_request");

    // Durable with join_leave: events are delivered but never in history.
    let mut d = Client::connect(a.addr).await;
    d.subscribe("dur:1").await;
    publish_http(a.addr, json!({"channel": "dur:1", "data": "m"})).await;
    let mut other = connect_as(a.addr, "o").await;
    other.subscribe("dur:1").await;
    let mut kinds = Vec::new();
    while let Some(f) = d.next_frame(Duration::from_millis(500)).await {
        kinds.push(f["type"].as_str().unwrap().to_string());
    }
    assert_eq!(kinds, vec!["join", "message", "join"]);
    let r = d
        .request(json!({"op": "history", "channel": "dur:1"}))
        .await;
    let msgs = r["result"]["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["data"], "m");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_channels_stay_cheap() {
    let redis = Redis::start();
    let mut cfg = config_from_toml(Some(&redis), "a", CONFIG);
    cfg.limits.max_presence = 100;
    let a = start(cfg).await;
    let mut clients = Vec::new();
    for _ in 0..300 {
        let mut c = Client::connect(a.addr).await;
        let r = c
            .request(json!({"op": "subscribe", "channel": "quiet:big"}))
            .await;
        assert!(r.get("result").is_some());
        clients.push(c);
    }
    let mut probe = connect_as(a.addr, "p").await;
    let r = probe
        .request(json!({"op": "presence", "channel": "quiet:big"}))
        .await;
    assert_eq!(r["error"]["code"], "limit_exceeded", "{r}");
    let started = Instant::now();
    let r = probe
        .request(json!({"op": "presence_stats", "channel": "quiet:big"}))
        .await;
    assert_eq!(r["result"]["clients"], 300);
    assert!(started.elapsed() < Duration::from_millis(500));
    // One refresh call per channel per interval, not one per session: with 300
    // sessions on one channel, a few calls at most after several seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = http()
        .get(format!("http://{}/metrics", a.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refreshes = metric_in(&metrics, "herald_presence_refreshes_total").expect("refresh metric");
    assert!(
        (1.0..20.0).contains(&refreshes),
        "refresh calls: {refreshes}"
    );
}
