//! Consumer hygiene of one source, run every few seconds by the reader: consumers of
//! departed nodes that have nothing pending are removed from the group, and the lag
//! gauge is set (the group's lag plus its pending entries). What departed nodes left
//! pending is claimed by the reader (`XAUTOCLAIM`), not here.

use std::time::Duration;

use fred::clients::Client;
use fred::prelude::*;
use metrics::Gauge;

use super::commands::{self, Consumers, DeleteConsumer, Groups};
use super::spec::SourceSpec;

/// Removes departed consumers, then updates `lag`. `me` is this node's consumer.
pub(super) async fn run(
    client: &Client,
    spec: &SourceSpec,
    me: &str,
    lag: &Gauge,
) -> Result<(), Error> {
    remove_departed(client, spec, me).await?;
    update_lag(client, spec, lag).await
}

/// A consumer is departed when it has nothing pending and has been idle for ten lease
/// times (at least a minute): a live node reads far more often than that.
async fn remove_departed(client: &Client, spec: &SourceSpec, me: &str) -> Result<(), Error> {
    let consumers: Value = commands::send(
        client,
        Consumers {
            stream: &spec.stream,
            group: &spec.group,
        },
    )
    .await?;
    let stale_after = (spec.reclaim_idle * 10).max(Duration::from_secs(60));
    let Value::Array(list) = consumers else {
        return Ok(());
    };
    for c in list {
        let info = flat_map(&c);
        let field = |k: &str| info.iter().find(|(n, _)| n == k).map(|(_, v)| v);
        let name = field("name").and_then(|v| v.as_string());
        let pending = field("pending").and_then(|v| v.as_u64());
        let idle = field("idle").and_then(|v| v.as_u64());
        if let (Some(name), Some(0), Some(idle)) = (name, pending, idle)
            && name != me
            && Duration::from_millis(idle) > stale_after
        {
            let delete = DeleteConsumer {
                stream: &spec.stream,
                group: &spec.group,
                consumer: &name,
            };
            let _: Value = commands::send(client, delete).await?;
            tracing::info!(stream = %spec.stream, consumer = %name, "removed a departed consumer");
        }
    }
    Ok(())
}

async fn update_lag(client: &Client, spec: &SourceSpec, lag: &Gauge) -> Result<(), Error> {
    let groups: Value = commands::send(
        client,
        Groups {
            stream: &spec.stream,
        },
    )
    .await?;
    let Value::Array(list) = groups else {
        return Ok(());
    };
    for g in list {
        let info = flat_map(&g);
        let get = |k: &str| info.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if get("name").and_then(|v| v.as_string()).as_deref() == Some(spec.group.as_str()) {
            let behind = get("lag").and_then(|v| v.as_u64()).unwrap_or(0);
            let pending = get("pending").and_then(|v| v.as_u64()).unwrap_or(0);
            lag.set((behind + pending) as f64);
        }
    }
    Ok(())
}

/// A RESP2 flat `[k1, v1, k2, v2, …]` (or a RESP3 map) as pairs.
fn flat_map(v: &Value) -> Vec<(String, Value)> {
    match v {
        Value::Array(items) => items
            .chunks_exact(2)
            .filter_map(|c| Some((c[0].as_string()?, c[1].clone())))
            .collect(),
        Value::Map(m) => m
            .clone()
            .inner()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.clone())))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_replies_read_as_pairs() {
        let reply = Value::Array(vec![
            Value::from("name"),
            Value::from("n1"),
            Value::from("pending"),
            Value::Integer(0),
            Value::from("dangling"),
        ]);
        let pairs = flat_map(&reply);
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].0, "name");
        assert_eq!(pairs[1].1.as_u64(), Some(0));
        assert!(flat_map(&Value::Integer(1)).is_empty());
    }
}
