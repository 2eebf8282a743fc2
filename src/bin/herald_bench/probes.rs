//! What the load tool reads from outside itself around each phase: CPU and RSS samples
//! of the nodes and other processes (/proc), the nodes' counters (`GET /metrics`), and
//! the machine's load average.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::http::{self, HttpConn};
use crate::procfs;

/// CPU seconds and RSS of a list of processes at one moment (None where unreadable).
#[derive(Default, Clone)]
pub struct ProcSample {
    pub cpu: Vec<Option<f64>>,
    pub rss: Vec<Option<u64>>,
}

pub fn sample(pids: &[String]) -> ProcSample {
    ProcSample {
        cpu: pids.iter().map(|p| procfs::cpu_secs(p)).collect(),
        rss: pids.iter().map(|p| procfs::rss_kib(p)).collect(),
    }
}

/// CPU seconds process `i` spent from sample `a` to sample `b`.
pub fn cpu_delta(a: &ProcSample, b: &ProcSample, i: usize) -> Option<f64> {
    Some(b.cpu.get(i).copied()?? - a.cpu.get(i).copied()??)
}

/// Each node's /metrics text (None where it did not answer 200).
pub async fn scrape_metrics(nodes: &[SocketAddr]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for node in nodes {
        let text = async {
            let mut c = HttpConn::connect(*node).await.ok()?;
            let (status, body) = c.request("GET", "/metrics", b"", None).await.ok()?;
            (status == 200).then(|| String::from_utf8_lossy(&body).into_owned())
        }
        .await;
        out.push(text);
    }
    out
}

/// The node counters the report shows the change of: (report key, metric name).
const NODE_METRICS: [(&str, &str); 5] = [
    ("delivered", "herald_messages_delivered_total"),
    ("backplane_lagged", "herald_backplane_lagged_total"),
    ("dropped", "herald_messages_dropped_total"),
    ("slow_consumer_closes", "herald_slow_consumer_closes_total"),
    ("published", "herald_messages_published_total"),
];

/// How node `i`'s counters changed between two scrapes (null without both).
pub fn metric_deltas(before: &[Option<String>], after: &[Option<String>], i: usize) -> Value {
    let (Some(Some(b)), Some(Some(a))) = (before.get(i), after.get(i)) else {
        return Value::Null;
    };
    let mut m = serde_json::Map::new();
    for (key, name) in NODE_METRICS {
        m.insert(
            key.into(),
            json!(http::metric_sum(a, name) - http::metric_sum(b, name)),
        );
    }
    Value::Object(m)
}

/// The 1-minute load average (how busy the shared machine was).
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
