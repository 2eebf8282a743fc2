//! Namespaces and their rules (docs/CONFIG.md "Namespaces and rules"): which
//! namespaces exist, who may subscribe, publish and read history or presence in each,
//! and which are durable; resolved from the file's `[default_namespace]` and
//! `[namespaces.*]` sections.
//!
//! Applying a rule to a client is left to `auth`; keeping history and presence to the
//! services that own them. Here a namespace is only its options.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::duration::{parse_duration, positive};
use super::file::NamespaceSection;
use crate::protocol::{self, validate_channel};

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

/// The namespaces of a configuration file: the default one (key "") and every named
/// one, each name checked; `f` names the file for the errors.
pub(super) fn resolve_namespaces(
    default_namespace: &NamespaceSection,
    namespaces: &BTreeMap<String, NamespaceSection>,
    f: &str,
) -> Result<Namespaces, ConfigError> {
    let mut map = BTreeMap::new();
    map.insert(
        String::new(),
        resolve_namespace(default_namespace, f, "default_namespace")?,
    );
    for (name, section) in namespaces {
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
    Ok(Namespaces::Configured(map))
}

/// One namespace's section with its defaults applied: no client publish, history and
/// presence readable by whoever may subscribe.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
}
