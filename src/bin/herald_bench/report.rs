//! The JSON report of a run: the scenario, what connecting, publishing and delivering
//! counted, latencies, and the CPU and memory of the nodes, the other processes and
//! the tool itself over the measured window.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::args::Args;
use crate::plan::Plan;
use crate::probes::{ProcSample, cpu_delta, loadavg, metric_deltas};
use crate::procfs;
use crate::publish::PublishTimes;
use crate::resp::cluster::RedisTarget;
use crate::shared::{Hist, Hists, PUB_OK, PUB_SENT, Shared};

/// What was measured up to the end of connecting and settling (before any publish).
pub struct Connected {
    pub loadavg_start: Option<f64>,
    /// The nodes before the first connect.
    pub nodes_before: ProcSample,
    pub tool_cpu_start: Option<f64>,
    pub secs: f64,
    pub subscribed: usize,
    /// The nodes once every client subscribed or gave up.
    pub nodes_connected: ProcSample,
    /// The nodes after the settle (and idle) wait: their RSS with every connection.
    pub nodes_settled: ProcSample,
    pub tool_rss: Option<u64>,
}

/// What was measured over the window of publishing and draining.
pub struct Window {
    /// When it began, ns since the shared origin.
    pub start_ns: u64,
    pub secs: f64,
    pub times: PublishTimes,
    pub metrics_before: Vec<Option<String>>,
    pub metrics_after: Vec<Option<String>>,
    pub nodes_before: ProcSample,
    pub nodes_after: ProcSample,
    pub aux_before: ProcSample,
    pub aux_after: ProcSample,
    pub tool_cpu_before: Option<f64>,
    pub tool_cpu_after: Option<f64>,
}

/// Everything the report is made of.
pub struct Run<'a> {
    pub args: &'a Args,
    pub plan: &'a Plan,
    pub sh: &'a Shared,
    pub total_pubs: u64,
    /// The nodes' PIDs, as given.
    pub pids: &'a [String],
    /// The other processes: (name, PID).
    pub aux: &'a [(String, String)],
    pub connected: &'a Connected,
    pub window: &'a Window,
}

/// The deliveries counted against what was published.
struct Tally {
    received: u64,
    /// Deliveries owed: each acknowledged (or unanswered) publish times the
    /// subscribers of its channel.
    expected: u64,
    /// Deliveries owed that arrived (at most the owed number per publish).
    unique: u64,
    /// Deliveries beyond what a publish was owed: duplicates.
    extra: u64,
    /// Publishes sent and never answered.
    unacked: u64,
    lost: u64,
    /// From the window's start to the last delivery.
    delivery_secs: f64,
}

impl Tally {
    fn of(run: &Run<'_>) -> Tally {
        let (sh, plan) = (run.sh, run.plan);
        let received = sh.received.load(Ordering::Relaxed);
        let (mut expected, mut unique, mut extra, mut unacked) = (0u64, 0u64, 0u64, 0u64);
        for seq in 0..run.total_pubs as usize {
            let state = sh.pub_state[seq].load(Ordering::Relaxed);
            let got = u64::from(sh.per_seq[seq].load(Ordering::Relaxed));
            let want = match state {
                PUB_OK => plan.subscribers_of(seq % plan.channels),
                PUB_SENT => {
                    unacked += 1;
                    plan.subscribers_of(seq % plan.channels)
                }
                _ => 0,
            };
            expected += want;
            unique += got.min(want);
            extra += got.saturating_sub(want);
        }
        let last_delivery = sh.last_delivery_ns.load(Ordering::Relaxed);
        let start_ns = run.window.start_ns;
        let delivery_secs = if last_delivery > start_ns {
            (last_delivery - start_ns) as f64 / 1e9
        } else {
            0.0
        };
        Tally {
            received,
            expected,
            unique,
            extra,
            unacked,
            lost: expected - unique,
            delivery_secs,
        }
    }
}

/// The nodes' CPU over the window and RSS growth from connecting, summed; None
/// where any node's is unknown (or no PIDs were given).
struct NodeTotals {
    cpu_secs: Option<f64>,
    rss_delta_kib: Option<i64>,
}

/// The whole report.
pub fn build(run: &Run<'_>) -> Value {
    let tally = Tally::of(run);
    let hists = run.sh.merged();
    let (nodes, totals) = nodes_json(run);
    let (args, window) = (run.args, run.window);
    let received = tally.received;
    let cpu = totals.cpu_secs;
    let conn_n = args.connections.max(1) as f64;
    json!({
        "label": args.label,
        "scenario": scenario_json(args, run.plan),
        "connect": connect_json(run),
        "publish": publish_json(run, &tally, &hists),
        "deliveries": deliveries_json(run.sh, &tally),
        "latency_us": latency_json(&hists.delivery),
        "window_s": window.secs,
        "loadavg": {"start": run.connected.loadavg_start, "end": loadavg()},
        "drain_s": window.times.drain_secs,
        "node_cpu_s": cpu.map_or(Value::Null, |c| json!(c)),
        "node_cpu_us_per_delivery": cpu.filter(|_| received > 0).map_or(Value::Null, |c| json!(c * 1e6 / received as f64)),
        "node_cores": cpu.filter(|_| window.secs > 0.0).map_or(Value::Null, |c| json!(c / window.secs)),
        "rss_kib_per_connection": totals.rss_delta_kib.map_or(Value::Null, |d| json!(d as f64 / conn_n)),
        "nodes": nodes,
        "aux": aux_json(run, received),
        "tool": tool_json(run),
    })
}

fn scenario_json(args: &Args, plan: &Plan) -> Value {
    json!({
        "nodes": args.nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "connections": args.connections,
        "channels": args.channels,
        "channel_prefix": plan.prefix,
        "durable": args.durable,
        "rate": args.rate,
        "duration_s": args.duration.as_secs_f64(),
        "via": format!("{:?}", args.via).to_lowercase(),
        "publishers_per_node": args.publishers,
        "redis_pipeline": args.redis_pipeline,
        "redis_cluster": matches!(plan.redis, Some(RedisTarget::Cluster(_))),
        "redis_sharded": args.redis_sharded,
        "frame_bytes": args.frame_bytes,
        "idle_s": args.idle.map(|d| d.as_secs_f64()),
        "tool_threads": args.threads,
        "source_ips": args.source_ips.len(),
    })
}

fn connect_json(run: &Run<'_>) -> Value {
    let (sh, c) = (run.sh, run.connected);
    json!({
        "secs": c.secs,
        "subscribed": c.subscribed,
        "failed": sh.connect_failed.load(Ordering::Relaxed),
        "retries": sh.connect_retries.load(Ordering::Relaxed),
        "per_sec": c.subscribed as f64 / c.secs.max(1e-9),
        "errors": *sh.connect_errors.lock().unwrap(),
    })
}

fn publish_json(run: &Run<'_>, tally: &Tally, hists: &Hists) -> Value {
    let sh = run.sh;
    let secs = run.window.times.publish_secs;
    let sent = sh.published.load(Ordering::Relaxed);
    json!({
        "requested": run.total_pubs,
        "sent": sent,
        "ok": sh.pub_ok.load(Ordering::Relaxed),
        "failed": sh.pub_failed.load(Ordering::Relaxed),
        "redis_writes": sh.redis_writes.load(Ordering::Relaxed),
        "unacked": tally.unacked,
        "secs": secs,
        "per_sec": if secs > 0.0 { sent as f64 / secs } else { 0.0 },
        "ack_us": {"p50": q(&hists.ack, 0.5), "p99": q(&hists.ack, 0.99), "max": max(&hists.ack)},
        "send_lag_us": {"p50": q(&hists.send_lag, 0.5), "p99": q(&hists.send_lag, 0.99), "max": max(&hists.send_lag)},
        "errors": *sh.pub_errors.lock().unwrap(),
    })
}

fn deliveries_json(sh: &Shared, t: &Tally) -> Value {
    let closes: BTreeMap<String, u64> = sh
        .closes
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    json!({
        "expected": t.expected,
        "received": t.received,
        "unique": t.unique,
        "lost": t.lost,
        "loss_ratio": if t.expected > 0 { t.lost as f64 / t.expected as f64 } else { 0.0 },
        "duplicates": t.extra,
        "out_of_order": sh.out_of_order.load(Ordering::Relaxed),
        "order_violations": sh.order_violations.load(Ordering::Relaxed),
        "offset_gaps": sh.offset_gaps.load(Ordering::Relaxed),
        "unknown": sh.unknown.load(Ordering::Relaxed),
        "other_frames": sh.other_frames.load(Ordering::Relaxed),
        "read_errors": sh.read_errors.load(Ordering::Relaxed),
        "closes": closes,
        "secs": t.delivery_secs,
        "per_sec": if t.delivery_secs > 0.0 { t.received as f64 / t.delivery_secs } else { 0.0 },
    })
}

fn latency_json(lat: &Hist) -> Value {
    json!({
        "count": lat.len(),
        "p50": q(lat, 0.5),
        "p90": q(lat, 0.9),
        "p99": q(lat, 0.99),
        "p999": q(lat, 0.999),
        "max": max(lat),
        "mean": if lat.is_empty() { Value::Null } else { json!(lat.mean()) },
    })
}

/// One entry per node PID, and the nodes' totals.
fn nodes_json(run: &Run<'_>) -> (Vec<Value>, NodeTotals) {
    let (c, w) = (run.connected, run.window);
    let mut nodes = Vec::new();
    let mut cpu_total = 0.0;
    let mut cpu_known = !run.pids.is_empty();
    let mut rss_delta_total: i64 = 0;
    let mut rss_known = !run.pids.is_empty();
    for (i, pid) in run.pids.iter().enumerate() {
        let cpu = cpu_delta(&w.nodes_before, &w.nodes_after, i);
        let cpu_connect = cpu_delta(&c.nodes_before, &c.nodes_connected, i);
        match cpu {
            Some(c) => cpu_total += c,
            None => cpu_known = false,
        }
        let rss_before = c.nodes_before.rss.get(i).copied().flatten();
        let rss_after = c.nodes_settled.rss.get(i).copied().flatten();
        match (rss_before, rss_after) {
            (Some(b), Some(a)) => rss_delta_total += a as i64 - b as i64,
            _ => rss_known = false,
        }
        nodes.push(json!({
            "pid": pid,
            "addr": run.args.nodes.get(i).map(|a| a.to_string()),
            "cpu_s_publish": cpu,
            "cpu_s_connect": cpu_connect,
            "rss_kib_before": rss_before,
            "rss_kib_connected": rss_after,
            "rss_kib_end": w.nodes_after.rss.get(i).copied().flatten(),
            "metrics_delta": metric_deltas(&w.metrics_before, &w.metrics_after, i),
        }));
    }
    let totals = NodeTotals {
        cpu_secs: cpu_known.then_some(cpu_total),
        rss_delta_kib: rss_known.then_some(rss_delta_total),
    };
    (nodes, totals)
}

fn aux_json(run: &Run<'_>, received: u64) -> Vec<Value> {
    let w = run.window;
    run.aux
        .iter()
        .enumerate()
        .map(|(i, (name, pid))| {
            let cpu = cpu_delta(&w.aux_before, &w.aux_after, i);
            json!({
                "name": name,
                "pid": pid,
                "cpu_s_publish": cpu,
                "cpu_us_per_delivery": cpu.filter(|_| received > 0).map(|c| c * 1e6 / received as f64),
            })
        })
        .collect()
}

fn tool_json(run: &Run<'_>) -> Value {
    let (c, w) = (run.connected, run.window);
    let tool_cpu = match (w.tool_cpu_before, w.tool_cpu_after) {
        (Some(b), Some(a)) => Some(a - b),
        _ => None,
    };
    let tool_total = match (c.tool_cpu_start, w.tool_cpu_after) {
        (Some(b), Some(a)) => Some(a - b),
        _ => None,
    };
    json!({
        "cpu_s_window": tool_cpu,
        "cores_window": tool_cpu.filter(|_| w.secs > 0.0).map(|c| c / w.secs),
        "cpu_s_total": tool_total,
        "rss_kib": c.tool_rss,
        "clk_tck": procfs::clk_tck(),
    })
}

/// A quantile of `h`, null when it is empty.
fn q(h: &Hist, quantile: f64) -> Value {
    if h.is_empty() {
        Value::Null
    } else {
        json!(h.value_at_quantile(quantile))
    }
}

/// The largest value of `h`, null when it is empty.
fn max(h: &Hist) -> Value {
    if h.is_empty() {
        Value::Null
    } else {
        json!(h.max())
    }
}
