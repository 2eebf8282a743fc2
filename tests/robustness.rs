//! Robustness: hostile or broken input from clients, HTTP callers and the backplane
//! gets the documented answer (PROTOCOL §2.2, §2.3, §2.4, §3, §4) and never disturbs
//! anyone else; slow consumers are cut off with 4008; counted limits; /metrics.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

// ---- helpers of this file -----------------------------------------------------------

/// One HTTP client for many requests (support::http() builds a new one per call).
fn shared_http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(4)
        .build()
        .unwrap()
}

async fn post_publish(http: &reqwest::Client, addr: SocketAddr, body: &Value) -> (u16, Value) {
    let r = http
        .post(format!("http://{addr}/api/publish"))
        .json(body)
        .send()
        .await
        .expect("http publish");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Waits until a metric has the wanted value; panics with the last value otherwise.
async fn expect_metric(addr: SocketAddr, name: &str, want: f64) {
    let mut last = f64::NAN;
    for _ in 0..200 {
        last = metric_of(addr, name).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{name} is {last}, expected {want}");
}

/// A WebSocket client that keeps the raw text of frames (byte-for-byte checks) and
/// lets the test decide when, or whether, to read.
struct RawClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> RawClient {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("upgrade");
        let mut c = RawClient { ws };
        let welcome = c.next_text(WAIT).await.expect("welcome");
        assert!(welcome.contains("\"welcome\""), "{welcome}");
        c
    }

    /// The next text frame; None on timeout, close or error.
    async fn next_text(&mut self, limit: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return Some(t.as_str().to_owned()),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                _ => return None,
            }
        }
    }

    async fn subscribe(&mut self, channel: &str) {
        self.ws
            .send(Message::Text(
                json!({"id": 1, "op": "subscribe", "channel": channel})
                    .to_string()
                    .into(),
            ))
            .await
            .expect("send subscribe");
        let reply = self.next_text(WAIT).await.expect("subscribe reply");
        let v: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(v, json!({"type": "reply", "id": 1, "result": {}}));
    }
}

/// `PUBLISH channel payload` spoken in RESP, so that any bytes can be published.
/// Returns the number of Redis subscribers that received it.
async fn redis_publish_raw(redis: &Redis, channel: &str, payload: &[u8]) -> i64 {
    let mut cmd = Vec::new();
    cmd.extend_from_slice(b"*3\r\n$7\r\nPUBLISH\r\n");
    for arg in [channel.as_bytes(), payload] {
        cmd.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        cmd.extend_from_slice(arg);
        cmd.extend_from_slice(b"\r\n");
    }
    let mut s = TcpStream::connect(("127.0.0.1", redis.port))
        .await
        .expect("connect to redis");
    s.write_all(&cmd).await.unwrap();
    let mut buf = Vec::new();
    while !buf.ends_with(b"\r\n") {
        let mut chunk = [0u8; 64];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "redis closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    line.trim()
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("PUBLISH answered {line}"))
}

/// What a bad (or odd) client frame must be answered with.
enum Expect {
    /// An error reply with this `id` (a number or null) and this code.
    Error(Value, &'static str),
    /// A success reply with this id and result.
    Ok(u64, Value),
    /// No reply at all.
    Nothing,
    /// No reply at all, and the watcher of `room` receives this data (a publish
    /// without id).
    NothingButDelivered(Value),
}

// ---- bad input over WebSocket -------------------------------------------------------

/// One frame sent by a client: a name for failure messages, the frame, its answer.
type Case = (&'static str, Message, Expect);

fn text(s: impl Into<String>) -> Message {
    Message::Text(s.into().into())
}

/// Frames that are not a JSON object in a text frame: no id can be read from them.
fn non_object_frames() -> Vec<Case> {
    let bad = |name, frame| (name, frame, Expect::Error(Value::Null, "bad_request"));
    vec![
        bad("not JSON", text("not json")),
        bad("truncated JSON", text(r#"{"id":3,"op":"ping""#)),
        bad("JSON array", text("[1,2,3]")),
        bad("array holding a frame", text(r#"[{"id":4,"op":"ping"}]"#)),
        bad("JSON string", text(r#""ping""#)),
        bad("JSON number", text("42")),
        bad("JSON null", text("null")),
        bad("empty text", text("")),
        bad(
            "binary frame",
            Message::Binary(b"{\"id\":20,\"op\":\"ping\"}".to_vec().into()),
        ),
    ]
}

/// Objects with an id but a bad or missing op, or an op missing a member it needs.
fn bad_ops_and_missing_members() -> Vec<Case> {
    vec![
        (
            "unknown op with id",
            text(r#"{"id":5,"op":"nope"}"#),
            Expect::Error(json!(5), "bad_request"),
        ),
        (
            "op not a string",
            text(r#"{"id":6,"op":7}"#),
            Expect::Error(json!(6), "bad_request"),
        ),
        (
            "missing op",
            text(r#"{"id":7}"#),
            Expect::Error(json!(7), "bad_request"),
        ),
        (
            "subscribe without channel",
            text(r#"{"id":8,"op":"subscribe"}"#),
            Expect::Error(json!(8), "bad_request"),
        ),
        (
            "publish without data",
            text(r#"{"id":18,"op":"publish","channel":"room"}"#),
            Expect::Error(json!(18), "bad_request"),
        ),
    ]
}

/// Channel names outside the grammar, in every op that takes one; and the longest
/// name allowed, 255 bytes, which is accepted.
fn bad_channel_names() -> Vec<Case> {
    let long = "x".repeat(256);
    let longest = "x".repeat(255);
    let bad =
        |name, id: u64, frame: String| (name, text(frame), Expect::Error(json!(id), "bad_request"));
    vec![
        bad(
            "channel with a space",
            9,
            r#"{"id":9,"op":"subscribe","channel":"has space"}"#.into(),
        ),
        bad(
            "channel with *",
            10,
            r#"{"id":10,"op":"subscribe","channel":"news*"}"#.into(),
        ),
        bad(
            "channel of 256 bytes",
            11,
            json!({"id": 11, "op": "subscribe", "channel": long}).to_string(),
        ),
        bad(
            "empty channel",
            12,
            r#"{"id":12,"op":"subscribe","channel":""}"#.into(),
        ),
        bad(
            "non-ASCII channel",
            13,
            r#"{"id":13,"op":"subscribe","channel":"café"}"#.into(),
        ),
        bad(
            "escaped non-ASCII channel",
            14,
            r#"{"id":14,"op":"subscribe","channel":"caf\u00e9"}"#.into(),
        ),
        bad(
            "channel not a string",
            15,
            r#"{"id":15,"op":"subscribe","channel":5}"#.into(),
        ),
        bad(
            "unsubscribe with bad channel",
            16,
            r#"{"id":16,"op":"unsubscribe","channel":"a b"}"#.into(),
        ),
        bad(
            "publish with bad channel",
            17,
            r#"{"id":17,"op":"publish","channel":"room!","data":1}"#.into(),
        ),
        (
            "channel of 255 bytes (valid)",
            text(json!({"id": 21, "op": "publish", "channel": longest, "data": 1}).to_string()),
            Expect::Ok(21, json!({})),
        ),
    ]
}

/// Ids that are not integers from 0 to 2^53-1 (an error with a null id: the id is not
/// one the client can match), and 2^53-1 itself, which is accepted.
fn ids_outside_the_safe_integers() -> Vec<Case> {
    let bad = |name, frame| (name, frame, Expect::Error(Value::Null, "bad_request"));
    vec![
        bad("id as a string", text(r#"{"id":"19","op":"ping"}"#)),
        bad("negative id", text(r#"{"id":-1,"op":"ping"}"#)),
        bad("fractional id", text(r#"{"id":1.5,"op":"ping"}"#)),
        bad("id of 2^53", text(r#"{"id":9007199254740992,"op":"ping"}"#)),
        (
            "id of 2^53-1 (valid)",
            text(r#"{"id":9007199254740991,"op":"ping"}"#),
            Expect::Ok(9007199254740991, json!({})),
        ),
    ]
}

/// Frames without an id: an error is still answered (id null); a success is not,
/// though a publish still delivers.
fn frames_without_id() -> Vec<Case> {
    let bad = |name, frame| (name, frame, Expect::Error(Value::Null, "bad_request"));
    vec![
        bad(
            "error without id: missing channel",
            text(r#"{"op":"subscribe"}"#),
        ),
        bad("error without id: unknown op", text(r#"{"op":"nope"}"#)),
        bad(
            "error without id: publish without data",
            text(r#"{"op":"publish","channel":"room"}"#),
        ),
        (
            "valid ping without id",
            text(r#"{"op":"ping"}"#),
            Expect::Nothing,
        ),
        (
            "valid publish without id",
            text(r#"{"op":"publish","channel":"room","data":"no id"}"#),
            Expect::NothingButDelivered(json!("no id")),
        ),
    ]
}

/// Sends each case's frame on one connection and checks its answer; after each, that
/// the connection still works and answered nothing else, and that a client watching
/// `room` on another connection keeps receiving (one HTTP publish after every case).
async fn each_case_gets_its_answer(redis: Option<&Redis>, cases: Vec<Case>) {
    let node = start(config(redis, "a")).await;
    let http = shared_http();
    let mut bad = Client::connect(node.addr).await;
    let mut watcher = Client::connect(node.addr).await;
    watcher.subscribe("room").await;

    // What the watcher must receive, in order.
    let mut expected: Vec<Value> = Vec::new();
    for (k, (name, frame, expect)) in cases.into_iter().enumerate() {
        bad.send_raw(frame).await;
        if let Some(data) = expect_answer(&mut bad, name, expect).await {
            expected.push(data);
        }
        expect_only_the_next_ping_answered(&mut bad, name, 1000 + k as u64).await;
        let (status, body) =
            post_publish(&http, node.addr, &json!({"channel": "room", "data": k})).await;
        assert_eq!(status, 200, "{body}");
        expected.push(json!(k));
    }

    let got = watcher
        .messages(expected.len(), Duration::from_secs(10))
        .await;
    let data: Vec<Value> = got.iter().map(|m| m["data"].clone()).collect();
    assert_eq!(data, expected);
    assert!(got.iter().all(|m| m["channel"] == "room"));
    assert!(
        watcher
            .next_message(Duration::from_millis(300))
            .await
            .is_none(),
        "a refused publish was delivered"
    );
    assert!(
        bad.next_frame(Duration::from_millis(200)).await.is_none(),
        "an extra frame reached the client"
    );
}

/// Checks the answer to case `name`; returns what it delivers to the watcher, if
/// anything.
async fn expect_answer(bad: &mut Client, name: &str, expect: Expect) -> Option<Value> {
    match expect {
        Expect::Error(id, code) => {
            let r = bad
                .next_frame(Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("{name}: no error reply"));
            assert_eq!(r["type"], "reply", "{name}: {r}");
            assert_eq!(r["id"], id, "{name}: {r}");
            assert!(
                r.get("id").is_some(),
                "{name}: the reply has no id member: {r}"
            );
            assert_eq!(r["error"]["code"], code, "{name}: {r}");
            assert!(r["error"]["message"].is_string(), "{name}: {r}");
            assert!(r.get("result").is_none(), "{name}: {r}");
            None
        }
        Expect::Ok(id, result) => {
            let r = bad
                .next_frame(Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("{name}: no reply"));
            assert_eq!(
                r,
                json!({"type": "reply", "id": id, "result": result}),
                "{name}"
            );
            None
        }
        Expect::Nothing => None,
        Expect::NothingButDelivered(data) => Some(data),
    }
}

/// The connection is still usable, and nothing else was answered: the very next frame
/// is the reply to a ping.
async fn expect_only_the_next_ping_answered(bad: &mut Client, name: &str, ping_id: u64) {
    bad.send_text(&json!({"id": ping_id, "op": "ping"}).to_string())
        .await;
    let r = bad
        .next_frame(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("{name}: no reply to the ping after it"));
    assert_eq!(
        r,
        json!({"type": "reply", "id": ping_id, "result": {}}),
        "{name}: expected only the ping reply"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_object_frames_answer_bad_request_with_null_id_memory() {
    each_case_gets_its_answer(None, non_object_frames()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_object_frames_answer_bad_request_with_null_id_redis() {
    let redis = Redis::start();
    each_case_gets_its_answer(Some(&redis), non_object_frames()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ops_and_missing_members_answer_bad_request_with_the_id_memory() {
    each_case_gets_its_answer(None, bad_ops_and_missing_members()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ops_and_missing_members_answer_bad_request_with_the_id_redis() {
    let redis = Redis::start();
    each_case_gets_its_answer(Some(&redis), bad_ops_and_missing_members()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_channel_names_answer_bad_request_with_the_id_memory() {
    each_case_gets_its_answer(None, bad_channel_names()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_channel_names_answer_bad_request_with_the_id_redis() {
    let redis = Redis::start();
    each_case_gets_its_answer(Some(&redis), bad_channel_names()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_outside_the_safe_integers_answer_bad_request_with_null_id_memory() {
    each_case_gets_its_answer(None, ids_outside_the_safe_integers()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_outside_the_safe_integers_answer_bad_request_with_null_id_redis() {
    let redis = Redis::start();
    each_case_gets_its_answer(Some(&redis), ids_outside_the_safe_integers()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_without_id_get_errors_with_null_id_and_no_success_reply_memory() {
    each_case_gets_its_answer(None, frames_without_id()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_without_id_get_errors_with_null_id_and_no_success_reply_redis() {
    let redis = Redis::start();
    each_case_gets_its_answer(Some(&redis), frames_without_id()).await;
}

// ---- oversized frames -----------------------------------------------------------------

/// A publish frame of exactly `len` bytes, and the length of its data string.
fn publish_frame_of_len(len: usize, channel: &str) -> (String, usize) {
    let shell = json!({"id": 1, "op": "publish", "channel": channel, "data": ""}).to_string();
    let pad = len - shell.len();
    let frame =
        json!({"id": 1, "op": "publish", "channel": channel, "data": "p".repeat(pad)}).to_string();
    assert_eq!(frame.len(), len);
    (frame, pad)
}

async fn oversized_frame_closes_with_1009(redis: Option<&Redis>) {
    let node = start(config(redis, "a")).await;
    let mut big = Client::connect(node.addr).await;
    let mut watcher = Client::connect(node.addr).await;
    watcher.subscribe("room").await;

    // Exactly the limit (64 KiB) is still a frame like any other.
    let (frame, pad) = publish_frame_of_len(65536, "room");
    big.send_text(&frame).await;
    let r = big.reply_to(1).await;
    assert_eq!(
        r["result"],
        json!({}),
        "a frame of exactly 65536 bytes: {r}"
    );
    let m = watcher
        .next_message(Duration::from_secs(5))
        .await
        .expect("the 64 KiB publish");
    assert_eq!(m["data"].as_str().map(str::len), Some(pad));

    // One byte more: closed with 1009, no error reply.
    big.send_text(&publish_frame_of_len(65537, "room").0).await;
    assert_eq!(
        big.closed(Duration::from_secs(5)).await,
        Some(Closed::Code(1009))
    );

    // Nobody else noticed.
    let (status, _) = publish_http(node.addr, json!({"channel": "room", "data": "after"})).await;
    assert_eq!(status, 200);
    let m = watcher
        .next_message(Duration::from_secs(5))
        .await
        .expect("a message after the oversized frame");
    assert_eq!(m["data"], "after", "the oversized frame was published");
    let r = watcher.request(json!({"op": "ping"})).await;
    assert_eq!(r["result"], json!({}));
    let mut fresh = Client::connect(node.addr).await;
    assert_eq!(
        fresh.request(json!({"op": "ping"})).await["result"],
        json!({})
    );
    expect_metric(node.addr, "herald_connections", 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_with_1009_memory() {
    oversized_frame_closes_with_1009(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_with_1009_redis() {
    let redis = Redis::start();
    oversized_frame_closes_with_1009(Some(&redis)).await;
}

// ---- garbage on the backplane -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_backplane_is_dropped_and_counted() {
    let redis = Redis::start();
    let node = start(config(Some(&redis), "a")).await;
    let mut raw = RawClient::connect(node.addr).await;
    raw.subscribe("news").await;
    let mut other = Client::connect(node.addr).await;
    other.subscribe("news").await;
    let before = metric_of(node.addr, "herald_backplane_invalid_payloads_total").await;
    assert_eq!(before, 0.0);

    let garbage: Vec<&[u8]> = vec![
        b"garbage",
        b"",
        b"[1,2,3]",
        b"{\"type\":\"message\",\"channel\":\"news\"",
        br#"{"type":"message","channel":"sports","data":1}"#,
        br#"{"type":"message","channel":"news"}"#,
        br#"{"type":"welcome","channel":"news","data":1}"#,
        br#"{"channel":"news","data":1}"#,
        br#"{"type":"message","channel":"news","data":1,"offset":3}"#,
        br#"{"type":"join","channel":"news","client":"s-1"}"#,
        b"{\"type\":\"message\",\"channel\":\"news\",\"data\":\"\xff\"}",
        b"\xff\xfe",
    ];
    for g in &garbage {
        // The node is subscribed: Redis hands it every one of these.
        assert_eq!(redis_publish_raw(&redis, "herald:{news}:ch", g).await, 1);
    }
    // Also through redis-cli, as an operator would.
    assert_eq!(
        redis
            .cli(&["PUBLISH", "herald:{news}:ch", "garbage"])
            .trim(),
        "1"
    );
    let n_garbage = garbage.len() as f64 + 1.0;

    // A valid payload straight into Redis, with spacing and member order that a
    // re-encoder would change: forwarded byte for byte.
    let valid =
        r#"{ "data" : {"b":2, "a":[1, 2.50]} , "channel":"news","type":"message", "extra":true }"#;
    assert_eq!(
        redis.cli(&["PUBLISH", "herald:{news}:ch", valid]).trim(),
        "1"
    );
    let simple = r#"{"type":"message","channel":"news","data":1}"#;
    assert_eq!(
        redis.cli(&["PUBLISH", "herald:{news}:ch", simple]).trim(),
        "1"
    );

    assert_eq!(
        raw.next_text(Duration::from_secs(5)).await.as_deref(),
        Some(valid),
        "the first frame must be the valid payload, unchanged"
    );
    assert_eq!(
        raw.next_text(Duration::from_secs(5)).await.as_deref(),
        Some(simple)
    );
    assert!(
        raw.next_text(Duration::from_millis(300)).await.is_none(),
        "garbage was delivered"
    );
    let got = other.messages(2, Duration::from_secs(5)).await;
    assert_eq!(got[0]["data"], json!({"b": 2, "a": [1, 2.5]}));
    assert_eq!(got[1]["data"], json!(1));
    assert!(other.next_frame(Duration::from_millis(200)).await.is_none());

    // The node is up and well.
    assert_eq!(ready_status(node.addr).await, 200);
    let (status, _) = publish_http(node.addr, json!({"channel": "news", "data": 2})).await;
    assert_eq!(status, 200);
    assert_eq!(
        raw.next_text(Duration::from_secs(5)).await.as_deref(),
        Some(r#"{"type":"message","channel":"news","data":2}"#)
    );
    expect_metric(
        node.addr,
        "herald_backplane_invalid_payloads_total",
        before + n_garbage,
    )
    .await;
}

// ---- slow consumers -------------------------------------------------------------------

/// A raw client whose socket has a small receive buffer, so that the node's side backs
/// up quickly once the client stops reading.
async fn slow_reader(addr: SocketAddr, channel: &str) -> WebSocketStream<TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(addr).await.expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .expect("upgrade");
    let welcome = ws.next().await.expect("welcome").expect("welcome");
    assert!(welcome.to_text().unwrap().contains("welcome"));
    ws.send(Message::Text(
        json!({"id": 1, "op": "subscribe", "channel": channel})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let reply = ws.next().await.expect("reply").expect("reply");
    let v: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(v, json!({"type": "reply", "id": 1, "result": {}}));
    ws
}

const PUBLISHERS: usize = 4;

async fn slow_consumer_is_closed_with_4008(redis: Option<&Redis>, n: usize) {
    let mut cfg = config(redis, "a");
    // Small enough to cut the slow client off early, large enough that the normal
    // readers keep up on a busy two-core machine.
    cfg.limits.outbox_messages = 512;
    let node = start(cfg).await;
    let addr = node.addr;

    let mut slow = slow_reader(addr, "flood").await;
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(addr).await;
        c.subscribe("flood").await;
        readers.push(tokio::spawn(async move {
            let got = c.messages(n, Duration::from_secs(180)).await;
            let order = got
                .iter()
                .map(|m| {
                    let d = &m["data"];
                    (d["p"].as_u64().unwrap(), d["i"].as_u64().unwrap())
                })
                .collect::<Vec<_>>();
            (c, order)
        }));
    }
    expect_metric(addr, "herald_connections", 4.0).await;

    // PUBLISHERS concurrent HTTP publishers, each numbering its own messages.
    let started = std::time::Instant::now();
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        publishers.push(tokio::spawn(async move {
            let pad = "x".repeat(1000);
            let http = shared_http();
            for i in 0..n / PUBLISHERS {
                let (status, body) = post_publish(
                    &http,
                    addr,
                    &json!({"channel": "flood", "data": {"p": p, "i": i, "pad": pad}}),
                )
                .await;
                assert_eq!(status, 200, "publish {p}/{i}: {body}");
            }
        }));
    }
    // The node gives a slow client's close frame a few seconds before it drops the
    // connection (PROTOCOL §2.4), so the slow client resumes reading as soon as the
    // node reports the cut-off: what was in flight, in order, then the close frame.
    let slow_task = tokio::spawn(async move {
        while metric_of(addr, "herald_slow_consumer_closes_total").await < 1.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut keys = Vec::new();
        let code = loop {
            match tokio::time::timeout(Duration::from_secs(10), slow.next()).await {
                Err(_) => panic!("no close frame after {} messages", keys.len()),
                Ok(None) => panic!(
                    "connection ended without a close frame after {} messages",
                    keys.len()
                ),
                Ok(Some(Err(e))) => panic!("read error after {} messages: {e}", keys.len()),
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    assert_eq!(v["type"], "message", "{v}");
                    let d = &v["data"];
                    keys.push((d["p"].as_u64().unwrap(), d["i"].as_u64().unwrap()));
                }
                Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => {}
            }
        };
        (keys, code)
    });
    for p in publishers {
        p.await.expect("publisher");
    }
    eprintln!("published {n} messages in {:?}", started.elapsed());

    let mut normal = Vec::new();
    let mut orders = Vec::new();
    for (k, r) in readers.into_iter().enumerate() {
        let (c, order) = r.await.expect("reader task");
        assert_eq!(order.len(), n);
        // Every publisher's messages arrive complete and in its order.
        let mut next = [0u64; PUBLISHERS];
        for (p, i) in &order {
            assert_eq!(
                *i, next[*p as usize],
                "normal client {k}: publisher {p} out of order"
            );
            next[*p as usize] += 1;
        }
        orders.push(order);
        normal.push(c);
    }
    // One order on every subscriber.
    assert!(
        orders.iter().all(|o| *o == orders[0]),
        "subscribers saw different orders"
    );

    // The slow client was cut off: counted, and no longer a connection of the node
    // (the three normal clients are).
    let closes = metric_of(addr, "herald_slow_consumer_closes_total").await;
    eprintln!("herald_slow_consumer_closes_total = {closes}");
    assert!(closes >= 1.0);
    assert!(metric_of(addr, "herald_messages_dropped_total").await >= 1.0);
    expect_metric(addr, "herald_connections", 3.0).await;
    expect_metric(addr, "herald_subscriptions", 3.0).await;

    let (keys, code) = slow_task.await.expect("slow reader");
    let seen = keys.len();
    assert_eq!(
        keys[..],
        orders[0][..seen],
        "the slow client's frames differ from everyone else's"
    );
    assert_eq!(code, Some(4008), "after {seen} messages");
    assert!(
        seen < n,
        "the slow client received every message: it was never slow (test is vacuous)"
    );
    eprintln!("the slow client got {seen} of {n} messages before 4008");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_with_4008_memory() {
    slow_consumer_is_closed_with_4008(None, 20_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_with_4008_redis() {
    let redis = Redis::start();
    slow_consumer_is_closed_with_4008(Some(&redis), 12_000).await;
}

/// The kernel's TCP state of the connection from `local` to `remote` on loopback, as
/// /proc/net/tcp shows it ("01" established, "04" FIN_WAIT1, ...), None when gone.
fn tcp_state(local: SocketAddr, remote: SocketAddr) -> Option<String> {
    let hex = |a: SocketAddr| format!("0100007F:{:04X}", a.port());
    let (l, r) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 3 && f[1] == l && f[2] == r).then(|| f[3].to_string())
    })
}

/// Publishes 1 KiB messages until the slow client has been cut off; returns how many
/// requests it took. Each request uses the `channels` form on `channels`.
async fn flood_until_cut_off(addr: SocketAddr, channels: &[String]) -> usize {
    let http = shared_http();
    let pad = "x".repeat(1000);
    for round in 0..10_000 {
        let (status, body) = post_publish(
            &http,
            addr,
            &json!({"channels": channels, "data": {"round": round, "pad": pad}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        if round % 10 == 9 && metric_of(addr, "herald_slow_consumer_closes_total").await >= 1.0 {
            return round + 1;
        }
    }
    panic!("the client that never reads was never cut off");
}

/// PROTOCOL §2.4: the node "sends the 4008 close frame, and gives the frame a few
/// seconds to be written before it drops the TCP connection". A client that never
/// reads again must not keep its socket (and the node's buffers) forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_that_never_reads_is_dropped() {
    let mut cfg = config(None, "a");
    cfg.limits.outbox_messages = 64;
    let node = start(cfg).await;
    let slow = slow_reader(node.addr, "flood").await;
    let client_addr = slow.get_ref().local_addr().unwrap();
    assert_eq!(tcp_state(node.addr, client_addr).as_deref(), Some("01"));
    let rounds = flood_until_cut_off(node.addr, &["flood".to_string()]).await;
    eprintln!("cut off after {rounds} publishes");
    expect_metric(node.addr, "herald_connections", 0.0).await;
    // "A few seconds": allow 15.
    let dropped = eventually(Duration::from_secs(15), || async {
        tcp_state(node.addr, client_addr).as_deref() != Some("01")
    })
    .await;
    assert!(
        dropped,
        "15 s after the 4008 the node still holds the slow client's TCP connection open \
         (state {:?})",
        tcp_state(node.addr, client_addr)
    );
    drop(slow);
}

/// herald_slow_consumer_closes_total counts connections closed with 4008 (its help text
/// in src/metrics.rs), not the messages dropped on the way (that is
/// herald_messages_dropped_total).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_closes_count_connections() {
    let mut cfg = config(None, "a");
    cfg.limits.outbox_messages = 64;
    let node = start(cfg).await;
    // One slow connection subscribed to 50 channels; each request publishes to all 50
    // in one go, so the queue overflows in the middle of a request.
    let channels: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
    let mut slow = slow_reader(node.addr, &channels[0]).await;
    for (k, ch) in channels.iter().enumerate().skip(1) {
        slow.send(Message::Text(
            json!({"id": k + 1, "op": "subscribe", "channel": ch})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        let reply = slow.next().await.expect("reply").expect("reply");
        assert!(reply.to_text().unwrap().contains("\"result\""), "{reply:?}");
    }
    flood_until_cut_off(node.addr, &channels).await;
    // A few more publishes after the cut-off change nothing.
    flood_until_cut_off(node.addr, &channels).await;
    let dropped = metric_of(node.addr, "herald_messages_dropped_total").await;
    let closes = metric_of(node.addr, "herald_slow_consumer_closes_total").await;
    eprintln!("dropped {dropped}, closes {closes}");
    assert!(dropped >= 1.0);
    // It was closed with 4008, once.
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => break f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(4008));
    assert_eq!(closes, 1.0, "one connection was closed for being slow");
}

// ---- limits ---------------------------------------------------------------------------

async fn subscriptions_per_connection_are_limited(redis: Option<&Redis>) {
    let mut cfg = config(redis, "a");
    cfg.limits.max_subscriptions = 3;
    let node = start(cfg).await;
    let mut c = Client::connect(node.addr).await;
    for ch in ["s1", "s2", "s3"] {
        c.subscribe(ch).await;
    }
    let r = c.request(json!({"op": "subscribe", "channel": "s4"})).await;
    assert_eq!(r["error"]["code"], "limit_exceeded", "{r}");
    assert!(r.get("result").is_none());
    // Not subscribed to s4.
    publish_http(node.addr, json!({"channel": "s4", "data": "no"})).await;
    // Subscribing again to one held succeeds and changes nothing.
    assert_eq!(c.subscribe("s2").await, json!({}));
    // The limit counts current subscriptions: after an unsubscribe there is room.
    let r = c
        .request(json!({"op": "unsubscribe", "channel": "s1"}))
        .await;
    assert_eq!(r["result"], json!({}));
    c.subscribe("s4").await;
    let r = c.request(json!({"op": "subscribe", "channel": "s5"})).await;
    assert_eq!(r["error"]["code"], "limit_exceeded", "{r}");
    // Another connection has its own count.
    let mut d = Client::connect(node.addr).await;
    for ch in ["s5", "s6", "s7"] {
        d.subscribe(ch).await;
    }
    publish_http(node.addr, json!({"channel": "s4", "data": "yes"})).await;
    let m = c.next_message(Duration::from_secs(5)).await.expect("s4");
    assert_eq!(
        m["data"], "yes",
        "a message from before the subscribe arrived"
    );
    expect_metric(node.addr, "herald_subscriptions", 6.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_per_connection_are_limited_memory() {
    subscriptions_per_connection_are_limited(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_per_connection_are_limited_redis() {
    let redis = Redis::start();
    subscriptions_per_connection_are_limited(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_body_limit_answers_413() {
    let node = start(config(None, "a")).await;
    let mut c = Client::connect(node.addr).await;
    c.subscribe("big").await;
    let http = shared_http();
    let shell_len = json!({"channel": "big", "data": ""}).to_string().len();
    let body_of_len = |len: usize| {
        let body = json!({"channel": "big", "data": "b".repeat(len - shell_len)}).to_string();
        assert_eq!(body.len(), len);
        body
    };
    let send = |body: String| {
        let http = http.clone();
        async move {
            let r = http
                .post(format!("http://{}/api/publish", node.addr))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("post");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // The limit itself is allowed.
    let (status, body) = send(body_of_len(65536)).await;
    assert_eq!(status, 200, "{body}");
    let m = c
        .next_message(Duration::from_secs(5))
        .await
        .expect("64 KiB");
    assert_eq!(m["data"].as_str().map(str::len), Some(65536 - shell_len));
    // Beyond it: 413 with the protocol's error body, and nothing published.
    for len in [65537, 200_000] {
        let (status, body) = send(body_of_len(len)).await;
        assert_eq!(status, 413, "{len} bytes: {body}");
        assert_eq!(body["error"]["code"], "limit_exceeded", "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    assert!(c.next_message(Duration::from_millis(300)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_channels_in_one_publish_answers_413() {
    let node = start(config(None, "a")).await;
    let mut c = Client::connect(node.addr).await;
    c.subscribe("m0").await;
    c.subscribe("m100").await;
    let names = |n: usize| (0..n).map(|i| format!("m{i}")).collect::<Vec<_>>();
    let (status, body) = publish_http(
        node.addr,
        json!({"channels": names(101), "data": "too many"}),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "limit_exceeded", "{body}");
    assert!(
        c.next_message(Duration::from_millis(300)).await.is_none(),
        "something was published"
    );
    assert_eq!(
        metric_of(node.addr, "herald_messages_published_total").await,
        0.0
    );
    // Exactly the limit (default 100) is fine.
    let (status, body) =
        publish_http(node.addr, json!({"channels": names(100), "data": "ok"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().map(Vec::len), Some(100));
    let m = c.next_message(Duration::from_secs(5)).await.expect("m0");
    assert_eq!(
        (m["channel"].clone(), m["data"].clone()),
        (json!("m0"), json!("ok"))
    );
    assert!(c.next_message(Duration::from_millis(200)).await.is_none());

    // A smaller configured limit is honoured too.
    let mut cfg = config(None, "b");
    cfg.limits.max_channels_per_publish = 2;
    let small = start(cfg).await;
    let (status, body) =
        publish_http(small.addr, json!({"channels": ["a", "b", "c"], "data": 1})).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "limit_exceeded");
    let (status, _) = publish_http(small.addr, json!({"channels": ["a", "b"], "data": 1})).await;
    assert_eq!(status, 200);
}

async fn configured_node_knows_only_its_namespaces(redis: Option<&Redis>) {
    let cfg = config_from_toml(
        redis,
        "a",
        "[namespaces.chat]\npublish = \"anyone\"\n\n[namespaces.news]\nsubscribe = \"anyone\"\n",
    );
    let node = start(cfg).await;
    let mut c = Client::connect(node.addr).await;

    // Unknown namespace: not_found over WebSocket, 404 over HTTP, for either form.
    let r = c
        .request(json!({"op": "subscribe", "channel": "admin:x"}))
        .await;
    assert_eq!(r["error"]["code"], "not_found", "{r}");
    let r = c
        .request(json!({"op": "publish", "channel": "admin:x", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], "not_found", "{r}");
    let (status, body) = publish_http(node.addr, json!({"channel": "admin:x", "data": 1})).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found", "{body}");

    c.subscribe("chat:room").await;
    let (status, body) = publish_http(
        node.addr,
        json!({"channels": ["chat:room", "admin:x"], "data": 1}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    assert!(
        c.next_message(Duration::from_millis(300)).await.is_none(),
        "the channels form published before validating every channel"
    );

    // A namespace that says publish = "anyone": clients may publish.
    let r = c
        .request(json!({"op": "publish", "channel": "chat:room", "data": "from a client"}))
        .await;
    assert_eq!(r["result"], json!({}), "{r}");
    let m = c.next_message(Duration::from_secs(5)).await.expect("chat");
    assert_eq!(m["data"], "from a client");

    // A namespace without `publish`: clients may not, the HTTP API may.
    c.subscribe("news:today").await;
    let r = c
        .request(json!({"op": "publish", "channel": "news:today", "data": "client"}))
        .await;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    let (status, body) = publish_http(
        node.addr,
        json!({"channel": "news:today", "data": "backend"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let m = c.next_message(Duration::from_secs(5)).await.expect("news");
    assert_eq!(m["data"], "backend", "the forbidden publish was delivered");

    // The default namespace exists on a configured node, but publishing there is the
    // backends' alone unless the file says otherwise.
    c.subscribe("plain").await;
    let r = c
        .request(json!({"op": "publish", "channel": "plain", "data": "client"}))
        .await;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    let (status, _) = publish_http(node.addr, json!({"channel": "plain", "data": "backend"})).await;
    assert_eq!(status, 200);
    let m = c.next_message(Duration::from_secs(5)).await.expect("plain");
    assert_eq!(m["data"], "backend");
    assert!(c.next_message(Duration::from_millis(200)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_node_knows_only_its_namespaces_memory() {
    configured_node_knows_only_its_namespaces(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_node_knows_only_its_namespaces_redis() {
    let redis = Redis::start();
    configured_node_knows_only_its_namespaces(Some(&redis)).await;
}

// ---- /metrics -------------------------------------------------------------------------

async fn metrics_are_exposed_and_follow_clients(redis: Option<&Redis>) {
    let node = start(config(redis, "m")).await;
    let addr = node.addr;
    let text = metrics_text(addr).await;
    for name in [
        "herald_connections",
        "herald_subscriptions",
        "herald_channels",
        "herald_messages_published_total",
        "herald_messages_delivered_total",
        "herald_messages_dropped_total",
        "herald_slow_consumer_closes_total",
        "herald_backplane_reconnects_total",
    ] {
        assert_eq!(metric(&text, name), Some(0.0), "{name} at start:\n{text}");
    }

    let mut a = Client::connect(addr).await;
    let mut b = Client::connect(addr).await;
    expect_metric(addr, "herald_connections", 2.0).await;
    a.subscribe("x").await;
    a.subscribe("y").await;
    b.subscribe("x").await;
    expect_metric(addr, "herald_subscriptions", 3.0).await;
    expect_metric(addr, "herald_channels", 2.0).await;

    for i in 0..3 {
        let (status, _) = publish_http(addr, json!({"channel": "x", "data": i})).await;
        assert_eq!(status, 200);
    }
    a.messages(3, Duration::from_secs(5)).await;
    b.messages(3, Duration::from_secs(5)).await;
    expect_metric(addr, "herald_messages_published_total", 3.0).await;
    expect_metric(addr, "herald_messages_delivered_total", 6.0).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(
                &metrics_text(addr).await,
                "herald_delivery_latency_seconds_bucket",
            )
            .is_some()
        })
        .await,
        "no herald_delivery_latency_seconds_bucket in /metrics:\n{}",
        metrics_text(addr).await
    );

    // Down again as clients leave.
    let r = a
        .request(json!({"op": "unsubscribe", "channel": "y"}))
        .await;
    assert_eq!(r["result"], json!({}));
    expect_metric(addr, "herald_subscriptions", 2.0).await;
    expect_metric(addr, "herald_channels", 1.0).await;
    b.close().await;
    expect_metric(addr, "herald_connections", 1.0).await;
    expect_metric(addr, "herald_subscriptions", 1.0).await;
    expect_metric(addr, "herald_channels", 1.0).await;
    drop(a); // a dropped TCP connection, no close frame
    expect_metric(addr, "herald_connections", 0.0).await;
    expect_metric(addr, "herald_subscriptions", 0.0).await;
    expect_metric(addr, "herald_channels", 0.0).await;

    // And up again.
    let mut c = Client::connect(addr).await;
    c.subscribe("z").await;
    expect_metric(addr, "herald_connections", 1.0).await;
    expect_metric(addr, "herald_subscriptions", 1.0).await;
    expect_metric(addr, "herald_channels", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_exposed_and_follow_clients_memory() {
    metrics_are_exposed_and_follow_clients(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_exposed_and_follow_clients_redis() {
    let redis = Redis::start();
    metrics_are_exposed_and_follow_clients(Some(&redis)).await;
}
