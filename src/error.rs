//! Errors at the seams, and the two tables that translate them for the outside:
//! error codes → HTTP statuses and bodies (PROTOCOL §3) and session ends → close codes
//! (§2.4).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// The stable error codes of PROTOCOL §2.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    LimitExceeded,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The one map from error codes to HTTP statuses.
    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::LimitExceeded => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Why a session ended, and so which close code the client sees (PROTOCOL §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Normal,
    Draining,
    Policy,
    TooBig,
    Internal,
    TokenExpired,
    /// The outgoing queue filled, or a gap could not be filled: reconnect and recover.
    SlowConsumer,
    /// The client broke RFC 6455 framing (unmasked or reserved frames, bad control
    /// frames, an invalid close code).
    ProtocolError,
    /// A text frame that is not UTF-8 (RFC 6455 §8.1).
    InvalidData,
}

impl CloseReason {
    /// The one table of close codes.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::Draining => 1001,
            CloseReason::Policy => 1008,
            CloseReason::TooBig => 1009,
            CloseReason::Internal => 1011,
            CloseReason::TokenExpired => 4001,
            CloseReason::SlowConsumer => 4008,
            CloseReason::ProtocolError => 1002,
            CloseReason::InvalidData => 1007,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Normal => "bye",
            CloseReason::Draining => "node draining",
            CloseReason::Policy => "policy violation",
            CloseReason::TooBig => "frame too large",
            CloseReason::Internal => "internal error",
            CloseReason::TokenExpired => "token expired",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::InvalidData => "invalid utf-8",
        }
    }

    /// Every reason, in a fixed order (the outbox stores a reason as its index).
    pub const ALL: [CloseReason; 9] = [
        CloseReason::Normal,
        CloseReason::Draining,
        CloseReason::Policy,
        CloseReason::TooBig,
        CloseReason::Internal,
        CloseReason::TokenExpired,
        CloseReason::SlowConsumer,
        CloseReason::ProtocolError,
        CloseReason::InvalidData,
    ];

    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// A backplane that could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackplaneError {
    /// Redis is unreachable (or not confirmed reachable): nothing happened; retry later.
    #[error("backplane unavailable: {0}")]
    Unavailable(String),
    /// An idempotency key reused with different data (PROTOCOL §3).
    #[error("idempotency key reused with different data")]
    Conflict,
    /// Redis answered something this node does not understand.
    #[error("backplane protocol: {0}")]
    Protocol(String),
}

impl BackplaneError {
    pub fn code(&self) -> ErrorCode {
        match self {
            BackplaneError::Unavailable(_) => ErrorCode::Unavailable,
            BackplaneError::Conflict => ErrorCode::Conflict,
            BackplaneError::Protocol(_) => ErrorCode::Internal,
        }
    }
}

/// An operation refused or failed, with the code and message the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct OpError {
    pub code: ErrorCode,
    pub message: String,
}

impl OpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<BackplaneError> for OpError {
    fn from(e: BackplaneError) -> Self {
        let message = match &e {
            BackplaneError::Unavailable(_) => {
                "the backplane is unreachable; nothing was published, retry later".into()
            }
            BackplaneError::Protocol(_) => "internal error".into(),
            BackplaneError::Conflict => e.to_string(),
        };
        if let BackplaneError::Protocol(detail) = &e {
            tracing::error!(error = %detail, "backplane protocol error");
        }
        OpError::new(e.code(), message)
    }
}

/// `{"error":{"code","message"}}` with the status of its code: every HTTP refusal of
/// the node, from the API and from the WebSocket upgrade alike (PROTOCOL §3).
pub fn error_response(code: ErrorCode, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code.as_str(), "message": message}});
    (code.http_status(), axum::Json(body)).into_response()
}

impl IntoResponse for OpError {
    fn into_response(self) -> Response {
        error_response(self.code, &self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_round_trip() {
        for code in [1000, 1001, 1002, 1007, 1008, 1009, 1011, 4001, 4008] {
            assert_eq!(
                CloseReason::from_code(code).map(CloseReason::code),
                Some(code)
            );
        }
        assert_eq!(CloseReason::from_code(4000), None);
    }

    #[test]
    fn statuses_follow_the_protocol() {
        assert_eq!(ErrorCode::LimitExceeded.http_status(), 413);
        assert_eq!(ErrorCode::Conflict.http_status(), 422);
        assert_eq!(ErrorCode::Unavailable.http_status(), 503);
    }
}
