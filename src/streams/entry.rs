//! One stream entry: reading it out of a Redis reply, and mapping its fields to a
//! Herald channel and `data` (CONFIG.md `[[ingest]]`: `channel` template or
//! `channel_field`; `data` field or `"*"`).
//!
//! Everything here is total: whatever an entry contains, the answer is a mapping or a
//! reason for the dead-letter stream, never a panic.

use fred::prelude::Value;
use serde_json::value::RawValue;

use crate::protocol::validate_channel;

/// An entry as read: its id and its fields (None: the entry was deleted while pending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub fields: Option<Vec<(String, String)>>,
}

/// How a source turns fields into a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelRule {
    /// `"orders:{customer}"`: `{name}` is replaced by the field `name`.
    Template(String),
    /// The field that names the channel.
    Field(String),
}

/// The publication an entry maps to.
#[derive(Debug)]
pub struct Mapped {
    pub channel: String,
    pub data: Box<RawValue>,
}

pub fn map_entry(
    fields: &[(String, String)],
    channel: &ChannelRule,
    data: &str,
) -> Result<Mapped, String> {
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let channel = match channel {
        ChannelRule::Field(f) => get(f)
            .ok_or_else(|| format!("missing field '{f}'"))?
            .to_string(),
        ChannelRule::Template(t) => expand(t, &get)?,
    };
    validate_channel(&channel)
        .map_err(|m| format!("invalid channel '{}': {m}", truncate(&channel)))?;
    let data = if data == "*" {
        let object: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        RawValue::from_string(serde_json::Value::Object(object).to_string())
            .map_err(|e| e.to_string())?
    } else {
        let text = get(data).ok_or_else(|| format!("missing field '{data}'"))?;
        RawValue::from_string(text.to_string())
            .map_err(|e| format!("field '{data}' is not JSON: {e}"))?
    };
    Ok(Mapped { channel, data })
}

fn expand<'a>(template: &str, get: &impl Fn(&str) -> Option<&'a str>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in template '{template}'"))?;
        let name = &after[..close];
        out.push_str(get(name).ok_or_else(|| format!("missing field '{name}'"))?);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Checks a template at start-up: balanced braces, and the text outside them valid in
/// a channel name.
pub fn check_template(template: &str) -> Result<(), String> {
    let probe = expand(template, &|_| Some("x"))?;
    validate_channel(&probe)
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string()),
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Double(d) => Some(d.to_string()),
        _ => None,
    }
}

/// Parses `[[id, [f, v, …] | nil], …]`.
pub fn parse_entries(v: &Value) -> Vec<Entry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let id = text(pair.first()?)?;
            let fields = match pair.get(1) {
                Some(Value::Array(kv)) => Some(
                    kv.chunks_exact(2)
                        .filter_map(|c| Some((text(&c[0])?, text(&c[1]).unwrap_or_default())))
                        .collect(),
                ),
                _ => None,
            };
            Some(Entry { id, fields })
        })
        .collect()
}

/// Parses an XREADGROUP reply for one stream: `[[stream, entries]]` or nil.
pub fn parse_read(v: &Value) -> Vec<Entry> {
    match v {
        Value::Array(streams) => streams
            .iter()
            .flat_map(|s| match s {
                Value::Array(pair) if pair.len() == 2 => parse_entries(&pair[1]),
                _ => Vec::new(),
            })
            .collect(),
        Value::Map(_) => Vec::new(),
        _ => Vec::new(),
    }
}

/// Parses an XAUTOCLAIM reply: `[cursor, entries, deleted ids]`.
pub fn parse_autoclaim(v: &Value) -> (String, Vec<Entry>, Vec<String>) {
    let Value::Array(parts) = v else {
        return ("0-0".into(), Vec::new(), Vec::new());
    };
    let cursor = parts.first().and_then(text).unwrap_or_else(|| "0-0".into());
    let entries = parts.get(1).map(parse_entries).unwrap_or_default();
    let deleted = match parts.get(2) {
        Some(Value::Array(ids)) => ids.iter().filter_map(text).collect(),
        _ => Vec::new(),
    };
    (cursor, entries, deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn templates_and_fields() {
        let rule = ChannelRule::Template("orders:{customer}".into());
        let m = map_entry(
            &f(&[("customer", "42"), ("data", r#"{"s":1}"#)]),
            &rule,
            "data",
        )
        .unwrap();
        assert_eq!(m.channel, "orders:42");
        assert_eq!(m.data.get(), r#"{"s":1}"#);
        let m = map_entry(
            &f(&[("ch", "a:b"), ("x", "1")]),
            &ChannelRule::Field("ch".into()),
            "*",
        )
        .unwrap();
        assert_eq!(m.channel, "a:b");
        let v: serde_json::Value = serde_json::from_str(m.data.get()).unwrap();
        assert_eq!(v, serde_json::json!({"ch": "a:b", "x": "1"}));
    }

    #[test]
    fn poison_entries_give_reasons() {
        let rule = ChannelRule::Template("orders:{customer}".into());
        assert!(
            map_entry(&f(&[("data", "1")]), &rule, "data")
                .unwrap_err()
                .contains("customer")
        );
        assert!(
            map_entry(&f(&[("customer", "1")]), &rule, "data")
                .unwrap_err()
                .contains("data")
        );
        assert!(
            map_entry(
                &f(&[("customer", "1"), ("data", "{not json")]),
                &rule,
                "data"
            )
            .unwrap_err()
            .contains("JSON")
        );
        assert!(
            map_entry(&f(&[("customer", "a b"), ("data", "1")]), &rule, "data")
                .unwrap_err()
                .contains("invalid channel")
        );
        assert!(check_template("orders:{customer").is_err());
        assert!(check_template("bad name:{x}").is_err());
        assert!(check_template("orders:{customer}").is_ok());
    }

    #[test]
    fn replies_parse_including_deleted_entries() {
        let reply = Value::Array(vec![Value::Array(vec![
            Value::from("s"),
            Value::Array(vec![
                Value::Array(vec![
                    Value::from("1-0"),
                    Value::Array(vec![Value::from("k"), Value::from("v")]),
                ]),
                Value::Array(vec![Value::from("2-0"), Value::Null]),
            ]),
        ])]);
        let e = parse_read(&reply);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].fields, Some(vec![("k".into(), "v".into())]));
        assert_eq!(e[1].fields, None);
        assert!(parse_read(&Value::Null).is_empty());
        let claim = Value::Array(vec![
            Value::from("0-0"),
            Value::Array(vec![]),
            Value::Array(vec![Value::from("3-0")]),
        ]);
        assert_eq!(
            parse_autoclaim(&claim),
            ("0-0".into(), vec![], vec!["3-0".into()])
        );
    }
}
