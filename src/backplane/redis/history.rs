//! Reading a durable channel's history and position (`history.lua`): the script
//! answers the epoch and newest offset, then `[id, frame]` pairs, and starts an epoch
//! for a channel that has none. Writing the history is `publish.rs`'s.

use super::script::LuaScript;
use axum::extract::ws::Utf8Bytes;
use fred::clients::Client;
use fred::prelude::*;

use super::keys::Keys;
use super::reply::{map_err, parse_position, value_str};
use crate::backplane::{Durability, History, HistoryQuery, StoredMessage, new_epoch};
use crate::error::BackplaneError;

const HISTORY_LUA: &str = include_str!("../history.lua");

/// The script's mode, offset and limit (0: no limit) for a query; `None` reads the
/// position only.
fn script_args(query: Option<HistoryQuery>) -> (&'static str, u64, Option<u64>) {
    match query {
        None => ("none", 0, None),
        Some(HistoryQuery::After { offset, limit }) => ("after", offset, limit),
        Some(HistoryQuery::Newest { limit }) => ("newest", 0, limit),
    }
}

pub(super) struct HistoryScript {
    client: Client,
    keys: Keys,
    script: LuaScript,
}

impl HistoryScript {
    pub(super) fn new(client: Client, keys: Keys) -> Self {
        Self {
            client,
            keys,
            script: LuaScript::new(HISTORY_LUA),
        }
    }

    /// Reads `query` (or the position only), starting an epoch if there is none.
    pub(super) async fn read(
        &self,
        channel: &str,
        d: Durability,
        query: Option<HistoryQuery>,
    ) -> Result<History, BackplaneError> {
        let (mode, offset, limit) = script_args(query);
        let keys = vec![self.keys.meta(channel), self.keys.stream(channel)];
        let args: Vec<Value> = vec![
            new_epoch().into(),
            ttl_secs(d).into(),
            mode.into(),
            (offset as i64).into(),
            (limit.unwrap_or(0).min(i64::MAX as u64) as i64).into(),
        ];
        let reply: Vec<Value> = self
            .script
            .run(&self.client, keys, args)
            .await
            .map_err(map_err)?;
        parse_history(reply)
    }
}

/// How long a durable channel's stream and meta keys live, in whole seconds (at least 1).
pub(super) fn ttl_secs(d: Durability) -> i64 {
    d.history_ttl.as_secs().max(1) as i64
}

fn parse_history(reply: Vec<Value>) -> Result<History, BackplaneError> {
    if reply.len() < 2 || !reply.len().is_multiple_of(2) {
        return Err(BackplaneError::Protocol(format!(
            "history reply of {} items",
            reply.len()
        )));
    }
    let position = parse_position(&reply[0], &reply[1])?;
    let mut messages = Vec::with_capacity(reply.len() / 2 - 1);
    for pair in reply[2..].chunks_exact(2) {
        let id = value_str(&pair[0]).ok_or_else(|| BackplaneError::Protocol("stream id".into()))?;
        let offset = id
            .split_once('-')
            .and_then(|(ms, _)| ms.parse().ok())
            .ok_or_else(|| BackplaneError::Protocol(format!("stream id '{id}'")))?;
        let text =
            value_str(&pair[1]).ok_or_else(|| BackplaneError::Protocol("stream frame".into()))?;
        messages.push(StoredMessage {
            offset,
            frame: Utf8Bytes::from(text),
        });
    }
    Ok(History { position, messages })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backplane::Position;

    #[test]
    fn history_replies_parse() {
        let reply = vec![
            Value::from("ep"),
            Value::Integer(7),
            Value::from("6-1"),
            Value::from("{\"f\":6}"),
            Value::from("7-1"),
            Value::from("{\"f\":7}"),
        ];
        let h = parse_history(reply).unwrap();
        assert_eq!(
            h.position,
            Position {
                epoch: "ep".into(),
                offset: 7
            }
        );
        assert_eq!(
            h.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![6, 7]
        );
        assert!(parse_history(vec![Value::from("ep")]).is_err());
        assert!(
            parse_history(vec![
                Value::from("ep"),
                Value::Integer(1),
                Value::from("x"),
                Value::from("y")
            ])
            .is_err()
        );
    }

    #[test]
    fn queries_give_the_script_its_mode() {
        assert_eq!(script_args(None), ("none", 0, None));
        let after = HistoryQuery::After {
            offset: 4,
            limit: Some(2),
        };
        assert_eq!(script_args(Some(after)), ("after", 4, Some(2)));
        let newest = HistoryQuery::Newest { limit: None };
        assert_eq!(script_args(Some(newest)), ("newest", 0, None));
    }
}
