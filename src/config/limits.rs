//! `[limits]` (docs/CONFIG.md): every bound a node enforces on connections, messages
//! and frames, with its default and the checks that keep the bounds consistent.
//!
//! Enforcing a limit is left to the layer that meets it (the listener, a connection,
//! the hub, the backplane); this module only says what the numbers are.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// Every limit of docs/CONFIG.md `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_connections: usize,
    /// Open connections not (yet) upgraded to WebSocket: plain HTTP requests, idle
    /// keep-alive connections and handshakes in progress. Beyond it the listener
    /// closes new TCP connections at once (docs/CONFIG.md).
    pub max_http_connections: usize,
    pub new_connections_per_sec: u32,
    pub messages_per_sec: u32,
    pub max_subscriptions: usize,
    pub max_channels_per_publish: usize,
    pub max_presence: usize,
    pub max_body_bytes: usize,
    pub max_frame_bytes: usize,
    /// Frames read from the backplane above this are dropped unparsed (PROTOCOL §4).
    /// Unset: [`Limits::backplane_frame_bytes`] picks it.
    pub max_backplane_frame_bytes: Option<usize>,
    pub outbox_messages: usize,
    /// Optional write coalescing: a writer waits this long after the first queued frame
    /// so that more frames share one `write()`. Off by default.
    #[serde(skip)]
    pub write_coalesce: Duration,
}

/// The default of `limits.max_backplane_frame_bytes`. Larger than the client limits
/// because frames come from backends too (straight into Redis, or ingested streams),
/// small enough that one frame cannot cost every node and socket megabytes.
pub const DEFAULT_BACKPLANE_FRAME_BYTES: usize = 1 << 20;
/// What a node adds to a client's data to make a `message` frame (type, a channel name
/// of at most 255 bytes, offset and epoch), rounded up.
pub const FRAME_ENVELOPE_BYTES: usize = 1024;

impl Limits {
    /// The backplane frame limit in force: the configured one, or else the default,
    /// raised when needed so that whatever an HTTP body or a WebSocket frame may carry
    /// still fits once framed (an accepted publish is never dropped on the way).
    pub fn backplane_frame_bytes(&self) -> usize {
        self.max_backplane_frame_bytes
            .unwrap_or(DEFAULT_BACKPLANE_FRAME_BYTES.max(self.min_backplane_frame_bytes()))
    }

    fn min_backplane_frame_bytes(&self) -> usize {
        self.max_body_bytes
            .max(self.max_frame_bytes)
            .saturating_add(FRAME_ENVELOPE_BYTES)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_http_connections: 4096,
            new_connections_per_sec: 2000,
            messages_per_sec: 100,
            max_subscriptions: 1024,
            max_channels_per_publish: 100,
            max_presence: 1000,
            max_body_bytes: 65536,
            max_frame_bytes: 65536,
            max_backplane_frame_bytes: None,
            outbox_messages: 1024,
            write_coalesce: Duration::ZERO,
        }
    }
}

/// Refuses limits a node cannot run with; `f` names the file for the error.
pub(super) fn check_limits(l: &Limits, f: &str) -> Result<(), ConfigError> {
    let checks: [(&str, usize); 10] = [
        ("limits.max_connections", l.max_connections),
        ("limits.max_http_connections", l.max_http_connections),
        (
            "limits.new_connections_per_sec",
            l.new_connections_per_sec as usize,
        ),
        ("limits.messages_per_sec", l.messages_per_sec as usize),
        ("limits.max_subscriptions", l.max_subscriptions),
        (
            "limits.max_channels_per_publish",
            l.max_channels_per_publish,
        ),
        ("limits.max_presence", l.max_presence),
        ("limits.max_body_bytes", l.max_body_bytes),
        ("limits.max_frame_bytes", l.max_frame_bytes),
        ("limits.outbox_messages", l.outbox_messages),
    ];
    for (key, value) in checks {
        if value == 0 {
            return Err(ConfigError::new(f, key, "must be at least 1"));
        }
    }
    if let Some(n) = l.max_backplane_frame_bytes
        && n < l.min_backplane_frame_bytes()
    {
        return Err(ConfigError::new(
            f,
            "limits.max_backplane_frame_bytes",
            format!(
                "must be at least {} (the larger of max_body_bytes and max_frame_bytes, plus \
                 {FRAME_ENVELOPE_BYTES}), or publishes the node accepts would be dropped",
                l.min_backplane_frame_bytes()
            ),
        ));
    }
    if l.max_frame_bytes < 256 {
        return Err(ConfigError::new(
            f,
            "limits.max_frame_bytes",
            "must be at least 256",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn zero_limit_is_refused() {
        let err = Config::from_toml("[limits]\noutbox_messages = 0\n").unwrap_err();
        assert_eq!(err.key, "limits.outbox_messages");
    }
}
