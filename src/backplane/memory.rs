//! The in-process backplane: one node, no Redis. The default for `cargo run`.
//!
//! A publish goes straight to the node's [`Inbound`] (its hub). Durable channels keep a ring of their newest
//! `history_size` frames and an epoch, created with the ring; a ring unused for its
//! `history_ttl` is dropped, and the next use starts a new epoch, as Redis would after
//! its keys expired. Offsets are assigned and frames dispatched under one per-channel
//! lock, so every subscriber sees offsets in order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use tokio::sync::watch;

use super::{
    Backplane, Durability, History, HistoryQuery, Inbound, Link, Position, PresenceEntry,
    PublishRequest, Published, StoredMessage, new_epoch,
};
use crate::error::BackplaneError;
use crate::protocol::{self, Sequence};

struct Ring {
    epoch: String,
    offset: u64,
    frames: VecDeque<StoredMessage>,
    touched: Instant,
}

/// One channel's presence: sessions and a count of sessions per user.
#[derive(Default)]
struct Present {
    sessions: std::collections::HashMap<String, PresenceEntry>,
    users: std::collections::HashMap<String, u64>,
}

pub struct MemoryBackplane {
    inbound: Arc<dyn Inbound>,
    /// This node's id: the one node a node message can reach.
    node_id: String,
    rings: DashMap<Arc<str>, Arc<Mutex<Ring>>>,
    // Sessions of one process cannot vanish without leaving, so there is no expiry:
    // refresh and sweep have nothing to do.
    presence: DashMap<Arc<str>, Present>,
    /// (channel, key) → the first publish with that key.
    idempotency: Mutex<std::collections::HashMap<(Arc<str>, String), IdempotencyRecord>>,
    link: watch::Sender<Link>,
}

impl MemoryBackplane {
    pub fn new(inbound: Arc<dyn Inbound>, node_id: &str) -> Self {
        let (link, _) = watch::channel(Link {
            generation: 1,
            connected: true,
        });
        Self {
            inbound,
            node_id: node_id.to_string(),
            rings: DashMap::new(),
            presence: DashMap::new(),
            idempotency: Mutex::default(),
            link,
        }
    }

    /// The channel's ring, started afresh (new epoch) when missing or expired.
    fn ring(&self, channel: &str, d: Durability) -> Arc<Mutex<Ring>> {
        let fresh = || {
            Arc::new(Mutex::new(Ring {
                epoch: new_epoch(),
                offset: 0,
                frames: VecDeque::new(),
                touched: Instant::now(),
            }))
        };
        let ring = self
            .rings
            .entry(channel.into())
            .or_insert_with(fresh)
            .clone();
        let expired = lock(&ring).touched.elapsed() > d.history_ttl;
        if expired {
            let new = fresh();
            self.rings.insert(channel.into(), new.clone());
            return new;
        }
        ring
    }
}

impl MemoryBackplane {
    fn publish_now(&self, req: &PublishRequest<'_>) -> Result<Published, BackplaneError> {
        let now = Instant::now();
        let Some(d) = req.durable else {
            let frame = protocol::message_frame_from(req.channel, req.data, req.source, None);
            let frame =
                Utf8Bytes::try_from(frame).map_err(|e| BackplaneError::Protocol(e.to_string()))?;
            self.inbound.deliver(req.channel, &frame, None, now);
            return Ok(Published::Plain);
        };
        let ring = self.ring(req.channel, d);
        // One lock from offset to dispatch: the order of offsets is the order of delivery.
        let mut r = lock(&ring);
        r.offset += 1;
        r.touched = now;
        let offset = r.offset;
        let epoch = r.epoch.clone();
        let seq = Sequence {
            offset,
            epoch: &epoch,
        };
        let frame = protocol::message_frame_from(req.channel, req.data, req.source, Some(seq));
        let frame =
            Utf8Bytes::try_from(frame).map_err(|e| BackplaneError::Protocol(e.to_string()))?;
        r.frames.push_back(StoredMessage {
            offset,
            frame: frame.clone(),
        });
        while r.frames.len() as u64 > d.history_size {
            r.frames.pop_front();
        }
        self.inbound
            .deliver(req.channel, &frame, Some((offset, &epoch)), now);
        Ok(Published::Durable(Position { epoch, offset }))
    }
}

/// Above this many idempotency records, expired ones are dropped on the next publish.
const IDEMPOTENCY_PURGE_AT: usize = 10_000;

struct IdempotencyRecord {
    data: String,
    result: Published,
    expires: Instant,
}

fn lock(ring: &Mutex<Ring>) -> std::sync::MutexGuard<'_, Ring> {
    ring.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl Backplane for MemoryBackplane {
    async fn publish(&self, req: PublishRequest<'_>) -> Result<Published, BackplaneError> {
        let Some(idem) = req.idempotency else {
            return self.publish_now(&req);
        };
        // Check and publish under one lock: concurrent retries publish once.
        let mut records = self.idempotency.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if records.len() > IDEMPOTENCY_PURGE_AT {
            records.retain(|_, r| r.expires > now);
        }
        let key = (Arc::<str>::from(req.channel), idem.key.to_string());
        if let Some(prev) = records.get(&key).filter(|r| r.expires > now) {
            return if prev.data == req.data.get() {
                Ok(Published::Duplicate(Box::new(prev.result.clone())))
            } else {
                Err(BackplaneError::Conflict)
            };
        }
        let result = self.publish_now(&req)?;
        records.insert(
            key,
            IdempotencyRecord {
                data: req.data.get().to_string(),
                result: result.clone(),
                expires: now + idem.ttl,
            },
        );
        Ok(result)
    }

    async fn append_upstream(
        &self,
        _ns: &str,
        _maxlen: u64,
        _fields: &[(&str, &str)],
    ) -> Result<String, BackplaneError> {
        // Configuration refuses upstream namespaces without Redis; this is the backstop.
        Err(BackplaneError::Unavailable(
            "upstream namespaces need Redis".into(),
        ))
    }

    async fn subscribe(&self, _channel: &str) -> Result<(), BackplaneError> {
        Ok(())
    }

    async fn subscribe_many(&self, _channels: &[&str]) -> Result<(), BackplaneError> {
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &str) -> Result<(), BackplaneError> {
        Ok(())
    }

    fn link(&self) -> watch::Receiver<Link> {
        self.link.subscribe()
    }

    async fn send_to_node(&self, node: &str, payload: bytes::Bytes) -> Result<u64, BackplaneError> {
        if node != self.node_id {
            return Ok(0);
        }
        self.inbound.node_message(&payload);
        Ok(1)
    }

    async fn position(&self, channel: &str, d: Durability) -> Result<Position, BackplaneError> {
        let ring = self.ring(channel, d);
        let mut r = lock(&ring);
        r.touched = Instant::now();
        Ok(Position {
            epoch: r.epoch.clone(),
            offset: r.offset,
        })
    }

    async fn publish_event(&self, channel: &str, frame: Utf8Bytes) -> Result<(), BackplaneError> {
        self.inbound.deliver(channel, &frame, None, Instant::now());
        Ok(())
    }

    async fn presence_join(
        &self,
        channel: &str,
        entry: &PresenceEntry,
        _ttl: Duration,
    ) -> Result<bool, BackplaneError> {
        let mut p = self.presence.entry(channel.into()).or_default();
        let new = p
            .sessions
            .insert(entry.session.clone(), entry.clone())
            .is_none();
        if new && let Some(user) = &entry.user {
            *p.users.entry(user.clone()).or_default() += 1;
        }
        Ok(new)
    }

    async fn presence_leave(
        &self,
        channel: &str,
        entry: &PresenceEntry,
    ) -> Result<bool, BackplaneError> {
        let Some(mut p) = self.presence.get_mut(channel) else {
            return Ok(false);
        };
        let gone = p.sessions.remove(&entry.session).is_some();
        if gone && let Some(user) = &entry.user {
            let left = p.users.get_mut(user).map(|n| {
                *n = n.saturating_sub(1);
                *n
            });
            if left == Some(0) {
                p.users.remove(user);
            }
        }
        drop(p);
        self.presence
            .remove_if(channel, |_, p| p.sessions.is_empty());
        Ok(gone)
    }

    async fn presence_refresh(
        &self,
        _channel: &str,
        _entries: &[PresenceEntry],
        _ttl: Duration,
    ) -> Result<u64, BackplaneError> {
        Ok(0)
    }

    async fn presence_sweep(&self, _channel: &str) -> Result<Vec<PresenceEntry>, BackplaneError> {
        Ok(Vec::new())
    }

    async fn presence_list(
        &self,
        channel: &str,
        max: usize,
    ) -> Result<Option<Vec<String>>, BackplaneError> {
        let Some(p) = self.presence.get(channel) else {
            return Ok(Some(Vec::new()));
        };
        if p.sessions.len() > max {
            return Ok(None);
        }
        Ok(Some(p.sessions.values().map(|e| e.json.clone()).collect()))
    }

    async fn presence_stats(&self, channel: &str) -> Result<(u64, u64), BackplaneError> {
        Ok(self
            .presence
            .get(channel)
            .map(|p| (p.sessions.len() as u64, p.users.len() as u64))
            .unwrap_or((0, 0)))
    }

    async fn history(
        &self,
        channel: &str,
        d: Durability,
        query: HistoryQuery,
    ) -> Result<History, BackplaneError> {
        let ring = self.ring(channel, d);
        let r = lock(&ring);
        let messages: Vec<StoredMessage> = match query {
            HistoryQuery::After { offset, limit } => {
                let limit = limit.unwrap_or(u64::MAX) as usize;
                r.frames
                    .iter()
                    .filter(|m| m.offset > offset)
                    .take(limit)
                    .cloned()
                    .collect()
            }
            HistoryQuery::Newest { limit } => {
                let limit = limit.unwrap_or(u64::MAX) as usize;
                let skip = r.frames.len().saturating_sub(limit);
                r.frames.iter().skip(skip).cloned().collect()
            }
        };
        Ok(History {
            position: Position {
                epoch: r.epoch.clone(),
                offset: r.offset,
            },
            messages,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    /// Takes what the engine delivers and drops it: these tests read the engine.
    struct Nowhere;

    impl Inbound for Nowhere {
        fn deliver(&self, _: &str, _: &Utf8Bytes, _: Option<(u64, &str)>, _: Instant) {}
        fn lost_any(&self) {}
        fn node_message(&self, _: &[u8]) {}
    }

    fn engine() -> MemoryBackplane {
        MemoryBackplane::new(Arc::new(Nowhere), "test")
    }

    const D: Durability = Durability {
        history_size: 3,
        history_ttl: Duration::from_secs(60),
    };

    #[tokio::test]
    async fn offsets_are_consecutive_and_history_is_trimmed() {
        let e = engine();
        let data = RawValue::from_string("1".into()).unwrap();
        let req = PublishRequest {
            channel: "c",
            data: &data,
            durable: Some(D),
            idempotency: None,
            source: None,
        };
        for want in 1..=5 {
            match e.publish(req).await.unwrap() {
                Published::Durable(p) => assert_eq!(p.offset, want),
                other => panic!("{other:?}"),
            }
        }
        let h = e
            .history(
                "c",
                D,
                HistoryQuery::After {
                    offset: 0,
                    limit: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(
            h.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        let h = e
            .history("c", D, HistoryQuery::Newest { limit: Some(2) })
            .await
            .unwrap();
        assert_eq!(
            h.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![4, 5]
        );
        let h = e
            .history(
                "c",
                D,
                HistoryQuery::After {
                    offset: 3,
                    limit: Some(1),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            h.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![4]
        );
        assert_eq!(h.position.offset, 5);
    }

    #[tokio::test]
    async fn an_expired_channel_starts_a_new_epoch() {
        let e = engine();
        let short = Durability {
            history_size: 3,
            history_ttl: Duration::from_millis(20),
        };
        let first = e.position("c", short).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        let second = e.position("c", short).await.unwrap();
        assert_ne!(first.epoch, second.epoch);
        assert_eq!(second.offset, 0);
    }
}
