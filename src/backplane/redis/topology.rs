//! Keeps sharded subscriptions true to a changing Redis Cluster (sharded pub/sub on a
//! cluster only; docs/ARCHITECTURE.md decision 13).
//!
//! Two events can take a node's shard subscriptions away without any reconnect event:
//! a slot that migrates (its old owner pushes `sunsubscribe` for the slot's channels,
//! and fred drops that push) and a failover that leaves the subscriber's connection up
//! but its subscriptions gone. So every [`CHECK_INTERVAL`] this task:
//! 1. refreshes the subscriber's slot map (`CLUSTER SLOTS`) and compares which primary
//!    serves which slots with the last map it saw;
//! 2. probes every shard: the node holds a probe channel of its own in a slot of each
//!    primary, and an `SPUBLISH` to it must reach exactly this node's subscription and
//!    come back through the reader within [`PROBE_TIMEOUT`].
//!
//! A changed map or a failed probe asks the link watcher (`link.rs`) for a resync: a
//! new link generation, so the node subscribes every channel again (pipelined per
//! shard, `pubsub.rs`), reports unready until that is done, and checks every durable
//! channel against its history (gaps.rs). Plain channels resume within one check
//! period. What the node does on a new generation is the node's, not this file's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::util::redis_keyslot;
use tokio_util::sync::CancellationToken;

use super::RedisBackplane;

/// How often the slot map is compared and every shard probed.
pub(super) const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How long a probe may take from `SPUBLISH` to the reader.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Most probe channels whose last payload is kept (a cluster has far fewer primaries;
/// anything beyond this is someone else writing into the probe key space).
const MAX_PROBES: usize = 256;

/// Which primary (by node id) serves which slot ranges, sorted.
type SlotMap = Vec<(u16, u16, String)>;

/// The probe payloads the reader has seen, by probe tag: written by the reader,
/// read by [`watch`].
#[derive(Default)]
pub(super) struct Probes {
    seen: Mutex<HashMap<String, String>>,
}

impl Probes {
    /// Called by the reader for a message on a probe channel.
    pub(super) fn record(&self, tag: &str, payload: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() < MAX_PROBES || seen.contains_key(tag) {
            seen.insert(tag.to_string(), payload.to_string());
        }
    }

    fn all_seen(&self, tags: &[String], payload: &str) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        tags.iter()
            .all(|t| seen.get(t).is_some_and(|p| p == payload))
    }
}

/// The probe channels of one link generation and slot map.
struct ProbeSet {
    generation: u64,
    map: SlotMap,
    /// (primary's node id, probe tag)
    probes: Vec<(String, String)>,
}

/// Runs until `shutdown`; idle unless the engine is sharded on a cluster.
pub(super) async fn watch(
    this: Arc<RedisBackplane>,
    probes: Arc<Probes>,
    node_tag: String,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut link_rx = this.link.subscribe();
    // The map the current subscriptions were made under: read as soon as the link
    // comes up, so that a change right after is seen as one.
    let mut last_map: Option<SlotMap> = None;
    let mut set: Option<ProbeSet> = None;
    let mut round = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            changed = link_rx.changed() => if changed.is_err() { return },
        }
        let link = *link_rx.borrow_and_update();
        if !link.connected || !this.pubsub.follows_slots() {
            continue;
        }
        let Some(map) = slot_map(&this).await else {
            continue;
        };
        if last_map.as_ref().is_some_and(|m| *m != map) {
            tracing::warn!("redis cluster slot map changed; subscribing every channel again");
            last_map = Some(map);
            set = None;
            this.request_resync();
            continue;
        }
        last_map = Some(map.clone());
        match &set {
            Some(s) if s.generation == link.generation && s.map == map => {
                round += 1;
                if let Some(why) = probe(&this, &probes, s, round).await {
                    tracing::warn!(reason = %why, "redis shard probe failed; subscribing every channel again");
                    set = None;
                    this.request_resync();
                }
            }
            _ => {
                let s = ProbeSet {
                    generation: link.generation,
                    probes: probe_tags(&node_tag, &map),
                    map,
                };
                let names = s.probes.iter().map(|(_, t)| this.keys.probe(t)).collect();
                // A probe that cannot be subscribed now is set up again next round.
                if this.pubsub.subscribe_many(names).await.is_ok() {
                    set = Some(s);
                }
            }
        }
    }
}

/// The subscriber's slot map, refreshed from the cluster; None when the cluster
/// cannot be asked now (the link watcher sees that).
async fn slot_map(this: &RedisBackplane) -> Option<SlotMap> {
    if let Err(e) = this.subscriber.sync_cluster().await {
        tracing::debug!(error = %e, "reading the cluster slot map failed");
        return None;
    }
    let state = this.subscriber.cached_cluster_state()?;
    let mut map: SlotMap = state
        .slots()
        .iter()
        .map(|r| (r.start, r.end, r.id.to_string()))
        .collect();
    map.sort();
    Some(map)
}

/// One probe tag per primary: `<node tag>.<n>` with the first `n` whose slot that
/// primary serves.
fn probe_tags(node_tag: &str, map: &SlotMap) -> Vec<(String, String)> {
    let mut primaries: Vec<&str> = map.iter().map(|(_, _, id)| id.as_str()).collect();
    primaries.sort();
    primaries.dedup();
    primaries
        .into_iter()
        .filter_map(|id| {
            // A primary with a single slot needs 16,384 tries on average; the bound
            // leaves room for far worse luck.
            (0..1_000_000u32).find_map(|n| {
                let tag = format!("{node_tag}.{n}");
                let slot = redis_keyslot(tag.as_bytes());
                map.iter()
                    .any(|(a, b, p)| p == id && (*a..=*b).contains(&slot))
                    .then(|| (id.to_string(), tag))
            })
        })
        .collect()
}

/// Publishes one probe to every shard; the reason of the first failure, if any.
async fn probe(
    this: &RedisBackplane,
    probes: &Probes,
    set: &ProbeSet,
    round: u64,
) -> Option<String> {
    let payload = round.to_string();
    for (primary, tag) in &set.probes {
        match this
            .pubsub
            .publish(this.keys.probe(tag), payload.clone().into())
            .await
        {
            Ok(0) => {
                return Some(format!(
                    "shard {primary} has lost this node's subscriptions"
                ));
            }
            Ok(_) => {}
            // The link watcher handles an unreachable Redis; nothing to conclude here.
            Err(_) => return None,
        }
    }
    let tags: Vec<String> = set.probes.iter().map(|(_, t)| t.clone()).collect();
    let deadline = Instant::now() + PROBE_TIMEOUT;
    while !probes.all_seen(&tags, &payload) {
        if Instant::now() >= deadline {
            return Some(format!(
                "a probe was not delivered within {PROBE_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backplane::redis::Keys;

    #[test]
    fn every_primary_gets_a_probe_in_its_own_slots() {
        let map: SlotMap = vec![
            (0, 5460, "a".into()),
            (5461, 10922, "b".into()),
            (10923, 16382, "c".into()),
            (16383, 16383, "d".into()),
        ];
        let tags = probe_tags("n1", &map);
        assert_eq!(tags.len(), 4);
        for (id, tag) in &tags {
            let slot = redis_keyslot(tag.as_bytes());
            assert!(
                map.iter()
                    .any(|(a, b, p)| p == id && (*a..=*b).contains(&slot)),
                "{tag} (slot {slot}) is not on {id}"
            );
        }
    }

    #[test]
    fn probe_names_round_trip_and_are_not_channels() {
        let k = Keys::new("herald");
        let name = k.probe("n1.7");
        assert_eq!(name, "herald:probe:{n1.7}");
        assert_eq!(k.probe_of(&name), Some("n1.7"));
        assert_eq!(k.channel_of(&name), None);
        assert_eq!(k.probe_of("herald:{chat}:ch"), None);
        // The probe's slot is its tag's.
        assert_eq!(redis_keyslot(name.as_bytes()), redis_keyslot(b"n1.7"));
    }

    #[test]
    fn probes_need_this_rounds_payload_on_every_tag() {
        let p = Probes::default();
        let tags = vec!["a".to_string(), "b".to_string()];
        p.record("a", "1");
        assert!(!p.all_seen(&tags, "1"));
        p.record("b", "1");
        assert!(p.all_seen(&tags, "1"));
        assert!(!p.all_seen(&tags, "2"));
    }
}
