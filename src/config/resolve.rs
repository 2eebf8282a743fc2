//! Resolving: the flags, the secret environment and the file merged over the defaults
//! into one [`Config`], flag (or its variable) over file over default, one function per
//! section of the file. Every value is checked as it is taken, so the first bad one
//! stops the node with an error that names where it came from.
//!
//! Reading the file is left to `config::file`; the checks of one section's own
//! types to `config::limits` and `config::namespace`; rules that span sections to
//! [`super::check_startup`].

use std::net::SocketAddr;
use std::time::Duration;

use super::duration::{parse_duration, positive};
use super::file::{AuthSection, FileConfig, RedisSection, ServerSection};
use super::limits::check_limits;
use super::namespace::resolve_namespaces;
use super::{
    AuthConfig, Config, ConfigError, Flags, Limits, LogFormat, RedisPubSub, RedisTlsConfig,
    SecretEnv,
};

/// A value chosen by precedence, with where it came from and under which key, for the
/// error it may cause.
struct Picked<'a> {
    value: &'a str,
    source: &'a str,
    key: &'static str,
}

impl Picked<'_> {
    fn error(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::new(self.source, self.key, reason)
    }
}

/// The flag (or its variable) wins over the file.
fn pick<'a>(
    flag: &'a Option<String>,
    flag_name: &'static str,
    file: &'a Option<String>,
    file_name: &'a str,
    file_key: &'static str,
) -> Option<Picked<'a>> {
    let (value, source, key) = match (flag, file) {
        (Some(v), _) => (v, "command line or environment", flag_name),
        (None, Some(v)) => (v, file_name, file_key),
        (None, None) => return None,
    };
    Some(Picked { value, source, key })
}

impl Config {
    /// The configuration of `flags`, `env` and the parsed `file` (None: no file, a
    /// developer node where every namespace is open). `file_name` names the file in
    /// errors.
    pub(super) fn resolve(
        flags: &Flags,
        env: &SecretEnv,
        file: Option<FileConfig>,
        file_name: &str,
    ) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        let configured = file.is_some();
        let FileConfig {
            server,
            redis,
            auth,
            limits,
            default_namespace,
            namespaces,
            ingest,
        } = file.unwrap_or_default();
        let f = file_name;

        cfg.resolve_server(flags, &server, f)?;
        cfg.resolve_redis(flags, &redis, f)?;
        cfg.insecure = flags.insecure;
        cfg.auth = resolve_auth(auth, env, f)?;
        // `write_coalesce` is written under [server] but kept with the limits, where
        // the rest of the node reads it; [limits] itself never sets it.
        cfg.limits = Limits {
            write_coalesce: cfg.limits.write_coalesce,
            ..limits
        };
        check_limits(&cfg.limits, f)?;
        if configured {
            cfg.namespaces = resolve_namespaces(&default_namespace, &namespaces, f)?;
        }
        cfg.ingest = ingest;
        Ok(cfg)
    }

    /// `[server]` and the flags that override it.
    fn resolve_server(
        &mut self,
        flags: &Flags,
        s: &ServerSection,
        f: &str,
    ) -> Result<(), ConfigError> {
        let listen = pick(
            &flags.listen,
            "--listen/HERALD_LISTEN",
            &s.listen,
            f,
            "server.listen",
        );
        if let Some(v) = listen {
            self.listen = parse_listen(&v)?;
        }
        let node_id = pick(
            &flags.node_id,
            "--node-id/HERALD_NODE_ID",
            &s.node_id,
            f,
            "server.node_id",
        );
        if let Some(v) = node_id {
            self.node_id = check_node_id(&v)?;
        }
        let drain_period = pick(
            &flags.drain_period,
            "--drain-period/HERALD_DRAIN_PERIOD",
            &s.drain_period,
            f,
            "server.drain_period",
        );
        if let Some(v) = drain_period {
            self.drain_period = parse_duration(v.value).map_err(|r| v.error(r))?;
        }
        self.resolve_server_timers(s, f)?;
        let log_format = pick(
            &flags.log_format,
            "--log-format/HERALD_LOG_FORMAT",
            &s.log_format,
            f,
            "server.log_format",
        );
        if let Some(v) = log_format {
            self.log_format = Some(parse_log_format(&v)?);
        }
        if let Some(dir) = flags.static_dir.clone().or(s.static_dir.clone()) {
            self.static_dir = dir;
        }
        Ok(())
    }

    /// The durations of `[server]` that only the file sets.
    fn resolve_server_timers(&mut self, s: &ServerSection, f: &str) -> Result<(), ConfigError> {
        if let Some(v) = &s.ping_interval {
            self.ping_interval = positive(parse_duration(v), f, "server.ping_interval")?;
        }
        if let Some(v) = &s.idempotency_ttl {
            self.idempotency_ttl = positive(parse_duration(v), f, "server.idempotency_ttl")?;
        }
        if let Some(v) = &s.write_coalesce {
            self.limits.write_coalesce =
                parse_duration(v).map_err(|r| ConfigError::new(f, "server.write_coalesce", r))?;
            // Coalesced frames wait up to one tick: the cap (docs/CONFIG.md) bounds the
            // latency that batching adds.
            if self.limits.write_coalesce > Duration::from_millis(100) {
                return Err(ConfigError::new(
                    f,
                    "server.write_coalesce",
                    "must be at most 100ms",
                ));
            }
        }
        if let Some(v) = &s.http_timeout {
            self.http_timeout = positive(parse_duration(v), f, "server.http_timeout")?;
        }
        if let Some(v) = &s.header_read_timeout {
            self.header_read_timeout =
                positive(parse_duration(v), f, "server.header_read_timeout")?;
        }
        if let Some(v) = &s.unsubscribe_grace {
            self.unsubscribe_grace = parse_duration(v)
                .map_err(|r| ConfigError::new(f, "server.unsubscribe_grace", r))?;
        }
        Ok(())
    }

    /// `[redis]` and the flags that override it.
    fn resolve_redis(
        &mut self,
        flags: &Flags,
        s: &RedisSection,
        f: &str,
    ) -> Result<(), ConfigError> {
        let url = pick(
            &flags.redis_url,
            "--redis/HERALD_REDIS_URL",
            &s.url,
            f,
            "redis.url",
        );
        if let Some(v) = url {
            self.redis_url = Some(check_redis_url(&v)?);
        }
        let prefix = pick(
            &flags.prefix,
            "--prefix/HERALD_PREFIX",
            &s.prefix,
            f,
            "redis.prefix",
        );
        if let Some(v) = prefix {
            self.prefix = check_prefix(&v)?;
        }
        if let Some(v) = &s.pubsub {
            self.redis_pubsub =
                parse_pubsub(v).map_err(|r| ConfigError::new(f, "redis.pubsub", r))?;
        }
        self.resolve_redis_tls(s, f)
    }

    /// The TLS keys of `[redis]` (file only): a client certificate needs its key and
    /// the other way round, and every key needs a `rediss://` URL. The files are read
    /// by the Redis engine as the node builds it.
    fn resolve_redis_tls(&mut self, s: &RedisSection, f: &str) -> Result<(), ConfigError> {
        let tls = RedisTlsConfig {
            ca_file: s.tls_ca_file.clone(),
            cert_file: s.tls_cert_file.clone(),
            key_file: s.tls_key_file.clone(),
            server_name: s.tls_server_name.clone(),
        };
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    f,
                    "redis.tls_key_file",
                    "redis.tls_cert_file needs its private key in redis.tls_key_file",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    f,
                    "redis.tls_cert_file",
                    "redis.tls_key_file needs its certificate in redis.tls_cert_file",
                ));
            }
            _ => {}
        }
        if tls.server_name.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::new(
                f,
                "redis.tls_server_name",
                "must not be empty",
            ));
        }
        let uses_tls = self
            .redis_url
            .as_deref()
            .is_some_and(|u| u.starts_with("rediss://") || u.starts_with("rediss-cluster://"));
        if tls.is_set() && !uses_tls {
            let key = if tls.ca_file.is_some() {
                "redis.tls_ca_file"
            } else if tls.cert_file.is_some() {
                "redis.tls_cert_file"
            } else {
                "redis.tls_server_name"
            };
            return Err(ConfigError::new(
                f,
                key,
                "the TLS keys need a rediss:// (or rediss-cluster://) redis.url",
            ));
        }
        self.redis_tls = tls;
        Ok(())
    }
}

fn parse_listen(v: &Picked) -> Result<SocketAddr, ConfigError> {
    v.value.parse().map_err(|e| {
        v.error(format!(
            "'{}' is not an address like 127.0.0.1:8080 ({e})",
            v.value
        ))
    })
}

fn check_node_id(v: &Picked) -> Result<String, ConfigError> {
    let id = v.value;
    if id.is_empty()
        || id.len() > 128
        || id.chars().any(|c| c.is_control() || c == '"' || c == '\\')
    {
        return Err(v.error("must be 1 to 128 printable characters without quotes"));
    }
    Ok(id.to_string())
}

fn parse_log_format(v: &Picked) -> Result<LogFormat, ConfigError> {
    match v.value {
        "json" => Ok(LogFormat::Json),
        "text" => Ok(LogFormat::Text),
        other => Err(v.error(format!("'{other}' is not one of json, text"))),
    }
}

fn parse_pubsub(v: &str) -> Result<RedisPubSub, String> {
    match v {
        "auto" => Ok(RedisPubSub::Auto),
        "sharded" => Ok(RedisPubSub::Sharded),
        "classic" => Ok(RedisPubSub::Classic),
        other => Err(format!("'{other}' is not one of auto, sharded, classic")),
    }
}

fn check_redis_url(v: &Picked) -> Result<String, ConfigError> {
    if v.value.starts_with("rediss-sentinel://") {
        return Err(v.error(
            "Redis Sentinel over TLS (rediss-sentinel://) is not supported; \
             use redis-sentinel:// on a trusted network",
        ));
    }
    if v.value.starts_with("redis-sentinel://") {
        check_sentinel_query(v)?;
        return Ok(v.value.to_string());
    }
    let schemes = [
        "redis://",
        "rediss://",
        "redis-cluster://",
        "rediss-cluster://",
    ];
    if !schemes.iter().any(|s| v.value.starts_with(s)) {
        return Err(v.error(
            "must start with redis://, rediss://, redis-cluster://, rediss-cluster:// \
                 or redis-sentinel://",
        ));
    }
    Ok(v.value.to_string())
}

/// A `redis-sentinel://` URL names its master in `sentinelServiceName`. Separate
/// sentinel credentials are refused: the sentinels get the URL's user and password,
/// like the master and replicas.
fn check_sentinel_query(v: &Picked) -> Result<(), ConfigError> {
    let query = v.value.split_once('?').map_or("", |(_, q)| q);
    let mut service = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "sentinelServiceName" if !value.is_empty() => service = true,
            "sentinelUsername" | "sentinelPassword" => {
                return Err(v.error(format!(
                    "{name} is not supported: the sentinels are sent the URL's own \
                     user and password"
                )));
            }
            _ => {}
        }
    }
    if !service {
        return Err(
            v.error("a redis-sentinel:// URL needs ?sentinelServiceName=<the master's name>")
        );
    }
    Ok(())
}

fn check_prefix(v: &Picked) -> Result<String, ConfigError> {
    let prefix = v.value;
    if prefix.is_empty()
        || prefix.len() > 64
        || prefix.contains(['{', '}'])
        || prefix.chars().any(char::is_whitespace)
    {
        return Err(v.error("must be 1 to 64 characters without braces or spaces"));
    }
    Ok(prefix.to_string())
}

/// `[auth]`, with the secrets of the environment over the file's.
fn resolve_auth(s: AuthSection, env: &SecretEnv, f: &str) -> Result<AuthConfig, ConfigError> {
    let mut auth = AuthConfig {
        api_keys: s.api_keys,
        require_token: s.require_token,
        jwt_algorithms: s.jwt_algorithms,
        jwt_hs256_secret: s.jwt_hs256_secret,
        jwt_public_key_file: s.jwt_public_key_file,
        allowed_origins: s.allowed_origins,
    };
    if let Some(keys) = &env.api_keys {
        auth.api_keys = keys
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(String::from)
            .collect();
    }
    if let Some(secret) = &env.jwt_hs256_secret {
        auth.jwt_hs256_secret = Some(secret.clone());
    }
    for (i, key) in auth.api_keys.iter().enumerate() {
        if key.len() < 16 {
            return Err(ConfigError::new(
                "auth",
                format!("api_keys[{i}]"),
                "an API key must be at least 16 characters",
            ));
        }
    }
    for origin in &auth.allowed_origins {
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
    Ok(auth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rule;
    use crate::config::file::parse_file;

    #[test]
    fn no_file_is_a_developer_node() {
        let cfg = Config::resolve(&Flags::default(), &SecretEnv::default(), None, "").unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:8080");
        let ns = cfg.namespaces.for_channel("anything:x").unwrap();
        assert_eq!(ns.publish, Rule::Anyone);
        assert!(!ns.is_durable());
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
    fn redis_pubsub_is_read_and_checked() {
        assert_eq!(
            Config::from_toml("").unwrap().redis_pubsub,
            RedisPubSub::Auto
        );
        for (text, want) in [
            ("auto", RedisPubSub::Auto),
            ("sharded", RedisPubSub::Sharded),
            ("classic", RedisPubSub::Classic),
        ] {
            let cfg = Config::from_toml(&format!("[redis]\npubsub = \"{text}\"\n")).unwrap();
            assert_eq!(cfg.redis_pubsub, want);
        }
        let err = Config::from_toml("[redis]\npubsub = \"spread\"\n").unwrap_err();
        assert_eq!(err.key, "redis.pubsub");
        assert!(
            err.reason.contains("auto, sharded, classic"),
            "{}",
            err.reason
        );
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

    #[test]
    fn redis_tls_keys_are_read_and_checked() {
        let cfg = Config::from_toml(
            "[redis]\nurl = \"rediss://u:p@127.0.0.1:6380\"\ntls_ca_file = \"/ca.pem\"\n\
             tls_server_name = \"redis.internal\"\n",
        )
        .unwrap();
        assert_eq!(
            cfg.redis_tls.ca_file.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        assert_eq!(cfg.redis_tls.server_name.as_deref(), Some("redis.internal"));
        let err = Config::from_toml(
            "[redis]\nurl = \"rediss://127.0.0.1:6380\"\ntls_cert_file = \"/c.pem\"\n",
        )
        .unwrap_err();
        assert_eq!(err.key, "redis.tls_key_file");
        let err = Config::from_toml(
            "[redis]\nurl = \"rediss://127.0.0.1:6380\"\ntls_key_file = \"/k.pem\"\n",
        )
        .unwrap_err();
        assert_eq!(err.key, "redis.tls_cert_file");
        let err = Config::from_toml(
            "[redis]\nurl = \"redis://127.0.0.1:6379\"\ntls_ca_file = \"/ca.pem\"\n",
        )
        .unwrap_err();
        assert_eq!(err.key, "redis.tls_ca_file");
        assert!(err.to_string().contains("rediss://"), "{err}");
    }

    #[test]
    fn redis_sentinel_urls_are_checked() {
        let url = "redis-sentinel://127.0.0.1:26379/0?sentinelServiceName=m&node=127.0.0.1:26380";
        let cfg = Config::from_toml(&format!("[redis]\nurl = \"{url}\"\n")).unwrap();
        assert_eq!(cfg.redis_url.as_deref(), Some(url));
        for (bad, says) in [
            ("redis-sentinel://127.0.0.1:26379", "sentinelServiceName"),
            (
                "redis-sentinel://127.0.0.1:26379?sentinelServiceName=",
                "sentinelServiceName",
            ),
            (
                "redis-sentinel://127.0.0.1:26379?sentinelServiceName=m&sentinelPassword=x",
                "sentinelPassword is not supported",
            ),
            (
                "rediss-sentinel://127.0.0.1:26379?sentinelServiceName=m",
                "not supported",
            ),
        ] {
            let err = Config::from_toml(&format!("[redis]\nurl = \"{bad}\"\n")).unwrap_err();
            assert_eq!(err.key, "redis.url", "{bad}");
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
        let err = Config::from_toml(
            "[redis]\nurl = \"redis-sentinel://127.0.0.1:26379?sentinelServiceName=m\"\n\
             tls_ca_file = \"/ca.pem\"\n",
        )
        .unwrap_err();
        assert_eq!(err.key, "redis.tls_ca_file");
    }
}
