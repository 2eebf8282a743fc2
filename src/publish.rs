//! One publication, from either door (HTTP `POST /api/publish` or the WebSocket
//! `publish` op) to the backplane, with its metrics. Permission checks stay with the
//! door: a backend's API key and a browser's token are different questions.

use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::backplane::{Backplane, Durability, Idempotency, PublishRequest, Published};
use crate::config::Namespace;
use crate::error::OpError;
use crate::metrics::Metrics;

/// The history settings of a namespace, when it is durable.
pub fn durability(ns: &Namespace) -> Option<Durability> {
    ns.history_size.map(|history_size| Durability {
        history_size,
        history_ttl: ns.history_ttl,
    })
}

/// What a publication needs of the node: the backplane, the metrics and how long
/// idempotency keys are remembered. Doors get one from [`AppState::publisher`].
///
/// [`AppState::publisher`]: crate::state::AppState::publisher
#[derive(Clone, Copy)]
pub struct Publisher<'a> {
    pub backplane: &'a dyn Backplane,
    pub metrics: &'a Metrics,
    pub idempotency_ttl: Duration,
}

impl Publisher<'_> {
    /// Publishes `data` on `channel` and answers the result object of PROTOCOL §2.2.
    pub async fn publish(
        &self,
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
                ttl: self.idempotency_ttl,
            }),
            source: None,
        };
        match self.backplane.publish(req).await {
            Ok(published) => {
                self.metrics.published.increment(1);
                self.metrics
                    .publish_duration
                    .record(start.elapsed().as_secs_f64());
                Ok(result_json(&published))
            }
            Err(e) => {
                self.metrics.publish_errors.increment(1);
                Err(e.into())
            }
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
