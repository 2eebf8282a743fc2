//! The lease of an ordered source (`ordered = true`): one node at a time reads it, and
//! another takes over once the holder stops renewing for `reclaim_idle`. The scripts
//! (`lease.lua`, `lease_release.lua`) make each take, renewal and release one atomic
//! step in Redis. When to renew, and what a new holder takes over, is the reader's.

use std::time::Duration;

use crate::backplane::redis::LuaScript;
use fred::clients::Client;
use fred::prelude::*;

const LEASE_LUA: &str = include_str!("../lease.lua");
const LEASE_RELEASE_LUA: &str = include_str!("../lease_release.lua");

pub(super) struct Lease {
    /// `<prefix>:ingest:<stream>:<group>:lease`, holding the holder's node id.
    key: String,
    /// This node.
    me: String,
    take: LuaScript,
    release: LuaScript,
}

impl Lease {
    pub(super) fn new(prefix: &str, stream: &str, group: &str, me: &str) -> Self {
        Self {
            key: format!("{prefix}:ingest:{stream}:{group}:lease"),
            me: me.to_string(),
            take: LuaScript::new(LEASE_LUA),
            release: LuaScript::new(LEASE_RELEASE_LUA),
        }
    }

    /// Takes or renews the lease for `hold_for`. True when this node holds it (renewed
    /// or newly taken), false when another node does.
    pub(super) async fn take(&self, client: &Client, hold_for: Duration) -> Result<bool, Error> {
        let status: i64 = self
            .take
            .run(
                client,
                vec![self.key.clone()],
                vec![self.me.clone().into(), (hold_for.as_millis() as i64).into()],
            )
            .await?;
        Ok(status != 0)
    }

    /// Gives the lease up (graceful stop), only if this node holds it. A failure is
    /// left to the lease's expiry.
    pub(super) async fn release(&self, client: &Client) {
        let _: Result<i64, _> = self
            .release
            .run(client, vec![self.key.clone()], vec![self.me.clone().into()])
            .await;
    }
}
