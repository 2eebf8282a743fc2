//! Publishing through Redis: a plain `PUBLISH`; an idempotent one (`idempotent_publish.lua`:
//! the key and the publish in one step); a durable one (`publish.lua`: the offset, the
//! history entry and the publish in one atomic step, idempotent or not); and the
//! upstream stream's `XADD`. With sharded pub/sub every publish is an `SPUBLISH`, the
//! scripts' too: each script is loaded twice, once as written and once with its
//! `PUBLISH` made `SPUBLISH` (the channel's keys and its pub/sub channel share the
//! `{channel}` slot, so a script may do both). Checking the link first is the
//! engine's (`redis.rs`); reading history back is `history.rs`'s.

use super::script::LuaScript;
use fred::clients::Client;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};

use std::sync::Arc;

use super::history::ttl_secs;
use super::keys::Keys;
use super::pubsub::PubSub;
use super::reply::{map_err, parse_position, value_str};
use crate::backplane::{Durability, Idempotency, PublishRequest, Published, new_epoch};
use crate::error::BackplaneError;
use crate::protocol;

const PUBLISH_LUA: &str = include_str!("../publish.lua");
const IDEMPOTENT_LUA: &str = include_str!("../idempotent_publish.lua");

/// A script as written (classic pub/sub) and as its sharded twin.
struct Scripts {
    classic: LuaScript,
    sharded: LuaScript,
}

impl Scripts {
    fn new(lua: &str) -> Self {
        Self {
            classic: LuaScript::new(lua),
            sharded: LuaScript::new(sharded_lua(lua)),
        }
    }

    fn pick(&self, sharded: bool) -> &LuaScript {
        if sharded {
            &self.sharded
        } else {
            &self.classic
        }
    }
}

/// The sharded twin of a publishing script: its one `redis.call('PUBLISH'` made
/// `SPUBLISH` (a script whose KEYS declare the channel may publish to a shard channel).
fn sharded_lua(lua: &str) -> String {
    lua.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")
}

pub(super) struct Publisher {
    client: Client,
    keys: Keys,
    pubsub: Arc<PubSub>,
    publish_script: Scripts,
    idempotent_script: Scripts,
}

impl Publisher {
    pub(super) fn new(client: Client, keys: Keys, pubsub: Arc<PubSub>) -> Self {
        Self {
            client,
            keys,
            pubsub,
            publish_script: Scripts::new(PUBLISH_LUA),
            idempotent_script: Scripts::new(IDEMPOTENT_LUA),
        }
    }

    pub(super) async fn publish(
        &self,
        req: PublishRequest<'_>,
    ) -> Result<Published, BackplaneError> {
        match (req.durable, req.idempotency) {
            (None, None) => self.plain(req).await,
            (None, Some(idem)) => self.idempotent(req, idem).await,
            (Some(d), idem) => self.durable(req, d, idem).await,
        }
    }

    async fn plain(&self, req: PublishRequest<'_>) -> Result<Published, BackplaneError> {
        let channel = self.keys.pubsub(req.channel);
        let frame = protocol::message_frame_from(req.channel, req.data, req.source, None);
        self.pubsub.publish(channel, frame).await?;
        Ok(Published::Plain)
    }

    async fn idempotent(
        &self,
        req: PublishRequest<'_>,
        idem: Idempotency<'_>,
    ) -> Result<Published, BackplaneError> {
        let channel = self.keys.pubsub(req.channel);
        let frame = protocol::message_frame_from(req.channel, req.data, req.source, None);
        let keys = vec![self.keys.idempotency(req.channel, idem.key), channel];
        let args: Vec<Value> = vec![Value::Bytes(frame), ttl_ms(idem).into()];
        let status: String = self
            .idempotent_script
            .pick(self.pubsub.sharded())
            .run(&self.client, keys, args)
            .await
            .map_err(map_err)?;
        match status.as_str() {
            "ok" => Ok(Published::Plain),
            "dup" => Ok(Published::Duplicate(Box::new(Published::Plain))),
            "conflict" => Err(BackplaneError::Conflict),
            other => Err(BackplaneError::Protocol(format!(
                "idempotent publish: {other}"
            ))),
        }
    }

    /// The script completes the frame with the offset it gives the message.
    async fn durable(
        &self,
        req: PublishRequest<'_>,
        d: Durability,
        idem: Option<Idempotency<'_>>,
    ) -> Result<Published, BackplaneError> {
        let open = protocol::message_frame_open(req.channel, req.data, req.source);
        let mut keys = vec![
            self.keys.meta(req.channel),
            self.keys.stream(req.channel),
            self.keys.pubsub(req.channel),
        ];
        let mut args: Vec<Value> = vec![
            Value::Bytes(open),
            (d.history_size.min(i64::MAX as u64) as i64).into(),
            ttl_secs(d).into(),
            new_epoch().into(),
        ];
        if let Some(idem) = idem {
            keys.push(self.keys.idempotency(req.channel, idem.key));
            args.push(ttl_ms(idem).into());
        }
        let reply: Vec<Value> = self
            .publish_script
            .pick(self.pubsub.sharded())
            .run(&self.client, keys, args)
            .await
            .map_err(map_err)?;
        parse_durable(&reply)
    }

    /// `XADD <upstream> MAXLEN ~ <maxlen> * <field> <value>…`: the stream id.
    pub(super) async fn append_upstream(
        &self,
        ns: &str,
        maxlen: u64,
        fields: &[(&str, &str)],
    ) -> Result<String, BackplaneError> {
        let mut args: Vec<Value> = Vec::with_capacity(5 + fields.len() * 2);
        args.push(self.keys.upstream(ns).into());
        args.push("MAXLEN".into());
        args.push("~".into());
        args.push((maxlen.min(i64::MAX as u64) as i64).into());
        args.push("*".into());
        for (k, v) in fields {
            args.push((*k).into());
            args.push((*v).into());
        }
        let cmd = CustomCommand::new_static("XADD", ClusterHash::FirstKey, false);
        let id: Value = self.client.custom(cmd, args).await.map_err(map_err)?;
        value_str(&id).ok_or_else(|| BackplaneError::Protocol("XADD reply".into()))
    }
}

/// How long the idempotency key is remembered, in ms (at least 1).
fn ttl_ms(idem: Idempotency<'_>) -> i64 {
    (idem.ttl.as_millis().max(1)) as i64
}

/// `publish.lua`'s answer: `[status, epoch, offset]`, or `["conflict"]`.
fn parse_durable(reply: &[Value]) -> Result<Published, BackplaneError> {
    match reply {
        [status, epoch, offset] => {
            let pos = Published::Durable(parse_position(epoch, offset)?);
            match value_str(status).as_deref() {
                Some("ok") => Ok(pos),
                Some("dup") => Ok(Published::Duplicate(Box::new(pos))),
                _ => Err(BackplaneError::Protocol("publish script status".into())),
            }
        }
        [status] if value_str(status).as_deref() == Some("conflict") => {
            Err(BackplaneError::Conflict)
        }
        _ => Err(BackplaneError::Protocol("publish script reply".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backplane::Position;

    #[test]
    fn each_script_has_one_publish_that_its_sharded_twin_makes_spublish() {
        for lua in [PUBLISH_LUA, IDEMPOTENT_LUA] {
            assert_eq!(lua.matches("redis.call('PUBLISH',").count(), 1);
            let sharded = sharded_lua(lua);
            assert_eq!(sharded.matches("redis.call('SPUBLISH',").count(), 1);
            assert_eq!(sharded.matches("'PUBLISH'").count(), 0);
        }
    }

    #[test]
    fn durable_replies_parse() {
        let position = Position {
            epoch: "ep".into(),
            offset: 3,
        };
        let ok = [Value::from("ok"), Value::from("ep"), Value::Integer(3)];
        assert_eq!(
            parse_durable(&ok).unwrap(),
            Published::Durable(position.clone())
        );
        let dup = [Value::from("dup"), Value::from("ep"), Value::Integer(3)];
        assert_eq!(
            parse_durable(&dup).unwrap(),
            Published::Duplicate(Box::new(Published::Durable(position)))
        );
        assert!(matches!(
            parse_durable(&[Value::from("conflict")]),
            Err(BackplaneError::Conflict)
        ));
        assert!(parse_durable(&[Value::from("what")]).is_err());
    }
}
