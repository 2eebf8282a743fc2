//! Running a Lua script of the engine (or of ingest) by its SHA, loaded on demand on
//! the server that holds its keys.
//!
//! fred's own reload (`evalsha_with_reload`) answers `NOSCRIPT` with a `SCRIPT LOAD`
//! sent to every server of a cluster at once. A slot that just moved is the common
//! reason for a `NOSCRIPT` (its new owner never ran the script), and while it moves
//! that all-servers command can fail to route, after which fred closed every
//! connection of the client and did not reconnect (seen in `tests/redis_cluster.rs`'s
//! migration test: publishing never resumed). Loading the script on the one server
//! that answered `NOSCRIPT`, by the slot of the first key, avoids both.

use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{ClusterHash, CustomCommand, FromValue};
use fred::util::redis_keyslot;

/// A Lua script and its SHA.
pub struct LuaScript {
    lua: String,
    script: Script,
}

impl LuaScript {
    pub fn new(lua: impl Into<String>) -> Self {
        let lua = lua.into();
        Self {
            script: Script::from_lua(lua.clone()),
            lua,
        }
    }

    /// `EVALSHA`, and on `NOSCRIPT` a `SCRIPT LOAD` where the keys live, then
    /// `EVALSHA` once more.
    pub async fn run<R: FromValue>(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<R, Error> {
        match self
            .script
            .evalsha::<R, _, _, _>(client, keys.clone(), args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                let hash = keys
                    .first()
                    .map(|k| ClusterHash::Custom(redis_keyslot(k.as_bytes())))
                    .unwrap_or(ClusterHash::Random);
                let load = CustomCommand::new_static("SCRIPT", hash, false);
                let _: Value = client.custom(load, vec!["LOAD", self.lua.as_str()]).await?;
                self.script.evalsha(client, keys, args).await
            }
            other => other,
        }
    }
}
