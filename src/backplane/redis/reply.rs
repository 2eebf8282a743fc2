//! Reading what Redis answers: fred's errors as [`BackplaneError`]s (`Unavailable` when
//! a retry may succeed, `Protocol` otherwise), and the values of script replies. Which
//! reply a command gives is its caller's.

use fred::prelude::*;

use crate::backplane::Position;
use crate::error::BackplaneError;

/// Error replies that pass by themselves: a server loading its data or busy with a
/// script, and a cluster in the middle of a change (a slot migrating: `TRYAGAIN`,
/// `ASK`/`MOVED` that could not be followed; a failover: `CLUSTERDOWN`, `MASTERDOWN`,
/// or `READONLY` from a primary just demoted to replica).
const TRANSIENT: &[&str] = &[
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "ASK",
    "MOVED",
    "CLUSTERDOWN",
    "MASTERDOWN",
    "READONLY",
];

pub(super) fn map_err(e: Error) -> BackplaneError {
    match e.kind() {
        ErrorKind::IO
        | ErrorKind::Timeout
        | ErrorKind::Canceled
        | ErrorKind::Backpressure
        | ErrorKind::Cluster
        // fred could not route a command while a slot moves ("Max attempts reached").
        | ErrorKind::Routing => BackplaneError::Unavailable(e.to_string()),
        _ if is_transient(e.details()) => BackplaneError::Unavailable(e.to_string()),
        _ => BackplaneError::Protocol(e.to_string()),
    }
}

/// fred's own words when a command used its one write attempt (`clients.rs`) on a
/// redirection it may not follow (`MOVED`/`ASK` while a slot migrates) or on a
/// connection that dropped: retryable, like a timeout.
const ATTEMPTS_USED: &str = "Too many failed write attempts";

fn is_transient(details: &str) -> bool {
    let word = details.split_whitespace().next().unwrap_or("");
    TRANSIENT.contains(&word) || details.starts_with(ATTEMPTS_USED)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_changes_are_retryable_and_script_errors_are_not() {
        let retry = [
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "MOVED 3999 127.0.0.1:6381",
            "ASK 3999 127.0.0.1:6381",
            "READONLY You can't write against a read only replica.",
            "LOADING Redis is loading the dataset in memory",
            "Too many failed write attempts.",
        ];
        for d in retry {
            let e = map_err(Error::new(ErrorKind::Unknown, d));
            assert!(matches!(e, BackplaneError::Unavailable(_)), "{d}: {e:?}");
        }
        let e = map_err(Error::new(ErrorKind::Routing, "Max attempts reached."));
        assert!(matches!(e, BackplaneError::Unavailable(_)), "{e:?}");
        for d in [
            "ERR Error running script",
            "NOSCRIPT",
            "WRONGTYPE",
            "ASKING",
        ] {
            let e = map_err(Error::new(ErrorKind::Unknown, d));
            assert!(matches!(e, BackplaneError::Protocol(_)), "{d}: {e:?}");
        }
    }
}
