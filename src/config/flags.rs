//! Where values come from besides the file: command-line flags with their `HERALD_*`
//! variables, and the secrets that only the environment may carry.
//!
//! This module only reads; checking and merging the values over the file and the
//! defaults is left to `config::resolve`.

use std::path::PathBuf;

use clap::Parser;

/// Command-line flags. Each one also reads its `HERALD_*` variable (clap's `env`),
/// which gives "flag over environment" for free.
#[derive(Debug, Parser, Default)]
#[command(
    name = "herald",
    version,
    about = "Real-time WebSocket fan-out gateway"
)]
pub struct Flags {
    /// Address to listen on (HTTP and WebSocket).
    #[arg(long, env = "HERALD_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Redis URL: redis://, rediss:// (TLS), redis-cluster://, rediss-cluster:// or
    /// redis-sentinel:// (docs/CONFIG.md).
    /// None: the in-memory backplane.
    #[arg(long = "redis", env = "HERALD_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// TOML configuration file.
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Name of this node (default: the host name).
    #[arg(long, env = "HERALD_NODE_ID", value_name = "NAME")]
    pub node_id: Option<String>,
    /// On SIGTERM, close sockets spread over this period (e.g. "10s").
    #[arg(long, env = "HERALD_DRAIN_PERIOD", value_name = "DUR")]
    pub drain_period: Option<String>,
    /// Prefix of every Redis key and channel.
    #[arg(long, env = "HERALD_PREFIX", value_name = "P")]
    pub prefix: Option<String>,
    /// Allow a non-loopback listen address without API keys and a JWT key.
    #[arg(
        long,
        env = "HERALD_INSECURE",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub insecure: bool,
    /// Log format: json or text.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_name = "json|text")]
    pub log_format: Option<String>,
    /// Directory served at `/` (the demo page and herald.js).
    #[arg(long, env = "HERALD_STATIC_DIR", value_name = "DIR")]
    pub static_dir: Option<PathBuf>,
}

/// Environment-only settings (secrets never travel as flags: `ps` would show them).
#[derive(Debug, Default, Clone)]
pub struct SecretEnv {
    pub api_keys: Option<String>,
    pub jwt_hs256_secret: Option<String>,
}

impl SecretEnv {
    pub fn from_process() -> Self {
        Self {
            api_keys: std::env::var("HERALD_API_KEYS").ok(),
            jwt_hs256_secret: std::env::var("HERALD_JWT_HS256_SECRET").ok(),
        }
    }
}
