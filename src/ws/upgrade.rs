//! `GET /ws`: the checks an upgrade must pass before any WebSocket frame (PROTOCOL
//! §2), and the hand-off to a session task. The handshake itself (headers, `101`,
//! taking the socket) is [`crate::ws::handshake`]'s.
//!
//! Refusals are HTTP answers ([`crate::admission`]): 403 for a foreign Origin, 401 for
//! a missing or invalid token, 503 while draining or at the connection limit, 503 with
//! `Retry-After` above the node's rate of new connections.

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::admission;
use crate::error::ErrorCode;
use crate::error::error_response;
use crate::session;
use crate::state::AppState;
use crate::ws::handshake::Handshake;

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
    if let Err(refusal) = admission::check(&state, req.headers(), query.token.as_deref()) {
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
