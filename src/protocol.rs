//! The wire format of docs/PROTOCOL.md: channel names, client frames, server frames
//! and backplane payloads. Frames are encoded once (docs/ARCHITECTURE.md decision 1).
//!
//! Parsing is total: any input, however hostile, yields either a typed frame or a
//! [`FrameError`] carrying the `id` to answer (if one could be read). Encoding builds
//! each `message` frame once, as bytes that every subscriber shares; nothing here
//! serialises per subscriber.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny};
use serde_json::value::RawValue;

use crate::error::ErrorCode;

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;
/// Largest client-chosen request id (2^53 − 1, exact in JavaScript).
pub const MAX_ID: u64 = (1 << 53) - 1;

/// Checks a channel name against PROTOCOL §1.
pub fn validate_channel(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_CHANNEL_LEN {
        return Err(format!("channel name must be 1 to {MAX_CHANNEL_LEN} bytes"));
    }
    if let Some(c) = name.bytes().find(|b| !is_channel_byte(*b)) {
        return Err(format!("channel name contains the invalid byte 0x{c:02x}"));
    }
    Ok(())
}

fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.' | b'@' | b'/' | b'=' | b',')
}

/// The namespace of a channel: the part before its first `:`, or "" (the default).
pub fn namespace_of(channel: &str) -> &str {
    channel.split_once(':').map(|(ns, _)| ns).unwrap_or("")
}

/// A client request id, validated.
pub type RequestId = u64;

/// `recover` / `since` position: an epoch and an offset.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StreamPosition {
    #[serde(default)]
    pub epoch: String,
    pub offset: u64,
}

/// One operation a client asked for.
#[derive(Debug)]
pub enum Op<'a> {
    Subscribe {
        channel: Cow<'a, str>,
        recover: Option<StreamPosition>,
    },
    Unsubscribe {
        channel: Cow<'a, str>,
    },
    Publish {
        channel: Cow<'a, str>,
        data: &'a RawValue,
        idempotency_key: Option<String>,
    },
    History {
        channel: Cow<'a, str>,
        since: Option<StreamPosition>,
        limit: Option<u64>,
    },
    Presence {
        channel: Cow<'a, str>,
    },
    PresenceStats {
        channel: Cow<'a, str>,
    },
    Refresh {
        token: String,
    },
    Ping,
}

/// A parsed client frame: its id (if any) and its operation.
#[derive(Debug)]
pub struct ClientFrame<'a> {
    pub id: Option<RequestId>,
    pub op: Op<'a>,
}

/// A client frame that cannot be served: the id to answer (None → `"id":null`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub id: Option<RequestId>,
    pub code: ErrorCode,
    pub message: String,
}

impl FrameError {
    fn bad(id: Option<RequestId>, message: impl Into<String>) -> Self {
        Self {
            id,
            code: ErrorCode::BadRequest,
            message: message.into(),
        }
    }
}

/// Fields of a client frame. Everything is optional and loosely typed so that the
/// frame's `id` can be read even when the rest is wrong.
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(default)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow)]
    op: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    channel: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    recover: Option<&'a RawValue>,
    #[serde(default, borrow)]
    since: Option<&'a RawValue>,
    #[serde(default, borrow)]
    limit: Option<&'a RawValue>,
    #[serde(default, borrow)]
    token: Option<&'a RawValue>,
    #[serde(default, borrow)]
    idempotency_key: Option<&'a RawValue>,
}

/// Keeps `"data": null` as a present value (JSON null is valid data), unlike `Option`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Only checks that the text is one JSON object, to tell "not an object" from "bad field".
#[derive(Deserialize)]
struct AnyObject {
    #[serde(flatten)]
    _rest: std::collections::HashMap<String, IgnoredAny>,
}

/// Parses one client text frame.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame<'_>, FrameError> {
    let raw = read_raw(text)?;
    let id = match raw.id {
        None => None,
        Some(v) => Some(parse_id(v).map_err(|m| FrameError::bad(None, m))?),
    };
    let Some(op) = raw.op.as_deref() else {
        return Err(FrameError::bad(id, "missing field 'op'"));
    };
    let f = Fields { raw: &raw, id };
    let op = match op {
        "subscribe" => Op::Subscribe {
            channel: f.channel()?,
            recover: f.position(raw.recover, "recover")?,
        },
        "unsubscribe" => Op::Unsubscribe {
            channel: f.channel()?,
        },
        "publish" => f.publish()?,
        "history" => f.history()?,
        "presence" => Op::Presence {
            channel: f.channel()?,
        },
        "presence_stats" => Op::PresenceStats {
            channel: f.channel()?,
        },
        "refresh" => Op::Refresh { token: f.token()? },
        "ping" => Op::Ping,
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(FrameError::bad(id, format!("unknown op '{shown}'")));
        }
    };
    Ok(ClientFrame { id, op })
}

/// The frame as a JSON object of loosely typed fields, or why it is not one (with
/// the id, when one can be read beside a field of the wrong type).
fn read_raw(text: &str) -> Result<RawFrame<'_>, FrameError> {
    serde_json::from_str(text).map_err(|e| {
        let msg = if serde_json::from_str::<AnyObject>(text).is_ok() {
            format!("invalid frame: {e}")
        } else {
            "a frame must be one JSON object".to_string()
        };
        FrameError::bad(peek_id(text), msg)
    })
}

/// The fields of one frame, read as an op needs them; every refusal carries the id.
struct Fields<'r, 'a> {
    raw: &'r RawFrame<'a>,
    id: Option<RequestId>,
}

impl<'a> Fields<'_, 'a> {
    fn bad(&self, message: impl Into<String>) -> FrameError {
        FrameError::bad(self.id, message)
    }

    fn channel(&self) -> Result<Cow<'a, str>, FrameError> {
        let v = self
            .raw
            .channel
            .ok_or_else(|| self.bad("missing field 'channel'"))?;
        let name = json_str(v).ok_or_else(|| self.bad("'channel' must be a string"))?;
        validate_channel(&name).map_err(|m| self.bad(m))?;
        Ok(name)
    }

    fn position(
        &self,
        v: Option<&RawValue>,
        field: &str,
    ) -> Result<Option<StreamPosition>, FrameError> {
        match v {
            None => Ok(None),
            Some(v) if v.get() == "null" => Ok(None),
            Some(v) => serde_json::from_str(v.get()).map(Some).map_err(|_| {
                self.bad(format!(
                    "'{field}' must be {{\"epoch\":\"…\",\"offset\":N}}"
                ))
            }),
        }
    }

    fn publish(&self) -> Result<Op<'a>, FrameError> {
        let channel = self.channel()?;
        let data = self
            .raw
            .data
            .ok_or_else(|| self.bad("missing field 'data'"))?;
        let idempotency_key = match self.raw.idempotency_key {
            None => None,
            Some(v) => {
                let key: String = serde_json::from_str(v.get())
                    .map_err(|_| self.bad("'idempotency_key' must be a string"))?;
                validate_idempotency_key(&key).map_err(|m| self.bad(m))?;
                Some(key)
            }
        };
        Ok(Op::Publish {
            channel,
            data,
            idempotency_key,
        })
    }

    fn history(&self) -> Result<Op<'a>, FrameError> {
        let limit = match self.raw.limit {
            None => None,
            Some(v) => Some(
                serde_json::from_str::<u64>(v.get())
                    .map_err(|_| self.bad("'limit' must be a non-negative integer"))?,
            ),
        };
        Ok(Op::History {
            channel: self.channel()?,
            since: self.position(self.raw.since, "since")?,
            limit,
        })
    }

    fn token(&self) -> Result<String, FrameError> {
        self.raw
            .token
            .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
            .ok_or_else(|| self.bad("missing string field 'token'"))
    }
}

#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
}

fn parse_id(v: &RawValue) -> Result<RequestId, String> {
    match serde_json::from_str::<u64>(v.get()) {
        Ok(n) if n <= MAX_ID => Ok(n),
        _ => Err("'id' must be an integer from 0 to 2^53-1".to_string()),
    }
}

/// A JSON string value, borrowed when it has no escapes (the usual spelling of a
/// channel name), unescaped otherwise: `"a\/b"` and `"\u0061b"` name the same
/// channels as `"a/b"` and `"ab"`, as they do over HTTP.
fn json_str(v: &RawValue) -> Option<Cow<'_, str>> {
    let s = v.get();
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains(['\\', '"']) {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(s).ok().map(Cow::Owned)
}

/// The `id` of a client frame, if a valid one can be read, without serving the frame:
/// a refused frame (rate limit) is still answered with its own id (PROTOCOL §2.2).
pub fn peek_id(text: &str) -> Option<RequestId> {
    // serde would also read a struct from an array (`[7]`): only an object has an id.
    if !text.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str::<IdOnly>(text)
        .ok()
        .and_then(|f| f.id)
        .and_then(|v| parse_id(v).ok())
}

/// PROTOCOL §3: 1 to 128 printable ASCII characters.
pub fn validate_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 128 || !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("an idempotency key is 1 to 128 printable ASCII characters".into());
    }
    Ok(())
}

// ---- server → client ------------------------------------------------------------

/// The durable part of a message frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence<'a> {
    pub offset: u64,
    pub epoch: &'a str,
}

/// Where an ingested message came from: a microservice's stream and entry id (§5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source<'a> {
    pub stream: &'a str,
    pub id: &'a str,
}

/// Encodes `{"type":"message","channel":…,"data":…}` once; the bytes are then shared by
/// every subscriber on every node. Channel names need no JSON escaping (§1).
pub fn message_frame(channel: &str, data: &RawValue, seq: Option<Sequence<'_>>) -> Bytes {
    message_frame_from(channel, data, None, seq)
}

/// [`message_frame`] with an optional `source` member.
pub fn message_frame_from(
    channel: &str,
    data: &RawValue,
    source: Option<Source<'_>>,
    seq: Option<Sequence<'_>>,
) -> Bytes {
    let mut buf = BytesMut::with_capacity(48 + channel.len() + data.get().len());
    message_frame_open_into(&mut buf, channel, data, source);
    if let Some(seq) = seq {
        push_sequence(&mut buf, seq);
    }
    buf.put_u8(b'}');
    buf.freeze()
}

/// The frame without its closing brace, for the durable publish script, which appends
/// `,"offset":N,"epoch":"…"}` once Redis has assigned the offset.
pub fn message_frame_open(channel: &str, data: &RawValue, source: Option<Source<'_>>) -> Bytes {
    let mut buf = BytesMut::with_capacity(40 + channel.len() + data.get().len());
    message_frame_open_into(&mut buf, channel, data, source);
    buf.freeze()
}

fn message_frame_open_into(
    buf: &mut BytesMut,
    channel: &str,
    data: &RawValue,
    source: Option<Source<'_>>,
) {
    buf.put_slice(b"{\"type\":\"message\",\"channel\":\"");
    buf.put_slice(channel.as_bytes());
    buf.put_slice(b"\",\"data\":");
    buf.put_slice(data.get().as_bytes());
    if let Some(src) = source {
        let member = serde_json::json!({"stream": src.stream, "id": src.id});
        buf.put_slice(b",\"source\":");
        buf.put_slice(member.to_string().as_bytes());
    }
}

fn push_sequence(buf: &mut BytesMut, seq: Sequence<'_>) {
    buf.put_slice(b",\"offset\":");
    buf.put_slice(seq.offset.to_string().as_bytes());
    buf.put_slice(b",\"epoch\":");
    buf.put_slice(
        serde_json::to_string(seq.epoch)
            .unwrap_or_default()
            .as_bytes(),
    );
}

/// `{"type":"welcome",…}`.
pub fn welcome_frame(session: &str, node: &str, ping_interval_ms: u64) -> String {
    serde_json::json!({
        "type": "welcome",
        "session": session,
        "node": node,
        "ping_interval_ms": ping_interval_ms,
    })
    .to_string()
}

/// The welcome frame of a session on an HTTP streaming transport (PROTOCOL §2.5): the
/// WebSocket's, with the transport's name and the key that `POST /emulation` needs.
pub fn stream_welcome_frame(
    session: &str,
    node: &str,
    keep_alive_ms: u64,
    transport: &str,
    key: &str,
) -> String {
    serde_json::json!({
        "type": "welcome",
        "session": session,
        "node": node,
        "ping_interval_ms": keep_alive_ms,
        "transport": transport,
        "key": key,
    })
    .to_string()
}

/// `{"type":"reply","id":…,"result":…}`.
pub fn reply_ok(id: RequestId, result: &serde_json::Value) -> String {
    format!("{{\"type\":\"reply\",\"id\":{id},\"result\":{result}}}")
}

/// `{"type":"reply","id":…|null,"error":{"code":…,"message":…}}`.
pub fn reply_error(id: Option<RequestId>, code: ErrorCode, message: &str) -> String {
    let id = id.map(|i| i.to_string()).unwrap_or_else(|| "null".into());
    let error = serde_json::json!({"code": code.as_str(), "message": message});
    format!("{{\"type\":\"reply\",\"id\":{id},\"error\":{error}}}")
}

// ---- backplane payloads -----------------------------------------------------------

/// What a node learned from a backplane payload it will forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadKind {
    /// A `message`, with its offset and epoch when the channel is durable.
    Message { seq: Option<(u64, String)> },
    /// A `join` or `leave` presence event.
    Presence,
}

#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    channel: std::borrow::Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    client: Option<&'a RawValue>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default, borrow)]
    epoch: Option<std::borrow::Cow<'a, str>>,
}

/// Checks a payload that arrived on the backplane channel of `channel` (PROTOCOL §4).
/// Valid payloads are forwarded byte for byte; anything else is refused with a reason.
pub fn check_payload(channel: &str, payload: &str) -> Result<PayloadKind, String> {
    let p: Payload<'_> = serde_json::from_str(payload).map_err(|e| format!("not a frame: {e}"))?;
    if p.channel != channel {
        return Err(format!(
            "frame names channel '{}' on the backplane channel of '{channel}'",
            p.channel
        ));
    }
    match &*p.kind {
        "message" if p.data.is_some() => Ok(PayloadKind::Message {
            seq: match (p.offset, p.epoch) {
                (Some(o), Some(e)) => Some((o, e.into_owned())),
                (None, None) => None,
                _ => return Err("a durable frame carries both 'offset' and 'epoch'".into()),
            },
        }),
        "message" => Err("message frame without 'data'".into()),
        "join" | "leave" if p.client.is_some_and(|c| c.get().starts_with('{')) => {
            Ok(PayloadKind::Presence)
        }
        "join" | "leave" => Err("presence frame without a 'client' object".into()),
        other => Err(format!(
            "unknown frame type '{}'",
            other.chars().take(32).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        assert!(validate_channel("chat:room-7").is_ok());
        assert!(validate_channel("a_b-c:d.e@f/g=h,i").is_ok());
        assert!(validate_channel("").is_err());
        assert!(validate_channel("has space").is_err());
        assert!(validate_channel("star*").is_err());
        assert!(validate_channel("é").is_err());
        assert!(validate_channel(&"x".repeat(255)).is_ok());
        assert!(validate_channel(&"x".repeat(256)).is_err());
    }

    #[test]
    fn namespaces() {
        assert_eq!(namespace_of("chat:room:7"), "chat");
        assert_eq!(namespace_of("plain"), "");
        assert_eq!(namespace_of(":x"), "");
    }

    #[test]
    fn parses_publish_keeping_raw_data() {
        let f = parse_client_frame(r#"{"id":3,"op":"publish","channel":"c","data":{"a": [1, 2]}}"#)
            .unwrap();
        assert_eq!(f.id, Some(3));
        match f.op {
            Op::Publish { channel, data, .. } => {
                assert_eq!(channel, "c");
                assert_eq!(data.get(), r#"{"a": [1, 2]}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn null_data_is_data() {
        let f = parse_client_frame(r#"{"op":"publish","channel":"c","data":null}"#).unwrap();
        assert!(matches!(f.op, Op::Publish { data, .. } if data.get() == "null"));
    }

    #[test]
    fn errors_keep_the_id_when_readable() {
        let e = parse_client_frame(r#"{"id":9,"op":"nope"}"#).unwrap_err();
        assert_eq!((e.id, e.code), (Some(9), ErrorCode::BadRequest));
        let e = parse_client_frame(r#"{"id":9,"op":"subscribe"}"#).unwrap_err();
        assert_eq!(e.id, Some(9));
        assert!(e.message.contains("channel"));
        let e =
            parse_client_frame(r#"{"id":9,"op":"subscribe","channel":"bad name"}"#).unwrap_err();
        assert_eq!(e.id, Some(9));
        let e = parse_client_frame(r#"{"id":9,"op":5}"#).unwrap_err();
        assert_eq!(e.id, Some(9));
        let e = parse_client_frame("not json").unwrap_err();
        assert_eq!(e.id, None);
        let e = parse_client_frame("[1,2]").unwrap_err();
        assert_eq!(e.id, None);
        let e = parse_client_frame(r#"{"id":-1,"op":"ping"}"#).unwrap_err();
        assert_eq!(e.id, None);
        let e = parse_client_frame(r#"{"id":9007199254740992,"op":"ping"}"#).unwrap_err();
        assert_eq!(e.id, None);
        let e = parse_client_frame(r#"{"id":"7","op":"ping"}"#).unwrap_err();
        assert_eq!(e.id, None);
    }

    #[test]
    fn escaped_channel_names_are_the_name_they_spell() {
        for (text, name) in [
            (r#"{"op":"subscribe","channel":"a\/b"}"#, "a/b"),
            (r#"{"op":"subscribe","channel":"\u0061b"}"#, "ab"),
            (r#"{"op":"subscribe","channel":"plain:c"}"#, "plain:c"),
        ] {
            match parse_client_frame(text).unwrap().op {
                Op::Subscribe { channel, .. } => assert_eq!(channel, name, "{text}"),
                other => panic!("{other:?}"),
            }
        }
        // An escape that spells an invalid byte is refused for the byte, like over HTTP.
        for bad in [
            r#"{"id":1,"op":"subscribe","channel":"a\"b"}"#,
            r#"{"id":1,"op":"subscribe","channel":"a\u0000"}"#,
            r#"{"id":1,"op":"subscribe","channel":"a\nb"}"#,
        ] {
            let e = parse_client_frame(bad).unwrap_err();
            assert_eq!(e.id, Some(1));
            assert!(e.message.contains("invalid byte"), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn peek_id_reads_only_a_valid_id() {
        assert_eq!(peek_id(r#"{"id":1000,"op":"ping"}"#), Some(1000));
        assert_eq!(peek_id(r#"{"op":"publish","data":[1,2],"id":7}"#), Some(7));
        assert_eq!(peek_id(r#"{"op":"ping"}"#), None);
        assert_eq!(peek_id(r#"{"id":"7"}"#), None);
        assert_eq!(peek_id(r#"{"id":-1}"#), None);
        assert_eq!(peek_id("not json"), None);
        assert_eq!(peek_id("[1]"), None);
    }

    #[test]
    fn message_frames() {
        let data = RawValue::from_string(r#"{"t":"hi"}"#.into()).unwrap();
        let plain = message_frame("c:1", &data, None);
        assert_eq!(
            &plain[..],
            br#"{"type":"message","channel":"c:1","data":{"t":"hi"}}"#
        );
        let durable = message_frame(
            "c:1",
            &data,
            Some(Sequence {
                offset: 42,
                epoch: "e1",
            }),
        );
        let v: serde_json::Value = serde_json::from_slice(&durable).unwrap();
        assert_eq!(v["offset"], 42);
        assert_eq!(v["epoch"], "e1");
        assert_eq!(
            check_payload("c:1", std::str::from_utf8(&durable).unwrap()),
            Ok(PayloadKind::Message {
                seq: Some((42, "e1".into()))
            })
        );
    }

    #[test]
    fn payload_checks() {
        assert!(check_payload("c", r#"{"type":"message","channel":"c","data":1}"#).is_ok());
        assert!(check_payload("c", r#"{"type":"message","channel":"c","data":null}"#).is_ok());
        assert!(check_payload("c", r#"{"type":"message","channel":"d","data":1}"#).is_err());
        assert!(check_payload("c", r#"{"type":"message","channel":"c"}"#).is_err());
        assert!(check_payload("c", r#"{"type":"welcome","channel":"c","data":1}"#).is_err());
        assert!(
            check_payload(
                "c",
                r#"{"type":"join","channel":"c","client":{"session":"s"}}"#
            )
            .is_ok()
        );
        assert!(check_payload("c", r#"{"type":"join","channel":"c","client":3}"#).is_err());
        assert!(check_payload("c", "garbage").is_err());
        assert!(check_payload("c", "").is_err());
    }

    #[test]
    fn replies() {
        assert_eq!(
            reply_ok(7, &serde_json::json!({})),
            r#"{"type":"reply","id":7,"result":{}}"#
        );
        let e: serde_json::Value =
            serde_json::from_str(&reply_error(None, ErrorCode::BadRequest, "x\"y")).unwrap();
        assert!(e["id"].is_null());
        assert_eq!(e["error"]["code"], "bad_request");
        assert_eq!(e["error"]["message"], "x\"y");
    }
}
