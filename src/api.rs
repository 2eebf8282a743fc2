//! The HTTP API of PROTOCOL §3: publish, history, health, readiness, metrics.
//!
//! Bodies are read as bytes under the node's body limit and parsed here, so every
//! refusal, including a body too large or not JSON, has the protocol's error body.
//! The API is the backends' door: it needs an API key where keys are configured, and
//! is not subject to namespace rules, only to channel names and known namespaces.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::auth::api_key_matches;
use crate::config::Namespace;
use crate::error::{ErrorCode, OpError, error_response};
use crate::protocol::{self, validate_channel};
use crate::state::AppState;

/// Refuses `/api/*` requests without a valid `Authorization: Bearer` key (where keys
/// are configured). The key is never logged.
pub async fn require_api_key(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let keys = &state.config.auth.api_keys;
    if !keys.is_empty() {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !api_key_matches(presented.trim(), keys) {
            return error_response(ErrorCode::Unauthorized, "missing or invalid API key");
        }
    }
    next.run(req).await
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn namespace_for(state: &AppState, channel: &str) -> Result<Namespace, OpError> {
    validate_channel(channel)
        .map_err(|m| OpError::new(ErrorCode::BadRequest, format!("'{channel}': {m}")))?;
    state
        .config
        .namespaces
        .for_channel(channel)
        .cloned()
        .ok_or_else(|| {
            OpError::new(
                ErrorCode::NotFound,
                format!("unknown namespace '{}'", protocol::namespace_of(channel)),
            )
        })
}

/// The `Idempotency-Key` header, read without copying the request's whole header map
/// (which axum's `HeaderMap` extractor does, on every publish).
pub struct IdempotencyKeyHeader(Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKeyHeader {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(String::from),
        ))
    }
}

/// `POST /api/publish`, both forms.
pub async fn publish(
    State(state): State<Arc<AppState>>,
    IdempotencyKeyHeader(header_key): IdempotencyKeyHeader,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error_response(
                ErrorCode::LimitExceeded,
                &format!(
                    "body larger than {} bytes",
                    state.config.limits.max_body_bytes
                ),
            );
        }
        Err(e) => return error_response(ErrorCode::BadRequest, &e.body_text()),
    };
    let req: PublishBody<'_> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error_response(ErrorCode::BadRequest, &format!("invalid JSON body: {e}")),
    };
    let Some(data) = req.data else {
        return error_response(ErrorCode::BadRequest, "missing field 'data'");
    };
    let key = req.idempotency_key.clone().or(header_key);
    if let Some(k) = &key
        && let Err(m) = crate::protocol::validate_idempotency_key(k)
    {
        return error_response(ErrorCode::BadRequest, &m);
    }
    match (req.channel, req.channels) {
        (Some(channel), None) => {
            let ns = match namespace_for(&state, &channel) {
                Ok(ns) => ns,
                Err(e) => return e.into_response(),
            };
            match state
                .publisher()
                .publish(&channel, &ns, data, key.as_deref())
                .await
            {
                Ok(result) => (StatusCode::OK, axum::Json(result)).into_response(),
                Err(e) => e.into_response(),
            }
        }
        (None, Some(channels)) => publish_many(&state, channels, data, key.as_deref()).await,
        _ => error_response(
            ErrorCode::BadRequest,
            "give exactly one of 'channel' and 'channels'",
        ),
    }
}

/// The `channels` form: validated as a whole, then its channels published concurrently.
async fn publish_many(
    state: &AppState,
    channels: Vec<String>,
    data: &RawValue,
    key: Option<&str>,
) -> Response {
    let max = state.config.limits.max_channels_per_publish;
    if channels.len() > max {
        return error_response(
            ErrorCode::LimitExceeded,
            &format!("at most {max} channels per publish"),
        );
    }
    if channels.is_empty() {
        return error_response(ErrorCode::BadRequest, "'channels' is empty");
    }
    let mut namespaces = Vec::with_capacity(channels.len());
    for channel in &channels {
        match namespace_for(state, channel) {
            Ok(ns) => namespaces.push(ns),
            Err(e) => return e.into_response(),
        }
    }
    let publisher = state.publisher();
    let outcomes = if has_repeats(&channels) {
        // A channel listed twice gets its messages in request order: one at a time (a
        // script reload on the backplane could otherwise let the second overtake).
        let mut outcomes = Vec::with_capacity(channels.len());
        for (channel, ns) in channels.iter().zip(&namespaces) {
            outcomes.push(publisher.publish(channel, ns, data, key).await);
        }
        outcomes
    } else {
        // All at once: their commands queue together on the backplane's connection,
        // which writes them in as few writes as it can instead of one round trip each.
        // Bounded by `max_channels_per_publish`.
        futures_util::future::join_all(
            channels
                .iter()
                .zip(&namespaces)
                .map(|(channel, ns)| publisher.publish(channel, ns, data, key)),
        )
        .await
    };
    let mut results = Vec::with_capacity(channels.len());
    let mut status = StatusCode::OK;
    for (channel, outcome) in channels.iter().zip(outcomes) {
        match outcome {
            Ok(mut result) => {
                result["channel"] = json!(channel);
                results.push(result);
            }
            Err(e) => {
                status = match (status, e.code) {
                    (_, ErrorCode::Conflict) => StatusCode::UNPROCESSABLE_ENTITY,
                    (StatusCode::UNPROCESSABLE_ENTITY, _) => status,
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                };
                results.push(json!({"channel": channel, "error": {"code": e.code.as_str(), "message": e.message}}));
            }
        }
    }
    (status, axum::Json(json!({"results": results}))).into_response()
}

fn has_repeats(channels: &[String]) -> bool {
    let mut seen = std::collections::HashSet::with_capacity(channels.len());
    !channels.iter().all(|c| seen.insert(c.as_str()))
}

#[derive(Deserialize)]
pub struct HistoryParams {
    since: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    epoch: Option<String>,
    limit: Option<String>,
}

/// `GET /api/channels/{channel}/history?since=&epoch=&limit=`.
pub async fn history(
    State(state): State<Arc<AppState>>,
    Path(channel): Path<String>,
    Query(params): Query<HistoryParams>,
) -> Response {
    let ns = match namespace_for(&state, &channel) {
        Ok(ns) => ns,
        Err(e) => return e.into_response(),
    };
    let (since, limit) = match (
        number(&params.since, "since"),
        number(&params.limit, "limit"),
    ) {
        (Ok(since), Ok(limit)) => (since, limit),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    match crate::history::read(&state, &channel, &ns, since, limit).await {
        Ok(v) => (StatusCode::OK, axum::Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn number(v: &Option<String>, name: &str) -> Result<Option<u64>, OpError> {
    match v {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| {
            OpError::new(
                ErrorCode::BadRequest,
                format!("'{name}' must be a non-negative integer"),
            )
        }),
    }
}

/// `GET /api/channels/{channel}/presence`.
pub async fn presence(State(state): State<Arc<AppState>>, Path(channel): Path<String>) -> Response {
    let result = match namespace_for(&state, &channel) {
        Ok(ns) => crate::presence::list(&state, &channel, &ns).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(v) => (StatusCode::OK, axum::Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /api/channels/{channel}/presence_stats`.
pub async fn presence_stats(
    State(state): State<Arc<AppState>>,
    Path(channel): Path<String>,
) -> Response {
    let result = match namespace_for(&state, &channel) {
        Ok(ns) => crate::presence::stats(&state, &channel, &ns).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(v) => (StatusCode::OK, axum::Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

/// `GET /readyz`: connected, re-subscribed and not draining.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let link = state.link();
    let body: Value = json!({
        "node": state.config.node_id,
        "backplane_connected": link.connected,
        "subscriptions_current": state.subscriptions.is_current(link),
        "draining": state.is_draining(),
    });
    let status = if state.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    // Read at the scrape: a gauge kept in step by a task would say the same, later.
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    state
        .metrics
        .backplane_connected
        .set(flag(state.link().connected));
    state.metrics.ready.set(flag(state.is_ready()));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::has_repeats;

    #[test]
    fn a_channel_listed_twice_is_a_repeat() {
        let list = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(!has_repeats(&list(&["a", "b", "c"])));
        assert!(has_repeats(&list(&["a", "b", "a"])));
        assert!(!has_repeats(&list(&[])));
    }
}
