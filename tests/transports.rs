//! The HTTP streaming transports (PROTOCOL §2.5): `GET /sse`, `POST /stream` and
//! `POST /emulation`, against in-process nodes.
//!
//! Cases:
//! - an SSE session: headers, the welcome frame (transport, key), ops posted to
//!   `/emulation` answered on the stream, messages, keep-alive comments within the
//!   keep-alive period, and the drain's last `close` frame (1001) ending the response;
//! - an HTTP-stream session (NDJSON) with a Bearer token, and the refusals both share
//!   with a WebSocket upgrade (no token 401, a foreign Origin 403);
//! - `/emulation`'s answers: a wrong key 404, an unknown node 410, a frame above the
//!   limit 413, bad bodies 400, a foreign Origin 403;
//! - the per-session rate limit: `rate_limited` replies with their ids, then close 1008;
//! - streaming sessions count as connections (`limits.max_connections`), not against
//!   the plain-HTTP cap, which keeps serving other requests;
//! - two nodes on one Redis: an op posted to node B for a session on node A is
//!   answered on A's stream, and durable recovery works after a reconnect;
//! - a client that stops reading its stream is closed as a slow consumer.

mod support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// One streaming session as a client sees it.
struct Stream {
    resp: reqwest::Response,
    sse: bool,
    buf: String,
    frames: VecDeque<Value>,
    keep_alives: usize,
    ended: bool,
    welcome: Value,
    next_id: u64,
}

impl Stream {
    async fn open_sse(addr: SocketAddr, query: &str) -> Stream {
        let resp = http()
            .get(format!("http://{addr}/sse{query}"))
            .send()
            .await
            .expect("GET /sse");
        Stream::from_response(resp, true).await
    }

    async fn open_ndjson(addr: SocketAddr, token: Option<&str>) -> Stream {
        let mut req = http().post(format!("http://{addr}/stream"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("POST /stream");
        Stream::from_response(resp, false).await
    }

    async fn from_response(resp: reqwest::Response, sse: bool) -> Stream {
        assert_eq!(resp.status(), 200, "the stream did not open");
        let mut s = Stream {
            resp,
            sse,
            buf: String::new(),
            frames: VecDeque::new(),
            keep_alives: 0,
            ended: false,
            welcome: Value::Null,
            next_id: 1,
        };
        let w = s.next_frame(WAIT).await.expect("a welcome frame");
        assert_eq!(w["type"], "welcome", "{w}");
        s.welcome = w;
        s
    }

    fn header(&self, name: &str) -> String {
        self.resp
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }

    /// Splits what arrived into frames and keep-alives.
    fn parse(&mut self) {
        let sep = if self.sse { "\n\n" } else { "\n" };
        while let Some(end) = self.buf.find(sep) {
            let chunk: String = self.buf.drain(..end + sep.len()).collect();
            let chunk = chunk.trim_end_matches('\n');
            if chunk.is_empty() || chunk.starts_with(':') {
                self.keep_alives += 1;
                continue;
            }
            let text = if self.sse {
                chunk.strip_prefix("data: ").expect("an SSE data line")
            } else {
                chunk
            };
            self.frames
                .push_back(serde_json::from_str(text).expect("a JSON frame"));
        }
    }

    /// The next frame within `limit`; a `{"type":"ended"}` once the response ended.
    async fn next_frame(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(f) = self.frames.pop_front() {
                return Some(f);
            }
            if self.ended {
                return Some(json!({"type": "ended"}));
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Err(_) => return None,
                Ok(Ok(Some(bytes))) => {
                    self.buf
                        .push_str(std::str::from_utf8(&bytes).expect("UTF-8"));
                    self.parse();
                }
                Ok(Ok(None)) | Ok(Err(_)) => self.ended = true,
            }
        }
    }

    async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let f = self
                .next_frame(WAIT)
                .await
                .unwrap_or_else(|| panic!("no {kind} frame"));
            if f["type"] == kind || f["type"] == "ended" {
                return f;
            }
        }
    }

    /// Posts `frame` for this session to node `via`: (status, body).
    async fn post(&self, via: SocketAddr, frame: Value) -> (u16, Value) {
        let body = json!({
            "node": self.welcome["node"],
            "session": self.welcome["session"],
            "key": self.welcome["key"],
            "frame": frame,
        });
        post_emulation(via, &body, None).await
    }

    /// Posts an op with the next id to `via` and waits for its reply on the stream.
    async fn request(&mut self, via: SocketAddr, mut frame: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = json!(id);
        let (st, body) = self.post(via, frame).await;
        assert_eq!(st, 202, "{body}");
        // Frames before the reply stay for later readers, in order.
        let mut before = Vec::new();
        let reply = loop {
            let f = self.next_frame(WAIT).await.expect("a reply");
            if f["type"] == "reply" && f["id"] == id {
                break f;
            }
            assert_ne!(f["type"], "ended", "the stream ended before the reply");
            before.push(f);
        };
        for f in before.into_iter().rev() {
            self.frames.push_front(f);
        }
        reply
    }
}

async fn post_emulation(via: SocketAddr, body: &Value, origin: Option<&str>) -> (u16, Value) {
    let mut req = http().post(format!("http://{via}/emulation")).json(body);
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let r = req.send().await.expect("POST /emulation");
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

fn fast_keep_alive(toml: &str) -> herald::config::Config {
    let mut c = config_from_toml(None, "a", toml);
    c.ping_interval = Duration::from_millis(300);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_session_serves_ops_messages_keep_alives_and_the_drain() {
    let node = start(fast_keep_alive("")).await;
    let mut s = Stream::open_sse(node.addr, "").await;
    assert!(s.header("content-type").starts_with("text/event-stream"));
    assert!(s.header("cache-control").contains("no-cache"));
    assert_eq!(s.header("x-accel-buffering"), "no");
    assert_eq!(s.welcome["transport"], "sse");
    assert_eq!(s.welcome["node"], "a");
    assert_eq!(s.welcome["key"].as_str().map(str::len), Some(32));
    assert_eq!(metric_of(node.addr, "herald_connections").await, 1.0);

    let r = s
        .request(node.addr, json!({"op": "subscribe", "channel": "news"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let (st, _) = publish_http(node.addr, json!({"channel": "news", "data": "x\ny"})).await;
    assert_eq!(st, 200);
    let m = s.next_of("message").await;
    assert_eq!(m["data"], "x\ny");
    // An op as JSON text works as well as an object.
    let (st, _) = s.post(node.addr, json!(r#"{"op":"ping","id":77}"#)).await;
    assert_eq!(st, 202);
    assert_eq!(s.next_of("reply").await["id"], 77);

    // Keep-alives every ping interval (300 ms here): at least three in 1.5 s.
    let before = s.keep_alives;
    assert!(s.next_frame(Duration::from_millis(1500)).await.is_none());
    assert!(
        s.keep_alives >= before + 3,
        "{} keep-alives",
        s.keep_alives - before
    );

    // The drain ends the session with a close frame (1001), then the response.
    let addr = node.addr;
    let stopping = tokio::spawn(node.drain_and_stop());
    let close = s.next_of("close").await;
    assert_eq!(close["code"], 1001, "{close}");
    assert_eq!(s.next_of("never").await["type"], "ended");
    stopping.await.unwrap();
    assert_eq!(ready_status(addr).await, 0);
}

const SECRET: &str = "transport-test-secret-0123456789abcdef";

fn token_config() -> herald::config::Config {
    config_from_toml(
        None,
        "a",
        &format!(
            "[auth]\njwt_hs256_secret = \"{SECRET}\"\nallowed_origins = [\"https://app.example\"]\n\
             [limits]\nmessages_per_sec = 5\n"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_stream_session_takes_a_bearer_token_and_refusals_match_the_websocket() {
    let node = start(token_config()).await;
    let token = sign_hs256(SECRET, &json!({"sub": "u1", "exp": unix_now() + 600}));
    let mut s = Stream::open_ndjson(node.addr, Some(&token)).await;
    assert!(s.header("content-type").starts_with("application/x-ndjson"));
    assert_eq!(s.welcome["transport"], "http-stream");
    let r = s.request(node.addr, json!({"op": "ping"})).await;
    assert!(r.get("result").is_some(), "{r}");

    // No token: 401, as at a WebSocket upgrade; a bad one too; a foreign Origin 403.
    let r = http()
        .post(format!("http://{}/stream", node.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http()
        .get(format!("http://{}/sse?token=not-a-token", node.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http()
        .get(format!("http://{}/sse?token={token}", node.addr))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The token in the cookie an EventSource page sends.
    let r = http()
        .get(format!("http://{}/sse", node.addr))
        .header("cookie", format!("theme=dark; herald_token={token}"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    let cookie_session = Stream::from_response(r, true).await;
    assert_eq!(cookie_session.welcome["transport"], "sse");

    // The rate limit (5/s, a 2 s bucket) is the session's, as on a WebSocket: of 40
    // pings posted at once, some are answered and the rest refused with their ids
    // (the close with 1008 for sustained abuse is the same code, tested over WebSocket).
    for i in 100..140u64 {
        let (st, body) = s.post(node.addr, json!({"op": "ping", "id": i})).await;
        assert_eq!(st, 202, "{body}");
    }
    let (mut ok, mut refused) = (0, Vec::new());
    while ok + refused.len() < 40 {
        let f = s.next_of("reply").await;
        if f["error"]["code"] == "rate_limited" {
            refused.push(f["id"].as_u64().expect("a refused frame's id"));
        } else {
            assert!(f.get("result").is_some(), "{f}");
            ok += 1;
        }
    }
    assert!(
        ok >= 5 && refused.len() >= 10,
        "{ok} answered, {} refused",
        refused.len()
    );
    assert!(
        refused.iter().all(|id| (100..140).contains(id)),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulation_answers_every_kind_of_bad_post() {
    let node = start(config_from_toml(
        None,
        "a",
        "[auth]\nallowed_origins = [\"https://app.example\"]\n[limits]\nmax_frame_bytes = 1024\n",
    ))
    .await;
    let s = Stream::open_sse(node.addr, "").await;
    let w = &s.welcome;
    let post = |body: Value| async move { post_emulation(node.addr, &body, None).await };

    let (st, _) = post(json!({"node": w["node"], "session": w["session"], "key": "0".repeat(32), "frame": {"op": "ping"}})).await;
    assert_eq!(st, 404, "a wrong key");
    let (st, _) = post(json!({"node": w["node"], "session": "s-00000000000000009999", "key": w["key"], "frame": {"op": "ping"}})).await;
    assert_eq!(st, 404, "an unknown session");
    let (st, body) = post(
        json!({"node": "gone", "session": w["session"], "key": w["key"], "frame": {"op": "ping"}}),
    )
    .await;
    assert_eq!(st, 410, "{body}");
    let big = json!({"op": "publish", "channel": "x", "data": "y".repeat(2000)});
    let (st, _) = s.post(node.addr, big).await;
    assert_eq!(st, 413);
    for bad in [
        json!({"node": "a"}),
        json!({"node": "a", "session": "s", "key": "k", "frame": 5}),
        json!({"node": "a", "session": "s", "key": "k", "frame": {}, "extra": 1}),
        json!([1, 2]),
    ] {
        let (st, body) = post(bad.clone()).await;
        assert_eq!(st, 400, "{bad}: {body}");
    }
    let r = http()
        .post(format!("http://{}/emulation", node.addr))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = json!({"node": w["node"], "session": w["session"], "key": w["key"], "frame": {"op": "ping"}});
    let (st, _) = post_emulation(node.addr, &body, Some("https://evil.example")).await;
    assert_eq!(st, 403);
    let (st, _) = post_emulation(node.addr, &body, Some("https://app.example")).await;
    assert_eq!(st, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_sessions_count_as_connections_not_as_plain_http() {
    let node = start(config_from_toml(
        None,
        "a",
        "[limits]\nmax_http_connections = 2\nmax_connections = 4\n",
    ))
    .await;
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(Stream::open_sse(node.addr, "").await);
    }
    // Four long responses, and plain HTTP still has both of its places.
    let r = http()
        .get(format!("http://{}/healthz", node.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(metric_of(node.addr, "herald_connections").await, 4.0);
    let r = http()
        .get(format!("http://{}/sse", node.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        503,
        "the fifth session is above max_connections"
    );
    // A client that goes away ends its session at once, not at the next keep-alive
    // (15 s away here).
    drop(sessions);
    assert!(
        eventually(Duration::from_secs(3), || async {
            metric_of(node.addr, "herald_connections").await == 0.0
        })
        .await,
        "closed streams were not unregistered"
    );
}

const DURABLE: &str =
    "[namespaces.news]\nhistory_size = 100\nhistory_ttl = \"1h\"\npublish = \"anyone\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_op_posted_to_another_node_is_answered_on_the_stream_and_recovery_works() {
    let redis = Redis::start();
    let a = start(config_from_toml(Some(&redis), "a", DURABLE)).await;
    let b = start(config_from_toml(Some(&redis), "b", DURABLE)).await;
    let mut s = Stream::open_sse(a.addr, "").await;
    assert_eq!(s.welcome["node"], "a");
    // Posted to b: relayed to a, answered on a's stream.
    let r = s
        .request(b.addr, json!({"op": "subscribe", "channel": "news:x"}))
        .await;
    let epoch = r["result"]["epoch"].clone();
    assert!(epoch.is_string(), "{r}");
    for i in 1..=3 {
        let (st, _) = publish_http(b.addr, json!({"channel": "news:x", "data": i})).await;
        assert_eq!(st, 200);
    }
    let mut last = 0;
    for want in 1..=3u64 {
        let m = s.next_of("message").await;
        assert_eq!(m["offset"], want);
        last = want;
    }
    // A wrong key is refused by a, and b says so.
    let body = json!({"node": "a", "session": s.welcome["session"], "key": "1".repeat(32), "frame": {"op": "ping"}});
    assert_eq!(post_emulation(b.addr, &body, None).await.0, 404);

    // The client reconnects (through b this time) and recovers what it missed.
    drop(s);
    for i in 4..=6 {
        publish_http(a.addr, json!({"channel": "news:x", "data": i})).await;
    }
    let mut again = Stream::open_ndjson(b.addr, None).await;
    let r = again
        .request(
            a.addr,
            json!({"op": "subscribe", "channel": "news:x", "recover": {"epoch": epoch, "offset": last}}),
        )
        .await;
    assert_eq!(r["result"]["recovered"], true, "{r}");
    let offsets: Vec<u64> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(again.next_of("message").await["offset"].as_u64().unwrap());
        }
        v
    };
    assert_eq!(offsets, vec![4, 5, 6]);
    assert!(again.next_frame(Duration::from_millis(300)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_nobody_reads_is_closed_as_a_slow_consumer() {
    let node = start(config_from_toml(
        None,
        "a",
        "[limits]\noutbox_messages = 64\nmessages_per_sec = 100000\n",
    ))
    .await;
    let mut s = Stream::open_sse(node.addr, "").await;
    s.request(node.addr, json!({"op": "subscribe", "channel": "flood"}))
        .await;
    let data = "z".repeat(4000);
    let before = metric_of(node.addr, "herald_slow_consumer_closes_total").await;
    // Not reading: the body channel, hyper and the socket buffers fill, then the queue.
    for _ in 0..3000 {
        let (st, _) = publish_http(node.addr, json!({"channel": "flood", "data": data})).await;
        assert_eq!(st, 200);
        if metric_of(node.addr, "herald_slow_consumer_closes_total").await > before {
            break;
        }
    }
    assert!(
        metric_of(node.addr, "herald_slow_consumer_closes_total").await > before,
        "no slow-consumer close"
    );
    assert!(
        eventually(WAIT, || async {
            metric_of(node.addr, "herald_connections").await == 0.0
        })
        .await
    );
}
