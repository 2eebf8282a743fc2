//! The `[[ingest]]` blocks of the configuration, checked once at start into
//! [`SourceSpec`]s (CONFIG.md). Reading a source is the reader's (`reader.rs`); mapping
//! an entry's fields with the [`ChannelRule`] is `streams/entry.rs`'s.

use std::time::Duration;

use crate::config::{Config, ConfigError, IngestSource, parse_duration};
use crate::protocol;
use crate::streams::entry::{self, ChannelRule};

/// A source, validated.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub stream: String,
    pub group: String,
    pub rule: ChannelRule,
    pub data: String,
    pub start: String,
    pub ordered: bool,
    pub reclaim_idle: Duration,
    pub max_deliveries: u32,
    pub dead_letter: String,
    pub batch: u32,
}

/// Validates every `[[ingest]]` block (CONFIG.md): one of `channel` / `channel_field`,
/// a template in a known namespace, `reclaim_idle` under a third of `idempotency_ttl`.
pub fn validate(config: &Config) -> Result<Vec<SourceSpec>, ConfigError> {
    let mut out = Vec::new();
    for (i, src) in config.ingest.iter().enumerate() {
        let key = |k: &str| format!("ingest[{i}].{k}");
        let err = |k: &str, reason: String| ConfigError {
            source_name: "config".into(),
            key: key(k),
            reason,
        };
        out.push(validate_one(config, src, &err)?);
    }
    Ok(out)
}

fn validate_one(
    config: &Config,
    src: &IngestSource,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<SourceSpec, ConfigError> {
    if src.stream.is_empty() || src.stream.chars().any(char::is_whitespace) {
        return Err(err("stream", "must be a stream key without spaces".into()));
    }
    let rule = channel_rule(config, src, err)?;
    let reclaim_idle = reclaim_idle(config, src, err)?;
    if src.batch == 0 || src.max_deliveries == 0 {
        return Err(err(
            "batch",
            "batch and max_deliveries must be at least 1".into(),
        ));
    }
    if src.start != "$" && src.start != "0" && !src.start.contains('-') {
        return Err(err("start", "must be \"$\", \"0\" or a stream id".into()));
    }
    Ok(SourceSpec {
        stream: src.stream.clone(),
        group: src.group.clone(),
        rule,
        data: src.data.clone(),
        start: src.start.clone(),
        ordered: src.ordered,
        reclaim_idle,
        max_deliveries: src.max_deliveries,
        dead_letter: src
            .dead_letter
            .clone()
            .unwrap_or_else(|| format!("{}:dead", src.stream)),
        batch: src.batch,
    })
}

/// `channel` (a template whose namespace is declared) or `channel_field`, not both.
fn channel_rule(
    config: &Config,
    src: &IngestSource,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<ChannelRule, ConfigError> {
    let rule = match (&src.channel, &src.channel_field) {
        (Some(t), None) => {
            entry::check_template(t).map_err(|m| err("channel", m))?;
            let probe = t.replace(['{', '}'], "");
            if config.namespaces.for_channel(&probe).is_none() {
                return Err(err(
                    "channel",
                    format!(
                        "namespace '{}' is not declared",
                        protocol::namespace_of(&probe)
                    ),
                ));
            }
            ChannelRule::Template(t.clone())
        }
        (None, Some(f)) => ChannelRule::Field(f.clone()),
        _ => {
            return Err(err(
                "channel",
                "give exactly one of 'channel' and 'channel_field'".into(),
            ));
        }
    };
    Ok(rule)
}

/// `reclaim_idle` (30 s by default), under a third of `server.idempotency_ttl`: an
/// entry claimed from a departed node is then still recognised by its idempotency key.
fn reclaim_idle(
    config: &Config,
    src: &IngestSource,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Duration, ConfigError> {
    let reclaim_idle = match &src.reclaim_idle {
        Some(v) => parse_duration(v).map_err(|m| err("reclaim_idle", m))?,
        None => Duration::from_secs(30),
    };
    if reclaim_idle.is_zero() || reclaim_idle * 3 >= config.idempotency_ttl {
        return Err(err(
            "reclaim_idle",
            "must be above zero and shorter than a third of server.idempotency_ttl".into(),
        ));
    }
    Ok(reclaim_idle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_validated() {
        let ok = Config::from_toml(
            "[namespaces.orders]\n[[ingest]]\nstream = \"orders.events\"\nchannel = \"orders:{customer}\"\n",
        )
        .unwrap();
        let specs = validate(&ok).unwrap();
        assert_eq!(specs[0].dead_letter, "orders.events:dead");
        assert!(specs[0].ordered);

        let unknown_ns =
            Config::from_toml("[[ingest]]\nstream = \"s\"\nchannel = \"nope:{x}\"\n").unwrap();
        assert_eq!(validate(&unknown_ns).unwrap_err().key, "ingest[0].channel");
        let both = Config::from_toml(
            "[[ingest]]\nstream = \"s\"\nchannel = \"a\"\nchannel_field = \"c\"\n",
        )
        .unwrap();
        assert!(validate(&both).is_err());
        let slow = Config::from_toml(
            "[[ingest]]\nstream = \"s\"\nchannel = \"a\"\nreclaim_idle = \"2m\"\n",
        )
        .unwrap();
        assert_eq!(validate(&slow).unwrap_err().key, "ingest[0].reclaim_idle");
    }
}
