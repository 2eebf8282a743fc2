//! Hardening of the Redis backplane against what a backend (or an attacker with Redis
//! access) writes straight into it, and of the node's stop against a Redis that stops
//! answering:
//! - a flood of invalid payloads is counted one by one but logged rarely (issue 26.5);
//! - a payload above `limits.max_backplane_frame_bytes` reaches no subscriber and is
//!   counted (issue 26.10, PROTOCOL §4);
//! - a node whose Redis hangs still exits within its drain plus the stop bound
//!   (issue 27.5, README "Operations").

mod support;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Captured log lines that contain `needle`.
fn lines_with(logs: &Mutex<Vec<u8>>, needle: &str) -> usize {
    let text = captured_text(logs);
    text.lines().filter(|l| l.contains(needle)).count()
}

/// A raw RESP connection to the test's Redis, as a backend would publish: many
/// `PUBLISH` commands written at once, then their replies read.
struct RawRedis(TcpStream);

impl RawRedis {
    async fn connect(redis: &Redis) -> RawRedis {
        RawRedis(
            TcpStream::connect(("127.0.0.1", redis.port))
                .await
                .expect("connect to the test redis"),
        )
    }

    /// PUBLISHes every payload to `channel`, pipelined; returns the receivers each had.
    async fn publish_all(&mut self, channel: &str, payloads: &[Vec<u8>]) -> Vec<i64> {
        let mut out = Vec::new();
        for p in payloads {
            out.extend_from_slice(b"*3\r\n$7\r\nPUBLISH\r\n");
            out.extend_from_slice(format!("${}\r\n{channel}\r\n", channel.len()).as_bytes());
            out.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
            out.extend_from_slice(p);
            out.extend_from_slice(b"\r\n");
        }
        self.0.write_all(&out).await.expect("write to redis");
        // Each reply is one integer line, ":N\r\n".
        let mut replies = Vec::new();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while replies.len() < payloads.len() {
            let n = tokio::time::timeout(WAIT, self.0.read(&mut chunk))
                .await
                .expect("redis replies in time")
                .expect("read from redis");
            assert!(n > 0, "redis closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            while let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&line[..end]).into_owned();
                let n = text
                    .strip_prefix(':')
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("unexpected redis reply {text:?}"));
                replies.push(n);
            }
        }
        replies
    }
}

const FLOOD: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_invalid_payloads_is_counted_but_logged_rarely() {
    let logs = captured_logs();
    let redis = Redis::start();
    let node = start(config(Some(&redis), "flooded")).await;
    let mut client = Client::connect(node.addr).await;
    client.subscribe("flood").await;

    // Invalid in each way the node checks: not JSON, the wrong channel, no data, and
    // one far longer reason (a huge channel member) that must not be logged whole.
    // 10 KB: far over a log line, while the flood's 500 such payloads (5 MB) stay
    // under Redis's pub/sub output-buffer limits (8 MB soft, 32 MB hard), which would
    // otherwise drop the node's subscriber connection when it reads slowly.
    let long_channel = "x".repeat(10_000);
    let payloads: Vec<Vec<u8>> = (0..FLOOD)
        .map(|i| match i % 4 {
            0 => format!("garbage {i}").into_bytes(),
            1 => format!(r#"{{"type":"message","channel":"other","data":{i}}}"#).into_bytes(),
            2 => br#"{"type":"message","channel":"flood"}"#.to_vec(),
            _ => {
                format!(r#"{{"type":"message","channel":"{long_channel}","data":1}}"#).into_bytes()
            }
        })
        .collect();
    let mut raw = RawRedis::connect(&redis).await;
    let receivers = raw.publish_all("herald:{flood}:ch", &payloads).await;
    assert!(
        receivers.iter().all(|&n| n == 1),
        "the node is subscribed in Redis"
    );

    // Every one of them is counted …
    let counted = eventually(WAIT, || async {
        metric_of(node.addr, "herald_backplane_invalid_payloads_total").await >= FLOOD as f64
    })
    .await;
    let invalid = metric_of(node.addr, "herald_backplane_invalid_payloads_total").await;
    assert!(counted, "counted {invalid} of {FLOOD} invalid payloads");
    assert_eq!(invalid, FLOOD as f64);
    // … none reaches the subscriber, and a valid message still does.
    raw.publish_all(
        "herald:{flood}:ch",
        &[br#"{"type":"message","channel":"flood","data":"ok"}"#.to_vec()],
    )
    .await;
    let m = client.next_message(WAIT).await.expect("the valid message");
    assert_eq!(m["data"], "ok");

    // … but only the first is logged in full, and the rest wait for the summary of
    // the interval: a handful of lines, not one per payload.
    let lines = lines_with(&logs, "backplane payload");
    eprintln!("{lines} WARN lines for {FLOOD} invalid payloads");
    assert!(
        (1..=3).contains(&lines),
        "{lines} WARN lines about invalid payloads for {FLOOD} of them"
    );
    let longest = String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner()))
        .lines()
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(longest < 4_096, "a log line of {longest} bytes");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_above_the_backplane_limit_reaches_no_subscriber() {
    let redis = Redis::start();
    let node = start(config(Some(&redis), "big")).await;
    let mut client = Client::connect(node.addr).await;
    client.subscribe("big").await;

    // A valid frame of 2 MB, over the default limit (1 MiB), then a normal one.
    let huge = "x".repeat(2 * 1024 * 1024);
    let big = json!({"type": "message", "channel": "big", "data": huge}).to_string();
    let small = json!({"type": "message", "channel": "big", "data": "small"}).to_string();
    let mut raw = RawRedis::connect(&redis).await;
    let receivers = raw
        .publish_all("herald:{big}:ch", &[big.into_bytes(), small.into_bytes()])
        .await;
    assert_eq!(receivers, vec![1, 1], "the node is subscribed in Redis");

    let m = client.next_message(WAIT).await.expect("a message");
    // Not assert_eq: a failure must not print two megabytes.
    assert!(
        m["data"] == "small",
        "the first message delivered must be the small one, got {} bytes of data",
        m["data"].as_str().map_or(0, str::len)
    );
    assert_eq!(
        metric_of(node.addr, "herald_backplane_oversized_payloads_total").await,
        1.0
    );
    // Oversized is its own count, not an invalid payload.
    assert_eq!(
        metric_of(node.addr, "herald_backplane_invalid_payloads_total").await,
        0.0
    );
    // The node channel (PROTOCOL §4) has the same limit.
    let huge = vec![b'{'; 2 * 1024 * 1024];
    let receivers = raw.publish_all("herald:node:{big}", &[huge]).await;
    assert_eq!(receivers, vec![1], "the node listens on its node channel");
    assert!(
        eventually(WAIT, || async {
            metric_of(node.addr, "herald_backplane_oversized_payloads_total").await == 2.0
        })
        .await,
        "an oversized node message was not dropped as oversized"
    );
    node.stop().await;
}

#[test]
fn the_backplane_frame_limit_is_never_below_what_a_client_may_publish() {
    use herald::config::Config;
    let limit = |toml: &str| Config::from_toml(toml).map(|c| c.limits.backplane_frame_bytes());
    assert_eq!(limit("").expect("defaults"), 1 << 20);
    assert_eq!(
        limit("[limits]\nmax_backplane_frame_bytes = 4194304").expect("explicit"),
        4 << 20
    );
    // Raising a client limit raises the default with it: a publish the node accepts
    // always fits the frame it becomes.
    assert_eq!(
        limit("[limits]\nmax_body_bytes = 2097152").expect("bigger bodies"),
        (2 << 20) + 1024
    );
    assert_eq!(
        limit("[limits]\nmax_frame_bytes = 3145728").expect("bigger frames"),
        (3 << 20) + 1024
    );
    // An explicit limit below them is refused at start-up, naming the key.
    let err = limit("[limits]\nmax_body_bytes = 2097152\nmax_backplane_frame_bytes = 1048576")
        .expect_err("below max_body_bytes");
    assert_eq!(err.key, "limits.max_backplane_frame_bytes");
    assert!(err.reason.contains("2098176"), "{}", err.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_http_publish_is_never_too_large_for_the_backplane() {
    // Bodies of up to 2 MiB accepted, no backplane limit configured: the limit in force
    // follows, and the largest body the API takes is delivered.
    let redis = Redis::start();
    let node = start(config_from_toml(
        Some(&redis),
        "bodies",
        "[limits]\nmax_body_bytes = 2097152\n",
    ))
    .await;
    let mut client = Client::connect(node.addr).await;
    client.subscribe("large").await;
    let envelope = json!({"channel": "large", "data": ""}).to_string().len();
    let data = "y".repeat(2 * 1024 * 1024 - envelope);
    let body = json!({"channel": "large", "data": data});
    assert_eq!(body.to_string().len(), 2 * 1024 * 1024);
    let (status, reply) = publish_http(node.addr, body).await;
    assert_eq!(status, 200, "{reply}");
    let m = client.next_message(WAIT).await.expect("the large message");
    assert!(
        m["data"].as_str().map(str::len) == Some(data.len()),
        "got {} bytes of data",
        m["data"].as_str().map_or(0, str::len)
    );
    assert_eq!(
        metric_of(node.addr, "herald_backplane_oversized_payloads_total").await,
        0.0
    );
    node.stop().await;
}

/// The pid of a test Redis (tests/support keeps its child private).
fn redis_pid(redis: &Redis) -> u32 {
    redis
        .cli(&["INFO", "server"])
        .lines()
        .find_map(|l| l.trim().strip_prefix("process_id:")?.parse().ok())
        .expect("process_id in INFO server")
}

/// Stops (SIGSTOP) a process and continues it again when dropped: a Redis that hangs
/// with its connections open, as under a long fork or a frozen VM.
struct Frozen(u32);

impl Frozen {
    fn new(pid: u32) -> Frozen {
        let ok = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "SIGSTOP {pid}");
        // The signal is delivered asynchronously: wait until the process is stopped.
        let deadline = Instant::now() + WAIT;
        while !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        }) {
            assert!(Instant::now() < deadline, "{pid} did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// The drain period of the node below: none, so that what is measured is the stop.
const DRAIN: Duration = Duration::ZERO;
/// The longest a node may wait for Redis to acknowledge `QUIT` (README "Operations").
const QUIT_BOUND: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_redis_hangs_stops_within_drain_and_bound() {
    let redis = Redis::start();
    let mut node = NodeProcess::spawn(&[
        "--redis",
        &redis.url(),
        "--drain-period",
        "0s",
        "--node-id",
        "frozen",
    ])
    .await;
    let mut client = Client::connect(node.addr).await;
    client.subscribe("room").await;
    let (status, _) = publish_http(node.addr, json!({"channel": "room", "data": 1})).await;
    assert_eq!(status, 200);
    assert_eq!(
        client.next_message(WAIT).await.expect("delivered")["data"],
        1
    );

    let frozen = Frozen::new(redis_pid(&redis));
    // Load at the moment Redis hangs: publishes whose commands are written but never
    // answered. Their HTTP clients hang up, so no request holds the stop; the commands
    // stay in flight, and fred's `QUIT` waits for them (for its 3 s command timeout).
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("http client");
    let publishes: Vec<_> = (0..20)
        .map(|i| {
            let request = impatient
                .post(format!("http://{}/api/publish", node.addr))
                .json(&json!({"channel": "room", "data": i}));
            tokio::spawn(async move { request.send().await.is_err_and(|e| e.is_timeout()) })
        })
        .collect();
    for p in publishes {
        assert!(
            p.await.expect("publish task"),
            "a publish to a hung Redis should hang"
        );
    }

    // The client answers the drain's close at once, as a browser does (a client that
    // never reads would hold its session for the close handshake's own timeout).
    let closed = tokio::spawn(async move { client.closed(WAIT).await });
    let signalled = Instant::now();
    node.signal("-TERM");
    let code = node.exit_code(Duration::from_secs(30)).await;
    let took = signalled.elapsed();
    drop(frozen);
    assert_eq!(code, Some(Some(0)), "exit after {took:?}");
    assert_eq!(closed.await.expect("client task"), Some(Closed::Code(1001)));
    // Nothing else is slow here (one session, no presence, no ingest, no open request):
    // only the goodbye to Redis can hold the stop, and it is cut at QUIT_BOUND.
    let slack = Duration::from_millis(600);
    assert!(
        took <= DRAIN + QUIT_BOUND + slack,
        "stopped {took:?} after SIGTERM; drain {DRAIN:?} + quit bound {QUIT_BOUND:?} + {slack:?}"
    );
}

/// The subscribe barrier (PROTOCOL §2.2) holds on Redis: a `subscribe` is answered only
/// once Redis has run the SUBSCRIBE. fred answers a SUBSCRIBE as soon as it is written,
/// so a frozen Redis used to get a success reply at once, and a publish racing that
/// reply could miss the new subscriber.
#[tokio::test]
async fn a_subscribe_is_answered_only_once_redis_has_run_it() {
    let redis = Redis::start();
    let node = start(config(Some(&redis), "barrier")).await;
    let mut client = Client::connect(node.addr).await;
    // The channel is new to the node, so its subscribe must reach Redis.
    let answered = {
        let _frozen = Frozen::new(redis_pid(&redis));
        client
            .send_text(r#"{"id":7,"op":"subscribe","channel":"fresh"}"#)
            .await;
        client.next_frame(Duration::from_millis(1500)).await
    };
    if let Some(reply) = &answered {
        assert!(
            reply.get("result").is_none(),
            "subscribe confirmed while Redis was frozen: {reply}"
        );
    }
    // Once Redis runs again the barrier works as before: subscribe, publish, deliver.
    let reply = match answered {
        Some(reply) => reply,
        None => client.reply_to(7).await,
    };
    if reply.get("result").is_none() {
        assert_eq!(reply["error"]["code"], "unavailable", "{reply}");
        client.subscribe("fresh").await;
    }
    let status = http()
        .post(format!("http://{}/api/publish", node.addr))
        .json(&json!({"channel": "fresh", "data": 1}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    assert_eq!(numbers(&client.messages(1, WAIT).await), vec![1]);
    node.stop().await;
}
