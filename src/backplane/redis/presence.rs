//! Presence in Redis (PROTOCOL §4): per channel a hash of sessions, a sorted set of
//! their expiries and a hash counting each user's sessions, changed only by the
//! scripts (`presence_*.lua`) so that the three stay in step. When to join, refresh
//! or sweep is the node's (`presence.rs`); checking the link first is the engine's.

use std::time::Duration;

use super::script::LuaScript;
use fred::clients::Client;
use fred::prelude::*;

use super::keys::Keys;
use super::reply::{map_err, value_str};
use crate::backplane::PresenceEntry;
use crate::error::BackplaneError;

const PRESENCE_JOIN_LUA: &str = include_str!("../presence_join.lua");
const PRESENCE_LEAVE_LUA: &str = include_str!("../presence_leave.lua");
const PRESENCE_REFRESH_LUA: &str = include_str!("../presence_refresh.lua");
const PRESENCE_SWEEP_LUA: &str = include_str!("../presence_sweep.lua");
/// Most expired sessions one sweep call removes (the next sweep takes the rest).
const SWEEP_BATCH: i64 = 1000;

pub(super) struct Presence {
    client: Client,
    keys: Keys,
    join: LuaScript,
    leave: LuaScript,
    refresh: LuaScript,
    sweep: LuaScript,
}

impl Presence {
    pub(super) fn new(client: Client, keys: Keys) -> Self {
        Self {
            client,
            keys,
            join: LuaScript::new(PRESENCE_JOIN_LUA),
            leave: LuaScript::new(PRESENCE_LEAVE_LUA),
            refresh: LuaScript::new(PRESENCE_REFRESH_LUA),
            sweep: LuaScript::new(PRESENCE_SWEEP_LUA),
        }
    }

    /// True when the session is new to the channel.
    pub(super) async fn join(
        &self,
        channel: &str,
        entry: &PresenceEntry,
        ttl: Duration,
    ) -> Result<bool, BackplaneError> {
        let args: Vec<Value> = vec![
            entry.session.as_str().into(),
            entry.json.as_str().into(),
            entry.user.as_deref().unwrap_or("").into(),
            (now_ms() + ttl.as_millis() as i64).into(),
            presence_key_ttl(ttl).into(),
        ];
        let new: i64 = self
            .join
            .run(&self.client, self.keys.presence(channel), args)
            .await
            .map_err(map_err)?;
        Ok(new == 1)
    }

    /// True when the session was there.
    pub(super) async fn leave(
        &self,
        channel: &str,
        entry: &PresenceEntry,
    ) -> Result<bool, BackplaneError> {
        let args: Vec<Value> = vec![
            entry.session.as_str().into(),
            entry.user.as_deref().unwrap_or("").into(),
        ];
        let gone: i64 = self
            .leave
            .run(&self.client, self.keys.presence(channel), args)
            .await
            .map_err(map_err)?;
        Ok(gone == 1)
    }

    /// Refreshes the entries' expiry, writing back any Redis lost; returns how many were
    /// written back.
    pub(super) async fn refresh(
        &self,
        channel: &str,
        entries: &[PresenceEntry],
        ttl: Duration,
    ) -> Result<u64, BackplaneError> {
        let mut args: Vec<Value> = Vec::with_capacity(2 + entries.len() * 3);
        args.push((now_ms() + ttl.as_millis() as i64).into());
        args.push(presence_key_ttl(ttl).into());
        for e in entries {
            args.push(e.session.as_str().into());
            args.push(e.json.as_str().into());
            args.push(e.user.as_deref().unwrap_or("").into());
        }
        let restored: i64 = self
            .refresh
            .run(&self.client, self.keys.presence(channel), args)
            .await
            .map_err(map_err)?;
        Ok(restored.max(0) as u64)
    }

    /// Removes up to [`SWEEP_BATCH`] expired sessions and returns them.
    pub(super) async fn sweep(&self, channel: &str) -> Result<Vec<PresenceEntry>, BackplaneError> {
        let args: Vec<Value> = vec![now_ms().into(), SWEEP_BATCH.into()];
        let reply: Vec<Value> = self
            .sweep
            .run(&self.client, self.keys.presence(channel), args)
            .await
            .map_err(map_err)?;
        Ok(parse_swept(&reply))
    }

    /// Every entry's JSON, or None when there are more than `max`.
    pub(super) async fn list(
        &self,
        channel: &str,
        max: usize,
    ) -> Result<Option<Vec<String>>, BackplaneError> {
        let key = &self.keys.presence(channel)[0];
        let count: u64 = self.client.hlen(key).await.map_err(map_err)?;
        if count as usize > max {
            return Ok(None);
        }
        let entries: Vec<String> = self.client.hvals(key).await.map_err(map_err)?;
        Ok(Some(entries))
    }

    /// Sessions and distinct users.
    pub(super) async fn stats(&self, channel: &str) -> Result<(u64, u64), BackplaneError> {
        let keys = self.keys.presence(channel);
        let clients: u64 = self.client.hlen(&keys[0]).await.map_err(map_err)?;
        let users: u64 = self.client.hlen(&keys[2]).await.map_err(map_err)?;
        Ok((clients, users))
    }
}

/// The sweep's `[session, json]` pairs; a pair that does not read is skipped.
fn parse_swept(reply: &[Value]) -> Vec<PresenceEntry> {
    let mut out = Vec::with_capacity(reply.len() / 2);
    for pair in reply.chunks_exact(2) {
        let (Some(session), Some(json)) = (value_str(&pair[0]), value_str(&pair[1])) else {
            continue;
        };
        let user = serde_json::from_str::<serde_json::Value>(&json)
            .ok()
            .and_then(|v| v.get("user").and_then(|u| u.as_str()).map(String::from));
        out.push(PresenceEntry {
            session,
            user,
            json,
        });
    }
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Presence keys outlive their entries a little, so that a channel whose every node
/// vanished leaves nothing behind for long.
fn presence_key_ttl(ttl: Duration) -> i64 {
    (ttl.as_millis() as i64) * 2 + 5_000
}
