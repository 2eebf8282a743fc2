//! Node configuration: flags, `HERALD_*` environment variables and the TOML file,
//! merged in that order of precedence over built-in defaults (docs/CONFIG.md).
//!
//! This module owns parsing and validation only. Every value is checked here, at
//! start-up, so the rest of the node can trust a [`Config`]; a bad value becomes a
//! [`ConfigError`] that names its source, its key and the reason.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::protocol::{self, validate_channel};

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
    /// Redis URL: redis://, rediss:// (TLS) or redis-cluster://. None: the in-memory backplane.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Who may perform an operation in a namespace (docs/CONFIG.md "Namespaces and rules").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rule {
    Nobody,
    Anyone,
    Authenticated,
    Granted,
}

/// The options of one namespace, resolved (defaults applied).
#[derive(Debug, Clone)]
pub struct Namespace {
    pub subscribe: Rule,
    pub publish: Rule,
    pub history: Rule,
    pub presence_read: Rule,
    /// Some: the namespace is durable, with history in a stream of about this length.
    pub history_size: Option<u64>,
    pub history_ttl: Duration,
    pub presence: bool,
    pub join_leave: bool,
    pub presence_ttl: Duration,
    pub upstream: bool,
    pub upstream_maxlen: u64,
}

impl Namespace {
    /// The developer's namespace: everything open, nothing durable.
    pub fn open() -> Self {
        Self {
            subscribe: Rule::Anyone,
            publish: Rule::Anyone,
            history: Rule::Anyone,
            presence_read: Rule::Anyone,
            history_size: None,
            history_ttl: Duration::from_secs(24 * 3600),
            presence: false,
            join_leave: false,
            presence_ttl: Duration::from_secs(30),
            upstream: false,
            upstream_maxlen: 100_000,
        }
    }

    pub fn is_durable(&self) -> bool {
        self.history_size.is_some()
    }
}

/// Which namespaces exist and what they allow.
#[derive(Debug, Clone)]
pub enum Namespaces {
    /// No configuration file: every namespace exists with [`Namespace::open`].
    Developer(Namespace),
    /// A configuration file: its namespaces plus the default one (key "").
    Configured(BTreeMap<String, Namespace>),
}

impl Namespaces {
    /// The options of `channel`'s namespace, or None where it does not exist.
    pub fn for_channel(&self, channel: &str) -> Option<&Namespace> {
        match self {
            Namespaces::Developer(ns) => Some(ns),
            Namespaces::Configured(map) => map.get(protocol::namespace_of(channel)),
        }
    }

    pub fn iter(&self) -> Box<dyn Iterator<Item = (&str, &Namespace)> + '_> {
        match self {
            Namespaces::Developer(ns) => Box::new(std::iter::once(("", ns))),
            Namespaces::Configured(map) => Box::new(map.iter().map(|(k, v)| (k.as_str(), v))),
        }
    }
}

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

/// One `[[ingest]]` source, as written (docs/CONFIG.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSource {
    pub stream: String,
    #[serde(default = "default_group")]
    pub group: String,
    pub channel: Option<String>,
    pub channel_field: Option<String>,
    #[serde(default = "default_data_field")]
    pub data: String,
    #[serde(default = "default_start")]
    pub start: String,
    #[serde(default = "default_true")]
    pub ordered: bool,
    #[serde(default)]
    pub reclaim_idle: Option<String>,
    #[serde(default = "default_max_deliveries")]
    pub max_deliveries: u32,
    pub dead_letter: Option<String>,
    #[serde(default = "default_batch")]
    pub batch: u32,
}

fn default_group() -> String {
    "herald".into()
}
fn default_data_field() -> String {
    "data".into()
}
fn default_start() -> String {
    "$".into()
}
fn default_true() -> bool {
    true
}
fn default_max_deliveries() -> u32 {
    5
}
fn default_batch() -> u32 {
    100
}

/// The resolved configuration of one node.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub redis_url: Option<String>,
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

// ---- the TOML file, as written --------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    redis: RedisSection,
    #[serde(default)]
    auth: AuthSection,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    default_namespace: NamespaceSection,
    #[serde(default)]
    namespaces: BTreeMap<String, NamespaceSection>,
    #[serde(default)]
    ingest: Vec<IngestSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    listen: Option<String>,
    node_id: Option<String>,
    drain_period: Option<String>,
    ping_interval: Option<String>,
    idempotency_ttl: Option<String>,
    log_format: Option<String>,
    static_dir: Option<PathBuf>,
    write_coalesce: Option<String>,
    unsubscribe_grace: Option<String>,
    http_timeout: Option<String>,
    header_read_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisSection {
    url: Option<String>,
    prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthSection {
    #[serde(default)]
    api_keys: Vec<String>,
    require_token: Option<bool>,
    #[serde(default)]
    jwt_algorithms: Vec<String>,
    jwt_hs256_secret: Option<String>,
    jwt_public_key_file: Option<PathBuf>,
    #[serde(default)]
    allowed_origins: Vec<String>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct NamespaceSection {
    subscribe: Option<Rule>,
    publish: Option<Rule>,
    history: Option<Rule>,
    presence_read: Option<Rule>,
    history_size: Option<u64>,
    history_ttl: Option<String>,
    presence: Option<bool>,
    join_leave: Option<bool>,
    presence_ttl: Option<String>,
    upstream: Option<bool>,
    upstream_maxlen: Option<u64>,
}

/// Parses a duration with a unit ("250ms", "30s", "5m", "1h").
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(value.trim()).map_err(|e| {
        format!("'{value}' is not a duration ({e}); use e.g. \"250ms\", \"30s\", \"5m\"")
    })?;
    Ok(d)
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

    fn resolve(
        flags: &Flags,
        env: &SecretEnv,
        file: Option<FileConfig>,
        file_name: &str,
    ) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        let configured = file.is_some();
        let file = file.unwrap_or_default();
        let f = file_name;

        // server
        if let Some(v) = pick(
            &flags.listen,
            "--listen/HERALD_LISTEN",
            &file.server.listen,
            f,
            "server.listen",
        ) {
            cfg.listen = v.0.parse().map_err(|e| {
                ConfigError::new(
                    v.1,
                    v.2,
                    format!("'{}' is not an address like 127.0.0.1:8080 ({e})", v.0),
                )
            })?;
        }
        if let Some(v) = pick(
            &flags.node_id,
            "--node-id/HERALD_NODE_ID",
            &file.server.node_id,
            f,
            "server.node_id",
        ) {
            if v.0.is_empty()
                || v.0.len() > 128
                || v.0.chars().any(|c| c.is_control() || c == '"' || c == '\\')
            {
                return Err(ConfigError::new(
                    v.1,
                    v.2,
                    "must be 1 to 128 printable characters without quotes",
                ));
            }
            cfg.node_id = v.0.clone();
        }
        if let Some(v) = pick(
            &flags.drain_period,
            "--drain-period/HERALD_DRAIN_PERIOD",
            &file.server.drain_period,
            f,
            "server.drain_period",
        ) {
            cfg.drain_period = parse_duration(v.0).map_err(|r| ConfigError::new(v.1, v.2, r))?;
        }
        if let Some(v) = &file.server.ping_interval {
            cfg.ping_interval = positive(parse_duration(v), f, "server.ping_interval")?;
        }
        if let Some(v) = &file.server.idempotency_ttl {
            cfg.idempotency_ttl = positive(parse_duration(v), f, "server.idempotency_ttl")?;
        }
        if let Some(v) = &file.server.write_coalesce {
            cfg.limits.write_coalesce =
                parse_duration(v).map_err(|r| ConfigError::new(f, "server.write_coalesce", r))?;
            if cfg.limits.write_coalesce > Duration::from_millis(100) {
                return Err(ConfigError::new(
                    f,
                    "server.write_coalesce",
                    "must be at most 100ms",
                ));
            }
        }
        if let Some(v) = &file.server.http_timeout {
            cfg.http_timeout = positive(parse_duration(v), f, "server.http_timeout")?;
        }
        if let Some(v) = &file.server.header_read_timeout {
            cfg.header_read_timeout = positive(parse_duration(v), f, "server.header_read_timeout")?;
        }
        if let Some(v) = &file.server.unsubscribe_grace {
            cfg.unsubscribe_grace = parse_duration(v)
                .map_err(|r| ConfigError::new(f, "server.unsubscribe_grace", r))?;
        }
        if let Some(v) = pick(
            &flags.log_format,
            "--log-format/HERALD_LOG_FORMAT",
            &file.server.log_format,
            f,
            "server.log_format",
        ) {
            cfg.log_format = Some(match v.0.as_str() {
                "json" => LogFormat::Json,
                "text" => LogFormat::Text,
                other => {
                    return Err(ConfigError::new(
                        v.1,
                        v.2,
                        format!("'{other}' is not one of json, text"),
                    ));
                }
            });
        }
        if let Some(dir) = flags.static_dir.clone().or(file.server.static_dir.clone()) {
            cfg.static_dir = dir;
        }

        // redis
        if let Some(v) = pick(
            &flags.redis_url,
            "--redis/HERALD_REDIS_URL",
            &file.redis.url,
            f,
            "redis.url",
        ) {
            let ok = [
                "redis://",
                "rediss://",
                "redis-cluster://",
                "rediss-cluster://",
            ]
            .iter()
            .any(|s| v.0.starts_with(s));
            if !ok {
                return Err(ConfigError::new(
                    v.1,
                    v.2,
                    "must start with redis://, rediss:// or redis-cluster://",
                ));
            }
            cfg.redis_url = Some(v.0.clone());
        }
        if let Some(v) = pick(
            &flags.prefix,
            "--prefix/HERALD_PREFIX",
            &file.redis.prefix,
            f,
            "redis.prefix",
        ) {
            if v.0.is_empty()
                || v.0.len() > 64
                || v.0.contains(['{', '}'])
                || v.0.chars().any(char::is_whitespace)
            {
                return Err(ConfigError::new(
                    v.1,
                    v.2,
                    "must be 1 to 64 characters without braces or spaces",
                ));
            }
            cfg.prefix = v.0.clone();
        }
        cfg.insecure = flags.insecure;

        // auth
        cfg.auth = AuthConfig {
            api_keys: file.auth.api_keys.clone(),
            require_token: file.auth.require_token,
            jwt_algorithms: file.auth.jwt_algorithms.clone(),
            jwt_hs256_secret: file.auth.jwt_hs256_secret.clone(),
            jwt_public_key_file: file.auth.jwt_public_key_file.clone(),
            allowed_origins: file.auth.allowed_origins.clone(),
        };
        if let Some(keys) = &env.api_keys {
            cfg.auth.api_keys = keys
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(secret) = &env.jwt_hs256_secret {
            cfg.auth.jwt_hs256_secret = Some(secret.clone());
        }
        for (i, key) in cfg.auth.api_keys.iter().enumerate() {
            if key.len() < 16 {
                return Err(ConfigError::new(
                    "auth",
                    format!("api_keys[{i}]"),
                    "an API key must be at least 16 characters",
                ));
            }
        }
        for origin in &cfg.auth.allowed_origins {
            if !(origin == "*" || origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
            {
                return Err(ConfigError::new(
                    f,
                    "auth.allowed_origins",
                    format!("'{origin}' is not an origin like https://app.example.com"),
                ));
            }
        }

        // limits
        cfg.limits = Limits {
            write_coalesce: cfg.limits.write_coalesce,
            ..file.limits.clone()
        };
        check_limits(&cfg.limits, f)?;

        // namespaces
        if configured {
            let mut map = BTreeMap::new();
            map.insert(
                String::new(),
                resolve_namespace(&file.default_namespace, f, "default_namespace")?,
            );
            for (name, section) in &file.namespaces {
                let key = format!("namespaces.{name}");
                if name.is_empty() || name.contains(':') || validate_channel(name).is_err() {
                    return Err(ConfigError::new(
                        f,
                        key,
                        "a namespace name uses the characters of a channel name, without ':'",
                    ));
                }
                map.insert(name.clone(), resolve_namespace(section, f, &key)?);
            }
            cfg.namespaces = Namespaces::Configured(map);
        }
        cfg.ingest = file.ingest;
        Ok(cfg)
    }
}

fn parse_file(text: &str, name: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str::<FileConfig>(text).map_err(|e| {
        let msg = e.message().to_string();
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}")
            })
            .unwrap_or_else(|| "file".into());
        ConfigError::new(name, at, msg)
    })
}

/// The flag (or its variable) wins over the file. Returns the value, its source, its key.
fn pick<'a>(
    flag: &'a Option<String>,
    flag_name: &'static str,
    file: &'a Option<String>,
    file_name: &'a str,
    file_key: &'static str,
) -> Option<(&'a String, &'a str, &'static str)> {
    match (flag, file) {
        (Some(v), _) => Some((v, "command line or environment", flag_name)),
        (None, Some(v)) => Some((v, file_name, file_key)),
        (None, None) => None,
    }
}

fn positive(d: Result<Duration, String>, source: &str, key: &str) -> Result<Duration, ConfigError> {
    match d {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(ConfigError::new(source, key, "must be greater than zero")),
        Err(r) => Err(ConfigError::new(source, key, r)),
    }
}

fn check_limits(l: &Limits, f: &str) -> Result<(), ConfigError> {
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

fn resolve_namespace(s: &NamespaceSection, f: &str, key: &str) -> Result<Namespace, ConfigError> {
    let subscribe = s.subscribe.unwrap_or(Rule::Anyone);
    if subscribe == Rule::Nobody {
        return Err(ConfigError::new(
            f,
            format!("{key}.subscribe"),
            "'nobody' is not allowed here; use anyone, authenticated or granted",
        ));
    }
    for (name, rule) in [("history", s.history), ("presence_read", s.presence_read)] {
        if rule == Some(Rule::Nobody) {
            return Err(ConfigError::new(
                f,
                format!("{key}.{name}"),
                "'nobody' is not allowed here; use anyone, authenticated or granted",
            ));
        }
    }
    if s.history_size == Some(0) {
        return Err(ConfigError::new(
            f,
            format!("{key}.history_size"),
            "must be at least 1",
        ));
    }
    let dur =
        |v: &Option<String>, name: &str, default: Duration| -> Result<Duration, ConfigError> {
            match v {
                Some(v) => positive(parse_duration(v), f, &format!("{key}.{name}")),
                None => Ok(default),
            }
        };
    Ok(Namespace {
        subscribe,
        publish: s.publish.unwrap_or(Rule::Nobody),
        history: s.history.unwrap_or(subscribe),
        presence_read: s.presence_read.unwrap_or(subscribe),
        history_size: s.history_size,
        history_ttl: dur(
            &s.history_ttl,
            "history_ttl",
            Duration::from_secs(24 * 3600),
        )?,
        presence: s.presence.unwrap_or(false),
        join_leave: s.join_leave.unwrap_or(false),
        presence_ttl: dur(&s.presence_ttl, "presence_ttl", Duration::from_secs(30))?,
        upstream: s.upstream.unwrap_or(false),
        upstream_maxlen: s.upstream_maxlen.unwrap_or(100_000),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_is_a_developer_node() {
        let cfg = Config::resolve(&Flags::default(), &SecretEnv::default(), None, "").unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:8080");
        let ns = cfg.namespaces.for_channel("anything:x").unwrap();
        assert_eq!(ns.publish, Rule::Anyone);
        assert!(!ns.is_durable());
    }

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        let err =
            Config::from_toml("[server]\nlisten = \"127.0.0.1:1\"\nlistn = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
        assert!(err.to_string().contains("listn"), "{err}");
    }

    #[test]
    fn bad_duration_names_the_key() {
        let err =
            Config::from_toml("[namespaces.chat]\nhistory_ttl = \"ten minutes\"\n").unwrap_err();
        assert_eq!(err.key, "namespaces.chat.history_ttl");
    }

    #[test]
    fn bad_rule_value_is_refused() {
        let err = Config::from_toml("[namespaces.chat]\npublish = \"everyone\"\n").unwrap_err();
        assert!(err.reason.contains("everyone"), "{err}");
    }

    #[test]
    fn configured_namespaces_default_to_no_client_publish() {
        let cfg = Config::from_toml("[namespaces.chat]\nhistory_size = 10\n").unwrap();
        let chat = cfg.namespaces.for_channel("chat:a").unwrap();
        assert_eq!(chat.publish, Rule::Nobody);
        assert_eq!(chat.history_size, Some(10));
        assert!(cfg.namespaces.for_channel("news:a").is_none());
        assert!(cfg.namespaces.for_channel("plain").is_some());
    }

    #[test]
    fn flag_wins_over_file() {
        let flags = Flags {
            listen: Some("127.0.0.1:9999".into()),
            ..Flags::default()
        };
        let file = parse_file("[server]\nlisten = \"127.0.0.1:1\"\n", "f").unwrap();
        let cfg = Config::resolve(&flags, &SecretEnv::default(), Some(file), "f").unwrap();
        assert_eq!(cfg.listen.port(), 9999);
    }

    #[test]
    fn http_connection_guards_are_read_and_checked() {
        let cfg = Config::from_toml(
            "[server]\nheader_read_timeout = \"2s\"\n[limits]\nmax_http_connections = 7\n",
        )
        .unwrap();
        assert_eq!(cfg.header_read_timeout, Duration::from_secs(2));
        assert_eq!(cfg.limits.max_http_connections, 7);
        let err = Config::from_toml("[server]\nheader_read_timeout = \"0s\"\n").unwrap_err();
        assert_eq!(err.key, "server.header_read_timeout");
        let err = Config::from_toml("[limits]\nmax_http_connections = 0\n").unwrap_err();
        assert_eq!(err.key, "limits.max_http_connections");
    }

    #[test]
    fn zero_limit_is_refused() {
        let err = Config::from_toml("[limits]\noutbox_messages = 0\n").unwrap_err();
        assert_eq!(err.key, "limits.outbox_messages");
    }

    #[test]
    fn api_keys_from_env_replace_the_file() {
        let env = SecretEnv {
            api_keys: Some("aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb".into()),
            jwt_hs256_secret: None,
        };
        let cfg = Config::resolve(&Flags::default(), &env, None, "").unwrap();
        assert_eq!(cfg.auth.api_keys.len(), 2);
    }
}
