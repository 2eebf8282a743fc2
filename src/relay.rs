//! Client frames of sessions on the HTTP streaming transports (PROTOCOL §2.5): the
//! table of such sessions on this node, and the hop to another node when a frame was
//! posted to a node that does not hold its session, so that no load balancer needs
//! sticky sessions.
//!
//! `POST /emulation` may reach any node. A frame for a session here goes into that
//! session's input queue at once. A frame for a session on node N travels over the
//! backplane to N's node channel (PROTOCOL §4); N puts it into the session's queue and
//! answers on the sender's node channel whether it could (accepted, unknown session,
//! queue full). The reply to the op itself then reaches the client on its stream, as
//! it would over a WebSocket. A node that no longer exists receives nothing (0
//! receivers), which the poster learns at once.
//!
//! What the session does with a frame (rate limits, ops, replies) is `session.rs`'s;
//! the HTTP side (checks, status codes) is `transports/emulation.rs`'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::backplane::Backplane;
use crate::error::BackplaneError;
use crate::hub::SessionId;

/// How long a node waits for another node to say whether it took a frame.
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(3);
/// Frames waiting for another node's answer at once; beyond it a post is refused
/// with 503 rather than remembered.
pub const MAX_PENDING: usize = 10_000;

/// A session on an HTTP streaming transport, as a posted frame finds it.
pub struct StreamEntry {
    /// The session's name (the welcome frame's `session`).
    pub name: String,
    /// The secret only its client knows (the welcome frame's `key`).
    pub key: String,
    /// Its client frames; bounded (`session::STREAM_INPUT`).
    pub input: mpsc::Sender<String>,
}

/// What became of a posted frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// In the session's queue; its reply comes on the session's stream.
    Accepted,
    /// No such session on that node, or the key is not its key.
    Unknown,
    /// The session's queue is full: its client posts faster than it is served.
    Busy,
}

/// Why a frame could not be handed to another node.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("node {0} is not connected to the fleet")]
    NoSuchNode(String),
    #[error("node {0} did not answer within {RELAY_TIMEOUT:?}")]
    NoAnswer(String),
    #[error("too many frames in flight to other nodes")]
    TooMany,
    #[error(transparent)]
    Backplane(#[from] BackplaneError),
}

/// What nodes send each other on their node channels.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum NodeMessage {
    Emulation {
        from: String,
        request: u64,
        session: String,
        key: String,
        frame: String,
    },
    EmulationResult {
        request: u64,
        status: Delivery,
    },
}

pub struct Relay {
    node_id: String,
    streams: DashMap<SessionId, StreamEntry>,
    pending: DashMap<u64, oneshot::Sender<Delivery>>,
    next_request: AtomicU64,
    /// Set once by the wiring: the backplane is built after the relay, since its
    /// inbound side hands node messages here.
    backplane: OnceLock<Arc<dyn Backplane>>,
}

impl Relay {
    pub fn new(node_id: &str) -> Arc<Self> {
        Arc::new(Self {
            node_id: node_id.to_string(),
            streams: DashMap::new(),
            pending: DashMap::new(),
            next_request: AtomicU64::new(1),
            backplane: OnceLock::new(),
        })
    }

    pub fn attach(&self, backplane: Arc<dyn Backplane>) {
        let _ = self.backplane.set(backplane);
    }

    /// Makes a streaming session reachable by posted frames.
    pub fn register(&self, id: SessionId, entry: StreamEntry) {
        self.streams.insert(id, entry);
    }

    pub fn unregister(&self, id: SessionId) {
        self.streams.remove(&id);
    }

    /// Puts a frame into a session of this node.
    pub fn deliver_local(&self, session: &str, key: &str, frame: String) -> Delivery {
        let Some(input) = self.input_of(session, key) else {
            return Delivery::Unknown;
        };
        match input.try_send(frame) {
            Ok(()) => Delivery::Accepted,
            Err(mpsc::error::TrySendError::Full(_)) => Delivery::Busy,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Unknown,
        }
    }

    /// Puts a frame into session `session` of node `node`, this one or another.
    pub async fn deliver(
        &self,
        node: &str,
        session: &str,
        key: &str,
        frame: String,
    ) -> Result<Delivery, RelayError> {
        if node == self.node_id {
            return Ok(self.deliver_local(session, key, frame));
        }
        let Some(backplane) = self.backplane.get() else {
            return Err(RelayError::NoSuchNode(node.into()));
        };
        if self.pending.len() >= MAX_PENDING {
            return Err(RelayError::TooMany);
        }
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.insert(request, tx);
        // Removes the entry however this ends (answer, timeout, error, cancellation).
        let _pending = PendingGuard {
            pending: &self.pending,
            request,
        };
        let message = NodeMessage::Emulation {
            from: self.node_id.clone(),
            request,
            session: session.into(),
            key: key.into(),
            frame,
        };
        let payload = Bytes::from(serde_json::to_vec(&message).unwrap_or_default());
        if backplane.send_to_node(node, payload).await? == 0 {
            return Err(RelayError::NoSuchNode(node.into()));
        }
        match tokio::time::timeout(RELAY_TIMEOUT, rx).await {
            Ok(Ok(status)) => Ok(status),
            _ => Err(RelayError::NoAnswer(node.into())),
        }
    }

    /// A message on this node's node channel (called by the backplane's reader: never
    /// blocks). What does not parse is dropped with a debug line: anyone with Redis
    /// access can write there.
    pub fn on_node_message(&self, payload: &[u8]) {
        let message = match serde_json::from_slice::<NodeMessage>(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "dropped a node message that does not parse");
                return;
            }
        };
        match message {
            NodeMessage::Emulation {
                from,
                request,
                session,
                key,
                frame,
            } => {
                let status = self.deliver_local(&session, &key, frame);
                let Some(backplane) = self.backplane.get().cloned() else {
                    return;
                };
                let answer = NodeMessage::EmulationResult { request, status };
                let payload = Bytes::from(serde_json::to_vec(&answer).unwrap_or_default());
                tokio::spawn(async move {
                    if let Err(e) = backplane.send_to_node(&from, payload).await {
                        tracing::debug!(node = %from, error = %e, "could not answer a relayed frame");
                    }
                });
            }
            NodeMessage::EmulationResult { request, status } => {
                if let Some((_, tx)) = self.pending.remove(&request) {
                    let _ = tx.send(status);
                }
            }
        }
    }

    /// The input queue of session `name` if `key` is its key. The id is read from the
    /// name (its hex digits after the 16 random ones), then name and key are both
    /// checked, the key without stopping at the first difference.
    fn input_of(&self, name: &str, key: &str) -> Option<mpsc::Sender<String>> {
        let id = name
            .strip_prefix("s-")
            .and_then(|rest| rest.get(16..))
            .and_then(|hex| SessionId::from_str_radix(hex, 16).ok())?;
        let entry = self.streams.get(&id)?;
        if entry.name != name || !same_secret(entry.key.as_bytes(), key.as_bytes()) {
            return None;
        }
        Some(entry.input.clone())
    }
}

struct PendingGuard<'a> {
    pending: &'a DashMap<u64, oneshot::Sender<Delivery>>,
    request: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.remove(&self.request);
    }
}

/// Compares two secrets without stopping at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(relay: &Relay, id: SessionId, cap: usize) -> (String, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(cap);
        let name = format!("s-{:016x}{:x}", 0xabcdu64, id);
        relay.register(
            id,
            StreamEntry {
                name: name.clone(),
                key: "k".repeat(32),
                input: tx,
            },
        );
        (name, rx)
    }

    #[test]
    fn a_local_frame_needs_the_name_and_the_key() {
        let relay = Relay::new("a");
        let (name, mut rx) = entry(&relay, 7, 1);
        let key = "k".repeat(32);
        assert_eq!(
            relay.deliver_local(&name, &key, "f1".into()),
            Delivery::Accepted
        );
        assert_eq!(rx.try_recv().unwrap(), "f1");
        assert_eq!(
            relay.deliver_local(&name, "wrong", "x".into()),
            Delivery::Unknown
        );
        assert_eq!(
            relay.deliver_local(&name.replace("abcd", "abce"), &key, "x".into()),
            Delivery::Unknown
        );
        for bad in [
            "",
            "s-",
            "s-zz",
            "x-0000000000000000007",
            "s-0000000000000000ffffffffffffffffffff",
        ] {
            assert_eq!(
                relay.deliver_local(bad, &key, "x".into()),
                Delivery::Unknown,
                "{bad}"
            );
        }
        assert_eq!(
            relay.deliver_local(&name, &key, "f2".into()),
            Delivery::Accepted
        );
        assert_eq!(
            relay.deliver_local(&name, &key, "f3".into()),
            Delivery::Busy
        );
        relay.unregister(7);
        assert_eq!(
            relay.deliver_local(&name, &key, "f4".into()),
            Delivery::Unknown
        );
    }

    #[test]
    fn node_messages_round_trip_and_junk_is_dropped() {
        let relay = Relay::new("a");
        let (name, mut rx) = entry(&relay, 1, 4);
        let m = NodeMessage::Emulation {
            from: "b".into(),
            request: 3,
            session: name,
            key: "k".repeat(32),
            frame: r#"{"op":"ping","id":1}"#.into(),
        };
        relay.on_node_message(&serde_json::to_vec(&m).unwrap());
        assert_eq!(rx.try_recv().unwrap(), r#"{"op":"ping","id":1}"#);
        for junk in [
            &b"not json"[..],
            b"{}",
            b"{\"type\":\"emulation\"}",
            b"\xff\xfe",
        ] {
            relay.on_node_message(junk);
        }
        let (tx, mut answer) = oneshot::channel();
        relay.pending.insert(9, tx);
        let r = NodeMessage::EmulationResult {
            request: 9,
            status: Delivery::Busy,
        };
        relay.on_node_message(&serde_json::to_vec(&r).unwrap());
        assert_eq!(answer.try_recv().unwrap(), Delivery::Busy);
    }
}
