//! `GET /sse` (Server-Sent Events, for `EventSource`) and `POST /stream`
//! (newline-delimited JSON, for `fetch`): each opens a session whose server frames
//! are the response body (PROTOCOL §2.5). They pass the same checks as a WebSocket
//! upgrade ([`crate::admission`]), then answer 200 at once with headers that keep
//! proxies from buffering or caching, and the session writes its welcome frame first.
//!
//! The token comes from where each kind of client can put it: `?token=` or the
//! `herald_token` cookie for `EventSource` (which cannot set headers), and
//! `Authorization: Bearer` or `?token=` for `fetch`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::admission;
use crate::connection::http_slot::HttpSlot;
use crate::connection::socket::Socket;
use crate::connection::stream_sink::{Encoding, StreamSink};
use crate::error::{ErrorCode, error_response};
use crate::session;
use crate::state::AppState;

/// The cookie an `EventSource` page may carry its token in.
pub const TOKEN_COOKIE: &str = "herald_token";

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    token: Option<String>,
}

/// `GET /sse`.
pub async fn sse_handler(
    State(state): State<Arc<AppState>>,
    Query(query): Query<StreamQuery>,
    slot: Option<axum::Extension<HttpSlot>>,
    headers: HeaderMap,
) -> Response {
    let token = query.token.or_else(|| cookie(&headers, TOKEN_COOKIE));
    open(&state, &headers, token, Encoding::Sse, "sse", slot)
}

/// `POST /stream`.
pub async fn http_stream_handler(
    State(state): State<Arc<AppState>>,
    Query(query): Query<StreamQuery>,
    slot: Option<axum::Extension<HttpSlot>>,
    headers: HeaderMap,
) -> Response {
    let token = bearer(&headers).or(query.token);
    open(
        &state,
        &headers,
        token,
        Encoding::Ndjson,
        "http-stream",
        slot,
    )
}

fn open(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    token: Option<String>,
    encoding: Encoding,
    transport: &'static str,
    slot: Option<axum::Extension<HttpSlot>>,
) -> Response {
    if let Err(refusal) = admission::check(state, headers, token.as_deref()) {
        state.metrics.rejected_upgrades.increment(1);
        return refusal.into_response();
    }
    let identity = match state.tokens.verify_optional(token.as_deref()) {
        Ok(identity) => identity,
        Err(e) => {
            state.metrics.rejected_upgrades.increment(1);
            return error_response(ErrorCode::Unauthorized, &e.to_string());
        }
    };
    // From here the connection is a session, counted by `limits.max_connections`,
    // not one of the plain HTTP connections the listener caps.
    if let Some(axum::Extension(slot)) = slot {
        slot.release();
    }
    let (sink, mut rx) = StreamSink::new(encoding);
    // hyper drops the body when the client goes away; the session learns it at once
    // through this token instead of at its next write (up to a keep-alive later).
    let gone = CancellationToken::new();
    let session_state = state.clone();
    state.tracker.spawn(session::run_stream(
        Socket::stream(sink),
        transport,
        session_state,
        identity,
        gone.clone(),
    ));
    let dropped = gone.drop_guard();
    let chunks = futures_util::stream::poll_fn(move |cx| {
        let _dropped = &dropped;
        rx.poll_recv(cx).map(|chunk| chunk.map(Ok::<_, Infallible>))
    });
    let body = Body::from_stream(chunks);
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(encoding.content_type()),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, no-transform"),
    );
    // nginx and others buffer responses unless told not to.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The value of cookie `name`, if the request carries it.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The token of an `Authorization: Bearer …` header.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_from_cookies_and_bearer_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; herald_token=t.o.k; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, TOKEN_COOKIE).as_deref(), Some("t.o.k"));
        assert_eq!(cookie(&h, "c"), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h).as_deref(), Some("abc"));
        for bad in ["Basic abc", "Bearer", "Bearer  ", "abc"] {
            h.insert(header::AUTHORIZATION, bad.parse().unwrap());
            assert_eq!(bearer(&h), None, "{bad}");
        }
    }
}
