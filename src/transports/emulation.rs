//! `POST /emulation`: a client frame for a session on an HTTP streaming transport
//! (PROTOCOL §2.5), posted to any node. The body is
//! `{"node", "session", "key", "frame"}`: the first three from the session's welcome
//! frame, `frame` the op as a JSON object (or its text). The answer only says whether
//! the frame reached the session; the op's own reply comes on the session's stream.
//!
//! | status | when |
//! |---|---|
//! | 202 | the frame is in the session's queue |
//! | 400 | the body is not such an object |
//! | 403 | a foreign `Origin` |
//! | 404 | no such session on that node, or a wrong key |
//! | 410 | that node is not in the fleet any more: reconnect |
//! | 413 | the frame is above `limits.max_frame_bytes` |
//! | 429 | the session's queue is full: its client posts faster than it is served |
//! | 503 | the backplane is unreachable, or too many frames wait for other nodes: retry |
//! | 504 | the session's node did not answer in time: the frame may have arrived |
//!
//! Rate limits, token rules and namespace rules are the session's, exactly as on a
//! WebSocket; getting the frame to another node is [`crate::relay`]'s.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{ErrorCode, error_response};
use crate::relay::{Delivery, RelayError};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Posted {
    node: String,
    session: String,
    key: String,
    frame: Value,
}

pub async fn emulation_handler(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<Posted>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN)
        && !state.origin_allowed(origin)
    {
        return error_response(ErrorCode::Forbidden, "origin not allowed");
    }
    let Json(posted) = match body {
        Ok(b) => b,
        Err(e) => {
            return error_response(
                ErrorCode::BadRequest,
                &format!(
                    "expected {{\"node\",\"session\",\"key\",\"frame\"}}: {}",
                    e.body_text()
                ),
            );
        }
    };
    // The session reads text frames, as a WebSocket would give it.
    let frame = match posted.frame {
        Value::String(text) => text,
        other @ Value::Object(_) => other.to_string(),
        _ => {
            return error_response(
                ErrorCode::BadRequest,
                "frame must be a JSON object (an op) or its text",
            );
        }
    };
    if frame.len() > state.config.limits.max_frame_bytes {
        return error_response(
            ErrorCode::LimitExceeded,
            "frame above limits.max_frame_bytes",
        );
    }
    let delivered = state
        .relay
        .deliver(&posted.node, &posted.session, &posted.key, frame)
        .await;
    match delivered {
        Ok(Delivery::Accepted) => {
            (StatusCode::ACCEPTED, Json(serde_json::json!({}))).into_response()
        }
        Ok(Delivery::Unknown) => error_response(
            ErrorCode::NotFound,
            "no such session on that node (or a wrong key): reconnect",
        ),
        Ok(Delivery::Busy) => error_response(
            ErrorCode::RateLimited,
            "the session has too many frames waiting; slow down",
        ),
        Err(RelayError::NoSuchNode(_)) => {
            let mut r = error_response(
                ErrorCode::NotFound,
                "that node is not in the fleet any more: reconnect",
            );
            *r.status_mut() = StatusCode::GONE;
            r
        }
        // The frame may have reached the session: its reply, if any, comes on the
        // stream. A retry could run the op twice, so this is not a 503.
        Err(e @ RelayError::NoAnswer(_)) => {
            let mut r = error_response(ErrorCode::Unavailable, &e.to_string());
            *r.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            r
        }
        Err(e) => error_response(ErrorCode::Unavailable, &e.to_string()),
    }
}
