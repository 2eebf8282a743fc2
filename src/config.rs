//! Node configuration: flags, `HERALD_*` environment variables and the TOML file,
//! merged in that order of precedence over built-in defaults (docs/CONFIG.md).
//!
//! This module owns parsing and validation only. Every value is checked here, at
//! start-up, so the rest of the node can trust a [`Config`]; a bad value becomes a
//! [`ConfigError`] that names its source, its key and the reason.
//!
//! This file holds the resolved [`Config`], its error, and the entry points that build
//! and check it. The parts live beside it: `flags` (command line and environment),
//! `file` (the TOML schema as written), `resolve` (the merge, one function per
//! section), `limits`, `namespace` (namespaces and their rules) and `duration`.
//! Nothing here calls a feature: what a feature checks of its own keys (token keys,
//! ingest sources) it checks as the node builds it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod duration;
mod file;
mod flags;
mod limits;
mod namespace;
mod resolve;

pub use duration::parse_duration;
pub use file::IngestSource;
pub use flags::{Flags, SecretEnv};
pub use limits::{DEFAULT_BACKPLANE_FRAME_BYTES, FRAME_ENVELOPE_BYTES, Limits};
pub use namespace::{Namespace, Namespaces, Rule};

use file::parse_file;

/// A configuration value that cannot be used: where it came from, which key, why.
#[derive(Debug, thiserror::Error)]
#[error("config: {source_name}: {key}: {reason}")]
pub struct ConfigError {
    pub source_name: String,
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    fn new(source: impl Into<String>, key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            source_name: source.into(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// How the node writes its logs (`--log-format`); None in [`Config`] lets the binary
/// choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// `[auth]`: API keys, connection tokens, origins.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    pub api_keys: Vec<String>,
    pub require_token: Option<bool>,
    pub jwt_algorithms: Vec<String>,
    pub jwt_hs256_secret: Option<String>,
    pub jwt_public_key_file: Option<PathBuf>,
    pub allowed_origins: Vec<String>,
}

/// `[redis]`'s TLS keys (docs/CONFIG.md "Redis over TLS"). Only the paths and the
/// name: the Redis engine reads and checks the files as the node builds it.
#[derive(Debug, Clone, Default)]
pub struct RedisTlsConfig {
    /// PEM certificates trusted besides the system's roots (`redis.tls_ca_file`).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS (`redis.tls_cert_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of that certificate (`redis.tls_key_file`).
    pub key_file: Option<PathBuf>,
    /// The name checked in the server's certificate instead of the URL's host
    /// (`redis.tls_server_name`).
    pub server_name: Option<String>,
}

impl RedisTlsConfig {
    /// Whether any TLS key is set.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
            || self.server_name.is_some()
    }
}

/// Which Redis pub/sub the nodes speak (`redis.pubsub`, docs/CONFIG.md). Every node
/// of a fleet must end up on the same one: a node on classic pub/sub does not hear a
/// node that publishes sharded, and the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisPubSub {
    /// Sharded on a Redis Cluster whose servers have `SSUBSCRIBE` (Redis 7.0 and
    /// later); classic everywhere else.
    #[default]
    Auto,
    /// `SSUBSCRIBE`/`SPUBLISH`: each channel on the shard that owns its slot.
    Sharded,
    /// `SUBSCRIBE`/`PUBLISH`: every message goes to every server of a cluster.
    Classic,
}

/// The resolved configuration of one node.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub redis_url: Option<String>,
    /// TLS settings of the Redis connections (`rediss://` URLs only).
    pub redis_tls: RedisTlsConfig,
    /// Classic or sharded pub/sub (`redis.pubsub`).
    pub redis_pubsub: RedisPubSub,
    pub node_id: String,
    pub drain_period: Duration,
    pub ping_interval: Duration,
    pub idempotency_ttl: Duration,
    pub prefix: String,
    pub insecure: bool,
    pub log_format: Option<LogFormat>,
    pub static_dir: PathBuf,
    pub auth: AuthConfig,
    pub limits: Limits,
    pub namespaces: Namespaces,
    pub ingest: Vec<IngestSource>,
    /// How long a node stays subscribed to a channel after its last local subscriber
    /// left, so that churn (leave and rejoin) costs no Redis round trips.
    pub unsubscribe_grace: Duration,
    /// An HTTP request not answered within this gets 408.
    pub http_timeout: Duration,
    /// A connection must send its request headers within this (slow-loris guard); it
    /// is also how long an idle connection is kept.
    pub header_read_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            redis_url: None,
            redis_tls: RedisTlsConfig::default(),
            redis_pubsub: RedisPubSub::Auto,
            node_id: default_node_id(),
            drain_period: Duration::from_secs(10),
            ping_interval: Duration::from_secs(25),
            idempotency_ttl: Duration::from_secs(300),
            prefix: "herald".into(),
            insecure: false,
            log_format: None,
            static_dir: PathBuf::from("static"),
            auth: AuthConfig::default(),
            limits: Limits::default(),
            namespaces: Namespaces::Developer(Namespace::open()),
            ingest: Vec::new(),
            unsubscribe_grace: Duration::from_secs(2),
            http_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

fn default_node_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "herald".into())
}

impl Config {
    /// Builds the configuration from flags (which already include their environment
    /// variables), secret environment variables and the optional file.
    pub fn load(flags: &Flags, env: &SecretEnv) -> Result<Config, ConfigError> {
        let (file, file_name) = match &flags.config {
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new(&name, "--config", format!("cannot read the file: {e}"))
                })?;
                (Some(parse_file(&text, &name)?), name)
            }
            None => (None, String::new()),
        };
        Self::resolve(flags, env, file, &file_name)
    }

    /// Parses a configuration file's text alone (defaults for everything else).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let file = parse_file(text, "config")?;
        Self::resolve(
            &Flags::default(),
            &SecretEnv::default(),
            Some(file),
            "config",
        )
    }
}

/// Start-up rules that span several keys (docs/CONFIG.md "Secure by default",
/// "Ingest and upstream"). Returns the configuration unchanged when it may run. What a
/// feature checks of its own keys (token keys, ingest sources) it checks as the node
/// builds it ([`crate::server::Node::start`]), with the same exit code.
pub fn check_startup(cfg: Config) -> Result<Config, ConfigError> {
    let has_jwt_key = cfg.auth.jwt_hs256_secret.is_some() || cfg.auth.jwt_public_key_file.is_some();
    if !cfg.listen.ip().is_loopback()
        && !cfg.insecure
        && (cfg.auth.api_keys.is_empty() || !has_jwt_key)
    {
        return Err(ConfigError::new(
            "server",
            "listen",
            format!(
                "{} is not a loopback address: configure API keys (HERALD_API_KEYS) and a JWT key \
                 (HERALD_JWT_HS256_SECRET or auth.jwt_public_key_file), or start with --insecure",
                cfg.listen
            ),
        ));
    }
    let needs_redis = !cfg.ingest.is_empty() || cfg.namespaces.iter().any(|(_, ns)| ns.upstream);
    if needs_redis && cfg.redis_url.is_none() {
        return Err(ConfigError::new(
            "config",
            "redis.url",
            "ingest sources and upstream namespaces need Redis",
        ));
    }
    Ok(cfg)
}
