//! The TOML configuration file as written (docs/CONFIG.md): one serde struct per
//! section, every key optional, unknown keys refused, and the parse error that names
//! the line.
//!
//! Nothing here is checked beyond its TOML type; `config::resolve` turns the sections
//! into a [`super::Config`]. The `[limits]` table is read straight into
//! [`super::Limits`], and `[[ingest]]` sources are kept as written ([`IngestSource`])
//! for the ingest feature to check as it starts them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Limits, Rule};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    pub(super) server: ServerSection,
    #[serde(default)]
    pub(super) redis: RedisSection,
    #[serde(default)]
    pub(super) auth: AuthSection,
    #[serde(default)]
    pub(super) limits: Limits,
    #[serde(default)]
    pub(super) default_namespace: NamespaceSection,
    #[serde(default)]
    pub(super) namespaces: BTreeMap<String, NamespaceSection>,
    #[serde(default)]
    pub(super) ingest: Vec<IngestSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServerSection {
    pub(super) listen: Option<String>,
    pub(super) node_id: Option<String>,
    pub(super) drain_period: Option<String>,
    pub(super) ping_interval: Option<String>,
    pub(super) idempotency_ttl: Option<String>,
    pub(super) log_format: Option<String>,
    pub(super) static_dir: Option<PathBuf>,
    pub(super) write_coalesce: Option<String>,
    pub(super) unsubscribe_grace: Option<String>,
    pub(super) http_timeout: Option<String>,
    pub(super) header_read_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RedisSection {
    pub(super) url: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) tls_ca_file: Option<PathBuf>,
    pub(super) tls_cert_file: Option<PathBuf>,
    pub(super) tls_key_file: Option<PathBuf>,
    pub(super) tls_server_name: Option<String>,
    pub(super) pubsub: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthSection {
    #[serde(default)]
    pub(super) api_keys: Vec<String>,
    pub(super) require_token: Option<bool>,
    #[serde(default)]
    pub(super) jwt_algorithms: Vec<String>,
    pub(super) jwt_hs256_secret: Option<String>,
    pub(super) jwt_public_key_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) allowed_origins: Vec<String>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct NamespaceSection {
    pub(super) subscribe: Option<Rule>,
    pub(super) publish: Option<Rule>,
    pub(super) history: Option<Rule>,
    pub(super) presence_read: Option<Rule>,
    pub(super) history_size: Option<u64>,
    pub(super) history_ttl: Option<String>,
    pub(super) presence: Option<bool>,
    pub(super) join_leave: Option<bool>,
    pub(super) presence_ttl: Option<String>,
    pub(super) upstream: Option<bool>,
    pub(super) upstream_maxlen: Option<u64>,
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

/// Parses the file's text; an error names the file (`name`) and the line it points at.
pub(super) fn parse_file(text: &str, name: &str) -> Result<FileConfig, ConfigError> {
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

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        let err =
            Config::from_toml("[server]\nlisten = \"127.0.0.1:1\"\nlistn = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
        assert!(err.to_string().contains("listn"), "{err}");
    }
}
