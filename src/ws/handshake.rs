//! The WebSocket opening handshake (RFC 6455 §4.2) on top of hyper's HTTP/1.1
//! upgrade: the request's WebSocket headers, the `101 Switching Protocols` answer,
//! and the raw TCP socket once hyper has written that answer.
//!
//! Herald takes the socket itself, rather than a ready-made WebSocket, because it
//! writes server frames straight into the kernel (see [`crate::connection::socket`]). Whether
//! a client *may* connect (origin, token, limits) is decided before this, in
//! [`crate::ws::upgrade`].

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::connection::socket::Socket;
use crate::error::ErrorCode;
use crate::error::error_response;

/// Why a request is not a WebSocket handshake this server can answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("not a WebSocket upgrade (Connection: Upgrade and Upgrade: websocket expected)")]
    NotUpgrade,
    #[error("unsupported WebSocket version (13 expected)")]
    Version,
    #[error("Sec-WebSocket-Key is missing or malformed")]
    Key,
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

impl IntoResponse for HandshakeError {
    fn into_response(self) -> Response {
        let mut response = error_response(ErrorCode::BadRequest, &self.to_string());
        if self == HandshakeError::Version {
            *response.status_mut() = StatusCode::UPGRADE_REQUIRED;
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

/// A checked handshake, ready to be answered.
pub struct Handshake {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// The connection after the handshake: the socket and any bytes the client sent
/// right behind its request (hyper had already read them).
pub struct Upgraded {
    pub socket: Socket,
    pub early_bytes: Vec<u8>,
}

impl Handshake {
    /// Checks the request's WebSocket headers and takes hyper's upgrade handle.
    pub fn from_request(req: &mut Request) -> Result<Self, HandshakeError> {
        let accept = check_headers(req.headers())?;
        let on_upgrade = req
            .extensions_mut()
            .remove::<OnUpgrade>()
            .ok_or(HandshakeError::NotUpgradable)?;
        Ok(Self { accept, on_upgrade })
    }

    /// The `101` answer, and the socket to come once hyper has sent it.
    pub fn accept(self) -> (Response, PendingSocket) {
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        (response, PendingSocket(self.on_upgrade))
    }
}

/// The socket of an accepted handshake, available once the `101` is on the wire.
pub struct PendingSocket(OnUpgrade);

/// Why an accepted handshake produced no socket.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("the upgrade did not complete: {0}")]
    Hyper(#[from] hyper::Error),
    #[error("the upgraded connection is not a TCP stream")]
    NotTcp,
}

impl PendingSocket {
    pub async fn socket(self) -> Result<Upgraded, UpgradeError> {
        let upgraded = self.0.await?;
        // The listener serves `TokioIo<TcpStream>` (see `crate::listener`).
        let parts = upgraded
            .downcast::<TokioIo<TcpStream>>()
            .map_err(|_| UpgradeError::NotTcp)?;
        Ok(Upgraded {
            socket: Socket::new(parts.io.into_inner()),
            early_bytes: parts.read_buf.to_vec(),
        })
    }
}

fn check_headers(headers: &HeaderMap) -> Result<HeaderValue, HandshakeError> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(HandshakeError::NotUpgrade);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(HandshakeError::Version);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(HandshakeError::Key)?;
    // A base64 encoding of 16 bytes is 24 characters.
    if key.as_bytes().len() != 24 {
        return Err(HandshakeError::Key);
    }
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).map_err(|_| HandshakeError::Key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    const GOOD: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn the_rfc_example_key_gets_the_rfc_accept_value() {
        let accept = check_headers(&headers(&GOOD)).unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn requests_that_are_not_handshakes_are_refused_with_the_reason() {
        let without = |name: &str| {
            let kept: Vec<_> = GOOD.iter().copied().filter(|(k, _)| *k != name).collect();
            check_headers(&headers(&kept))
        };
        assert_eq!(without("connection"), Err(HandshakeError::NotUpgrade));
        assert_eq!(without("upgrade"), Err(HandshakeError::NotUpgrade));
        assert_eq!(
            without("sec-websocket-version"),
            Err(HandshakeError::Version)
        );
        assert_eq!(without("sec-websocket-key"), Err(HandshakeError::Key));
        let mut old = headers(&GOOD);
        old.insert("sec-websocket-version", HeaderValue::from_static("8"));
        assert_eq!(check_headers(&old), Err(HandshakeError::Version));
        let response = HandshakeError::Version.into_response();
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(response.headers()[header::SEC_WEBSOCKET_VERSION], "13");
    }
}
