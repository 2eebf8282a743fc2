//! Durations as written in the configuration ("250ms", "30s", "5m", "1h").
//!
//! Shared by the server keys, the namespaces and the ingest sources; which key a
//! duration belongs to, and whether zero is allowed there, is the caller's to say.

use std::time::Duration;

use super::ConfigError;

/// Parses a duration with a unit ("250ms", "30s", "5m", "1h").
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(value.trim()).map_err(|e| {
        format!("'{value}' is not a duration ({e}); use e.g. \"250ms\", \"30s\", \"5m\"")
    })?;
    Ok(d)
}

/// A parsed duration that must not be zero (a zero timer or TTL would fire at once or
/// keep nothing), or the error naming `source` and `key`.
pub(super) fn positive(
    d: Result<Duration, String>,
    source: &str,
    key: &str,
) -> Result<Duration, ConfigError> {
    match d {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(ConfigError::new(source, key, "must be greater than zero")),
        Err(r) => Err(ConfigError::new(source, key, r)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_read_and_zero_is_not_positive() {
        assert_eq!(parse_duration(" 250ms "), Ok(Duration::from_millis(250)));
        assert!(parse_duration("10").is_err());
        let err = positive(parse_duration("0s"), "f", "k").unwrap_err();
        assert_eq!(
            (err.key.as_str(), err.reason.as_str()),
            ("k", "must be greater than zero")
        );
    }
}
