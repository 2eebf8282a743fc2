//! `GET /ws`: the checks an upgrade must pass before any WebSocket frame (PROTOCOL
//! §2), and the hand-off to a session task. The handshake itself (headers, `101`,
//! taking the socket) is [`crate::ws::handshake`]'s.
//!
//! Refusals are HTTP answers: 403 for a foreign Origin, 401 for a missing or invalid
//! token, 503 while draining or at the connection limit, 503 with `Retry-After` above
//! the node's rate of new connections.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::error::ErrorCode;
use crate::error::error_response;
use crate::state::AppState;
use crate::ws::handshake::Handshake;
use crate::ws::session;

#[derive(Debug, Deserialize)]
pub struct UpgradeQuery {
    token: Option<String>,
}

pub async fn ws_handler(
    State(state): State<Arc<AppState>>,
    Query(query): Query<UpgradeQuery>,
    mut req: Request,
) -> Response {
    let handshake = match Handshake::from_request(&mut req) {
        Ok(h) => h,
        Err(e) => {
            state.metrics.rejected_upgrades.increment(1);
            return e.into_response();
        }
    };
    if let Err(refusal) = check(&state, req.headers(), query.token.as_deref()) {
        state.metrics.rejected_upgrades.increment(1);
        return refusal.into_response();
    }
    let identity = match state.tokens.verify_optional(query.token.as_deref()) {
        Ok(identity) => identity,
        Err(e) => {
            state.metrics.rejected_upgrades.increment(1);
            return error_response(ErrorCode::Unauthorized, &e.to_string());
        }
    };
    let (response, pending) = handshake.accept();
    let tracker = state.tracker.clone();
    tracker.spawn(async move {
        match pending.socket().await {
            Ok(upgraded) => session::run(upgraded, state, identity).await,
            Err(e) => tracing::warn!(error = %e, "websocket upgrade failed"),
        }
    });
    response
}

/// Why an upgrade is refused, before any WebSocket frame.
struct Refusal {
    code: ErrorCode,
    message: &'static str,
    retry_after: Option<u64>,
}

impl Refusal {
    fn new(code: ErrorCode, message: &'static str) -> Self {
        Self {
            code,
            message,
            retry_after: None,
        }
    }

    fn into_response(self) -> Response {
        let mut response = error_response(self.code, self.message);
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

fn check(state: &AppState, headers: &HeaderMap, token: Option<&str>) -> Result<(), Refusal> {
    if state.is_draining() {
        return Err(Refusal::new(
            ErrorCode::Unavailable,
            "the node is draining; connect to another node",
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN)
        && !state.origin_allowed(origin)
    {
        return Err(Refusal::new(ErrorCode::Forbidden, "origin not allowed"));
    }
    if token.is_none() && state.tokens.required() {
        return Err(Refusal::new(
            ErrorCode::Unauthorized,
            "a token is required (?token=…)",
        ));
    }
    if state.connection_count() >= state.config.limits.max_connections {
        return Err(Refusal::new(
            ErrorCode::Unavailable,
            "the node is at its connection limit",
        ));
    }
    if !state.connection_rate.admit(Instant::now()) {
        return Err(Refusal {
            retry_after: Some(1),
            ..Refusal::new(
                ErrorCode::Unavailable,
                "too many new connections; retry shortly",
            )
        });
    }
    Ok(())
}
