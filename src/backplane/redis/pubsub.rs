//! Which Redis pub/sub the engine speaks, and subscribing and publishing in it
//! (docs/ARCHITECTURE.md decision 13): classic (`SUBSCRIBE`/`PUBLISH`, every message
//! crosses the whole cluster bus) or sharded (`SSUBSCRIBE`/`SPUBLISH`, each channel
//! on the shard that owns its slot, so shards add pub/sub capacity).
//!
//! The mode is decided once, when Redis is first reached (`redis.pubsub`, docs/CONFIG.md):
//! `auto` is sharded on a cluster whose servers have `SSUBSCRIBE`, classic elsewhere.
//! The scripts that publish (`publish.rs`) ask [`PubSub::sharded`] which command to
//! run; keeping sharded subscriptions true to a changing cluster is `topology.rs`'s.

use std::sync::atomic::{AtomicU8, Ordering};

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use fred::util::redis_keyslot;
use futures_util::{StreamExt, TryStreamExt, stream};

use super::reply::map_err;
use crate::config::RedisPubSub;
use crate::error::BackplaneError;

/// Channels per classic SUBSCRIBE command when subscribing in bulk.
const SUBSCRIBE_CHUNK: usize = 500;
/// Sharded subscriptions in flight at once when subscribing in bulk. A cluster refuses
/// an SSUBSCRIBE whose channels lie in different slots, and every Herald channel has
/// a slot of its own (its `{channel}` hash tag), so each channel is one command; they
/// are written back to back on each shard's connection (pipelined) instead of one
/// round trip after another, which is what makes 10,000 channels take a fraction of a
/// second instead of several (measured in `tests/redis_cluster.rs`).
const SHARDED_IN_FLIGHT: usize = 1024;

const UNDECIDED: u8 = 0;
const CLASSIC: u8 = 1;
const SHARDED: u8 = 2;

pub(super) struct PubSub {
    choice: RedisPubSub,
    mode: AtomicU8,
    client: Client,
    subscriber: SubscriberClient,
}

impl PubSub {
    pub(super) fn new(choice: RedisPubSub, client: Client, subscriber: SubscriberClient) -> Self {
        Self {
            choice,
            mode: AtomicU8::new(UNDECIDED),
            client,
            subscriber,
        }
    }

    /// Whether the mode has been decided (the engine is not connected before).
    pub(super) fn is_decided(&self) -> bool {
        self.mode.load(Ordering::Acquire) != UNDECIDED
    }

    /// True when sharded pub/sub is in use.
    pub(super) fn sharded(&self) -> bool {
        self.mode.load(Ordering::Acquire) == SHARDED
    }

    /// True on a cluster in sharded mode: the one case whose subscriptions follow
    /// slots and need `topology.rs`.
    pub(super) fn follows_slots(&self) -> bool {
        self.sharded() && self.subscriber.is_clustered()
    }

    /// Decides the mode once Redis answers; returns whether it is sharded. A forced
    /// `sharded` on a Redis without `SSUBSCRIBE` is an error that keeps the node
    /// unready, with the reason.
    pub(super) async fn decide(&self) -> Result<bool, BackplaneError> {
        if self.is_decided() {
            return Ok(self.sharded());
        }
        let sharded = match self.choice {
            RedisPubSub::Classic => false,
            RedisPubSub::Sharded => {
                if !self.has_sharded_pubsub().await? {
                    return Err(BackplaneError::Unavailable(
                        "redis.pubsub = \"sharded\", but this Redis has no SSUBSCRIBE \
                         (it needs Redis 7.0 or later)"
                            .into(),
                    ));
                }
                true
            }
            RedisPubSub::Auto => {
                self.subscriber.is_clustered() && self.has_sharded_pubsub().await?
            }
        };
        self.mode
            .store(if sharded { SHARDED } else { CLASSIC }, Ordering::Release);
        Ok(sharded)
    }

    /// `COMMAND INFO SSUBSCRIBE` answers `[nil]` on a Redis that does not know it.
    async fn has_sharded_pubsub(&self) -> Result<bool, BackplaneError> {
        let cmd = CustomCommand::new_static("COMMAND", ClusterHash::Random, false);
        let reply: Value = self
            .client
            .custom(cmd, vec!["INFO", "SSUBSCRIBE"])
            .await
            .map_err(map_err)?;
        Ok(match reply {
            Value::Array(v) => v.first().is_some_and(|c| !c.is_null()),
            _ => false,
        })
    }

    /// Subscribes to one pub/sub channel and returns once Redis has run it (the
    /// subscribe barrier, PROTOCOL §2.2).
    pub(super) async fn subscribe(&self, name: String) -> Result<(), BackplaneError> {
        if self.sharded() {
            // fred returns SSUBSCRIBE's own reply (it follows MOVED with it), which
            // Redis sends only once it has run the command: the confirmation itself.
            return self.subscriber.ssubscribe(name).await.map_err(map_err);
        }
        self.subscriber.subscribe(name).await.map_err(map_err)?;
        self.confirm_classic().await
    }

    /// Subscribes to many pub/sub channels (after a reconnect or a resync).
    pub(super) async fn subscribe_many(&self, names: Vec<String>) -> Result<(), BackplaneError> {
        if self.sharded() {
            return stream::iter(names)
                .map(|n| self.subscriber.ssubscribe(n))
                .buffer_unordered(SHARDED_IN_FLIGHT)
                .try_collect::<()>()
                .await
                .map_err(map_err);
        }
        for chunk in names.chunks(SUBSCRIBE_CHUNK) {
            self.subscriber
                .subscribe(chunk.to_vec())
                .await
                .map_err(map_err)?;
        }
        self.confirm_classic().await
    }

    pub(super) async fn unsubscribe(&self, name: String) -> Result<(), BackplaneError> {
        if self.sharded() {
            self.subscriber.sunsubscribe(name).await.map_err(map_err)
        } else {
            self.subscriber.unsubscribe(name).await.map_err(map_err)
        }
    }

    /// `PUBLISH` or `SPUBLISH` on the command client; the number of subscribers
    /// (nodes) that received it.
    pub(super) async fn publish(
        &self,
        name: String,
        payload: bytes::Bytes,
    ) -> Result<i64, BackplaneError> {
        if self.sharded() {
            self.client.spublish(name, payload).await.map_err(map_err)
        } else {
            self.client.publish(name, payload).await.map_err(map_err)
        }
    }

    /// Waits until Redis has run the classic SUBSCRIBEs written before. fred answers
    /// SUBSCRIBE as soon as it is written, since its replies arrive out of band; a
    /// PING on the same connection is answered only after every command before it, so
    /// its answer is Redis's confirmation. On a cluster fred sends every classic
    /// subscription command to the server of the slot of the client's id, so the PING
    /// is sent to that slot too.
    async fn confirm_classic(&self) -> Result<(), BackplaneError> {
        if !self.subscriber.is_clustered() {
            let _: Value = self.subscriber.ping(None).await.map_err(map_err)?;
            return Ok(());
        }
        let slot = redis_keyslot(self.subscriber.id().as_bytes());
        let cmd = CustomCommand::new_static("PING", ClusterHash::Custom(slot), false);
        let _: Value = self
            .subscriber
            .custom(cmd, Vec::<Value>::new())
            .await
            .map_err(map_err)?;
        Ok(())
    }
}
