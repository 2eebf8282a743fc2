//! Reading a durable channel's history for the `history` op and
//! `GET /api/channels/{channel}/history` (PROTOCOL §2.2): one answer format for both.

use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::backplane::HistoryQuery;
use crate::config::Namespace;
use crate::error::{ErrorCode, OpError};
use crate::publish::durability;
use crate::state::AppState;

/// `{"epoch","offset","messages":[{"offset","data"},…]}`, ascending. With `since`, the
/// oldest `limit` messages after it; without, the newest `limit`; no limit: all kept.
pub async fn read(
    state: &AppState,
    channel: &str,
    ns: &Namespace,
    since: Option<u64>,
    limit: Option<u64>,
) -> Result<Value, OpError> {
    let Some(d) = durability(ns) else {
        return Err(OpError::new(
            ErrorCode::BadRequest,
            format!("channel '{channel}' keeps no history (its namespace is not durable)"),
        ));
    };
    let query = match since {
        Some(offset) => HistoryQuery::After { offset, limit },
        None => HistoryQuery::Newest { limit },
    };
    let history = state.backplane.history(channel, d, query).await?;
    let mut messages = Vec::with_capacity(history.messages.len());
    for m in &history.messages {
        match frame_data(m.frame.as_str()) {
            Some(data) => messages.push(json!({"offset": m.offset, "data": data})),
            None => tracing::warn!(
                channel,
                offset = m.offset,
                "skipping an unreadable history entry"
            ),
        }
    }
    Ok(json!({
        "epoch": history.position.epoch,
        "offset": history.position.offset,
        "messages": messages,
    }))
}

fn frame_data(frame: &str) -> Option<Box<RawValue>> {
    #[derive(serde::Deserialize)]
    struct Frame {
        data: Box<RawValue>,
    }
    serde_json::from_str::<Frame>(frame).ok().map(|f| f.data)
}
