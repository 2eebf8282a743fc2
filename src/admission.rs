//! Who may open a session, on any transport (PROTOCOL §2, §2.5): the checks a
//! WebSocket upgrade and a streaming request pass before a session exists. Refusals
//! are HTTP answers: 403 for a foreign Origin, 401 for a missing token, 503 while
//! draining or at the connection limit, 503 with `Retry-After` above the node's rate
//! of new connections. Checking the token itself is `tokens.rs`'s.

use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;

use crate::error::{ErrorCode, error_response};
use crate::state::AppState;

/// Why a session is refused before it exists.
pub struct Refusal {
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

    pub fn into_response(self) -> Response {
        let mut response = error_response(self.code, self.message);
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

pub fn check(state: &AppState, headers: &HeaderMap, token: Option<&str>) -> Result<(), Refusal> {
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
