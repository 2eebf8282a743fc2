//! One publication, from either door (HTTP `POST /api/publish` or the WebSocket
//! `publish` op) to the backplane, with its metrics. Permission checks stay with the
//! door: a backend's API key and a browser's token are different questions.

use std::time::Instant;

use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::backplane::{Durability, Idempotency, PublishRequest, Published};
use crate::config::Namespace;
use crate::error::OpError;
use crate::state::AppState;

/// The history settings of a namespace, when it is durable.
pub fn durability(ns: &Namespace) -> Option<Durability> {
    ns.history_size.map(|history_size| Durability {
        history_size,
        history_ttl: ns.history_ttl,
    })
}

/// Publishes `data` on `channel` and answers the result object of PROTOCOL §2.2.
pub async fn publish(
    state: &AppState,
    channel: &str,
    ns: &Namespace,
    data: &RawValue,
    idempotency_key: Option<&str>,
) -> Result<Value, OpError> {
    let start = Instant::now();
    let req = PublishRequest {
        channel,
        data,
        durable: durability(ns),
        idempotency: idempotency_key.map(|key| Idempotency {
            key,
            ttl: state.config.idempotency_ttl,
        }),
        source: None,
    };
    match state.backplane.publish(req).await {
        Ok(published) => {
            state.metrics.published.increment(1);
            state
                .metrics
                .publish_duration
                .record(start.elapsed().as_secs_f64());
            Ok(result_json(&published))
        }
        Err(e) => {
            state.metrics.publish_errors.increment(1);
            Err(e.into())
        }
    }
}

fn result_json(p: &Published) -> Value {
    match p {
        Published::Plain => json!({}),
        Published::Durable(pos) => json!({"epoch": pos.epoch, "offset": pos.offset}),
        Published::Duplicate(first) => result_json(first),
    }
}
