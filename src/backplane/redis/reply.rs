//! Reading what Redis answers: fred's errors as [`BackplaneError`]s (`Unavailable` when
//! a retry may succeed, `Protocol` otherwise), and the values of script replies. Which
//! reply a command gives is its caller's.

use fred::prelude::*;

use crate::backplane::Position;
use crate::error::BackplaneError;

pub(super) fn map_err(e: Error) -> BackplaneError {
    match e.kind() {
        ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Backpressure => {
            BackplaneError::Unavailable(e.to_string())
        }
        _ if e.details().starts_with("LOADING") || e.details().starts_with("BUSY") => {
            BackplaneError::Unavailable(e.to_string())
        }
        _ => BackplaneError::Protocol(e.to_string()),
    }
}

pub(super) fn value_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string()),
        Value::Bytes(b) => std::str::from_utf8(b).ok().map(String::from),
        Value::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

pub(super) fn value_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Integer(i) => u64::try_from(*i).ok(),
        other => value_str(other)?.parse().ok(),
    }
}

pub(super) fn parse_position(epoch: &Value, offset: &Value) -> Result<Position, BackplaneError> {
    Ok(Position {
        epoch: value_str(epoch)
            .ok_or_else(|| BackplaneError::Protocol("epoch is not a string".into()))?,
        offset: value_u64(offset)
            .ok_or_else(|| BackplaneError::Protocol("offset is not an integer".into()))?,
    })
}
