//! What a client on the wire can do to a session (issues 26 and 27), each answered the
//! way PROTOCOL §2 says: tokens whose times are out of range or not yet valid, frames
//! that break RFC 6455, control-frame floods, rate-limit replies that keep their ids,
//! and channel names spelled with JSON escapes.
//!
//! The raw-frame tests speak WebSocket by hand over a TCP socket, because a client
//! library refuses to send what they send.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "test-secret-test-secret-test-secret!";
const TOKENS: &str = r#"
[auth]
jwt_hs256_secret = "test-secret-test-secret-test-secret!"
require_token = false
"#;

fn now() -> u64 {
    unix_now()
}

fn hs256(claims: Value) -> String {
    sign_hs256(SECRET, &claims)
}

#[tokio::test]
async fn a_token_with_exp_past_the_clock_is_refused_at_connect() {
    let node = start(config_from_toml(None, "t", TOKENS)).await;
    for exp in [1u64 << 63, u64::MAX] {
        let t = hs256(json!({"sub": "u", "exp": exp}));
        assert_eq!(
            upgrade_status(node.addr, &format!("?token={t}"), None).await,
            401,
            "exp {exp}"
        );
    }
    // Far but representable: accepted, and the session's expiry timer copes.
    let far = hs256(json!({"sub": "u", "exp": 1u64 << 40}));
    let mut c = Client::connect_path(node.addr, &format!("/ws?token={far}"))
        .await
        .expect("far exp accepted");
    let r = c.request(json!({"op": "ping"})).await;
    assert_eq!(r["result"], json!({}));
    node.stop().await;
}

#[tokio::test]
async fn a_refresh_with_exp_past_the_clock_is_refused_and_the_session_lives_on() {
    let node = start(config_from_toml(None, "t", TOKENS)).await;
    let t = hs256(json!({"sub": "u", "exp": now() + 600}));
    let mut c = Client::connect_path(node.addr, &format!("/ws?token={t}"))
        .await
        .unwrap();
    c.subscribe("news").await;
    let bad = hs256(json!({"sub": "u", "exp": 1u64 << 63}));
    let r = c.request(json!({"op": "refresh", "token": bad})).await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    // Still served, still subscribed.
    let status = http()
        .post(format!("http://{}/api/publish", node.addr))
        .json(&json!({"channel": "news", "data": 1}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    assert_eq!(numbers(&c.messages(1, WAIT).await), vec![1]);
    assert_eq!(metric_of(node.addr, "herald_connections").await, 1.0);
    c.close().await;
    // Nothing left behind once the client is gone.
    let addr = node.addr;
    assert!(
        eventually(WAIT, || async move {
            metric_of(addr, "herald_connections").await == 0.0
                && metric_of(addr, "herald_subscriptions").await == 0.0
        })
        .await,
        "connections or subscriptions left behind"
    );
    node.stop().await;
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let node = start(config_from_toml(None, "t", TOKENS)).await;
    let early = hs256(json!({"sub": "u", "nbf": now() + 86_400}));
    assert_eq!(
        upgrade_status(node.addr, &format!("?token={early}"), None).await,
        401
    );
    let ok = hs256(json!({"sub": "u", "nbf": now() - 5}));
    assert_eq!(
        upgrade_status(node.addr, &format!("?token={ok}"), None).await,
        101
    );
    // Through refresh too: the session keeps its old token.
    let mut c = Client::connect_path(node.addr, &format!("/ws?token={ok}"))
        .await
        .unwrap();
    let r = c.request(json!({"op": "refresh", "token": early})).await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    node.stop().await;
}

#[tokio::test]
async fn rate_limited_replies_carry_the_request_id() {
    let toml = "[limits]\nmessages_per_sec = 10\n";
    let node = start(config_from_toml(None, "t", toml)).await;
    let mut c = Client::connect(node.addr).await;
    // 40 frames at once against a bucket of 20: the last ones are refused.
    let burst: Vec<String> = (1000..1040)
        .map(|id| json!({"id": id, "op": "ping"}).to_string())
        .collect();
    for text in &burst {
        c.send_text(text).await;
    }
    let mut ids = Vec::new();
    let mut limited = 0;
    while ids.len() < 40 {
        let v = c
            .next_frame(WAIT)
            .await
            .unwrap_or_else(|| panic!("only {} replies: {ids:?}", ids.len()));
        if v["type"] != "reply" {
            continue;
        }
        let id = v["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("a reply without the request's id: {v}"));
        if v["error"]["code"] == "rate_limited" {
            limited += 1;
        }
        ids.push(id);
    }
    ids.sort_unstable();
    assert_eq!(ids, (1000..1040).collect::<Vec<u64>>());
    assert!(limited >= 10, "only {limited} refused");
    // Too malformed for an id: null stays right.
    for _ in 0..30 {
        c.send_text("not json").await;
    }
    let mut null_ids = 0;
    while let Some(v) = c.next_frame(Duration::from_millis(500)).await {
        if v["type"] == "reply" && v["id"].is_null() {
            null_ids += 1;
        }
    }
    assert_eq!(null_ids, 30);
    node.stop().await;
}

#[tokio::test]
async fn escaped_channel_names_are_one_channel_on_both_doors() {
    let node = start(config(None, "t")).await;
    let mut c = Client::connect(node.addr).await;
    // `"a\/b"` and `"\u0061b"` over WebSocket…
    for (escaped, name) in [(r#"a\/b"#, "a/b"), (r#"\u0061b"#, "ab")] {
        c.send_text(&format!(
            r#"{{"id":1,"op":"subscribe","channel":"{escaped}"}}"#
        ))
        .await;
        let r = c.reply_to(1).await;
        assert_eq!(r["result"], json!({}), "{escaped}: {r}");
        // …and over HTTP name the same channel as the plain spelling.
        let body = format!(r#"{{"channel":"{escaped}","data":"{name}"}}"#);
        let status = http()
            .post(format!("http://{}/api/publish", node.addr))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
        let m = c.next_message(WAIT).await.expect("delivered");
        assert_eq!(
            (m["channel"].as_str(), m["data"].as_str()),
            (Some(name), Some(name))
        );
    }
    // An escape that spells an invalid byte is refused on both doors.
    c.send_text(r#"{"id":2,"op":"subscribe","channel":"a\u0020b"}"#)
        .await;
    assert_eq!(c.reply_to(2).await["error"]["code"], "bad_request");
    let status = http()
        .post(format!("http://{}/api/publish", node.addr))
        .header("content-type", "application/json")
        .body(r#"{"channel":"a\u0020b","data":1}"#)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 400);
    node.stop().await;
}

// ---- raw frames -----------------------------------------------------------------

/// A WebSocket connection spoken by hand: the client's frames are built byte by byte.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// What the server sent next.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Text,
    Pong,
    Close(u16),
    /// The TCP connection ended without a close frame.
    Eof,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Raw {
            tcp,
            buf: Vec::new(),
        };
        let head = loop {
            if let Some(end) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
                raw.buf.drain(..end + 4);
                break head;
            }
            assert!(raw.fill().await, "no upgrade answer");
        };
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert_eq!(raw.next().await, Got::Text, "the welcome");
        raw
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(WAIT, self.tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Ok(_) => false,
            Err(_) => panic!("the server sent nothing for {WAIT:?}"),
        }
    }

    /// Sends one frame: `first` is the FIN/RSV/opcode byte; masked unless `unmasked`.
    async fn send(&mut self, first: u8, payload: &[u8], unmasked: bool) {
        let mut f = vec![first];
        let mask_bit = if unmasked { 0 } else { 0x80 };
        match payload.len() {
            n if n < 126 => f.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(mask_bit | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if unmasked {
            f.extend_from_slice(payload);
        } else {
            let key = [0x12, 0x34, 0x56, 0x78];
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        // The server may already have closed: a failed write is not the test's point.
        let _ = self.tcp.write_all(&f).await;
    }

    /// The next server frame (server frames are never masked).
    async fn next(&mut self) -> Got {
        loop {
            if let Some(got) = self.parse() {
                return got;
            }
            if !self.fill().await {
                return Got::Eof;
            }
        }
    }

    /// One whole frame from what has been read, if there is one.
    fn parse(&mut self) -> Option<Got> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let (len, at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if b.len() < at + len {
            return None;
        }
        let opcode = b[0] & 0x0f;
        let got = match opcode {
            1 => Got::Text,
            0xA => Got::Pong,
            8 if len >= 2 => Got::Close(u16::from_be_bytes([b[at], b[at + 1]])),
            8 => Got::Close(1005),
            other => panic!("unexpected server opcode {other}"),
        };
        self.buf.drain(..at + len);
        Some(got)
    }

    /// Reads until the close frame (or EOF), skipping text and pongs.
    async fn close_code(&mut self) -> Got {
        loop {
            match self.next().await {
                Got::Text | Got::Pong => continue,
                end => return end,
            }
        }
    }
}

const FIN: u8 = 0x80;
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;

#[tokio::test]
async fn frames_that_break_rfc_6455_are_closed_with_1002_or_1007() {
    let node = start(config(None, "t")).await;
    let ping = br#"{"op":"ping"}"#;
    let cases: Vec<(&str, u8, Vec<u8>, bool, u16)> = vec![
        (
            "unmasked client frame",
            FIN | TEXT,
            ping.to_vec(),
            true,
            1002,
        ),
        (
            "RSV1 without an extension",
            FIN | 0x40 | TEXT,
            ping.to_vec(),
            false,
            1002,
        ),
        (
            "RSV3 without an extension",
            FIN | 0x10 | TEXT,
            ping.to_vec(),
            false,
            1002,
        ),
        (
            "reserved data opcode",
            FIN | 0x3,
            ping.to_vec(),
            false,
            1002,
        ),
        (
            "reserved control opcode",
            FIN | 0xB,
            Vec::new(),
            false,
            1002,
        ),
        (
            "control frame over 125 bytes",
            FIN | PING,
            vec![b'x'; 126],
            false,
            1002,
        ),
        ("fragmented control frame", PING, b"x".to_vec(), false, 1002),
        ("stray continuation", FIN, ping.to_vec(), false, 1002),
        (
            "text that is not UTF-8",
            FIN | TEXT,
            vec![b'"', 0xff, 0xfe, b'"'],
            false,
            1007,
        ),
        (
            "close code 999",
            FIN | CLOSE,
            999u16.to_be_bytes().to_vec(),
            false,
            1002,
        ),
        (
            "close code 1005",
            FIN | CLOSE,
            1005u16.to_be_bytes().to_vec(),
            false,
            1002,
        ),
        (
            "close code 5000",
            FIN | CLOSE,
            5000u16.to_be_bytes().to_vec(),
            false,
            1002,
        ),
        (
            "close with a 1-byte body",
            FIN | CLOSE,
            vec![3],
            false,
            1002,
        ),
        (
            "a valid close",
            FIN | CLOSE,
            1000u16.to_be_bytes().to_vec(),
            false,
            1000,
        ),
        (
            "a valid 4xxx close",
            FIN | CLOSE,
            4321u16.to_be_bytes().to_vec(),
            false,
            1000,
        ),
    ];
    for (name, first, payload, unmasked, code) in cases {
        let mut raw = Raw::connect(node.addr).await;
        raw.send(first, &payload, unmasked).await;
        assert_eq!(raw.close_code().await, Got::Close(code), "{name}");
    }
    // None of them left a session behind.
    let addr = node.addr;
    assert!(
        eventually(WAIT, || async move {
            metric_of(addr, "herald_connections").await == 0.0
        })
        .await
    );
    node.stop().await;
}

#[tokio::test]
async fn a_flood_of_ping_frames_is_rate_limited_and_closed_with_1008() {
    let toml = "[limits]\nmessages_per_sec = 50\n";
    let node = start(config_from_toml(None, "t", toml)).await;
    let mut raw = Raw::connect(node.addr).await;
    // 200 pings every 50 ms (4,000/s, eighty times the rate) for at most 12 s, reading
    // what comes back in between so that the pongs never fill the node's queue.
    let burst: Vec<u8> = {
        let mut frame = vec![FIN | PING, 0x80 | 4, 1, 2, 3, 4];
        frame.extend([b'p' ^ 1, b'i' ^ 2, b'n' ^ 3, b'g' ^ 4]);
        frame.repeat(200)
    };
    let mut sent = 0;
    let mut pongs = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
    let end = 'flood: loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no close after {sent} pings ({pongs} pongs)"
        );
        if raw.tcp.write_all(&burst).await.is_ok() {
            sent += 200;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut chunk = [0u8; 65536];
        let mut eof = false;
        loop {
            match raw.tcp.try_read(&mut chunk) {
                Ok(0) => eof = true,
                Ok(n) => {
                    raw.buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => eof = true,
            }
            break;
        }
        while let Some(got) = raw.parse() {
            match got {
                Got::Pong => pongs += 1,
                Got::Text => {}
                end => break 'flood end,
            }
        }
        if eof {
            break Got::Eof;
        }
    };
    assert_eq!(end, Got::Close(1008), "after {sent} pings, {pongs} pongs");
    // Two seconds' bucket plus the refill while the abuse was proven: far fewer than sent.
    assert!(pongs <= 50 * 2 + 50 * 8, "{pongs} of {sent} pings answered");
    assert!(metric_of(node.addr, "herald_rate_limited_total").await > 0.0);
    node.stop().await;
}
