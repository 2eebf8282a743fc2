//! The load tool (`herald-bench`) against two nodes on Redis: each way of publishing it
//! offers, durable or not, delivers everything it sends, and its report says so. The
//! benchmark numbers of docs/BENCHMARKS.md rest on this tool counting right.

mod support;

use std::process::Command;

use herald::server::Node;
use serde_json::Value;
use support::*;

const BENCH: &str = "[limits]\nmessages_per_sec = 100000\n\n[namespaces.bench]\npublish = \"anyone\"\n\n[namespaces.dbench]\npublish = \"anyone\"\nhistory_size = 100\nhistory_ttl = \"10m\"\n";

/// Runs the tool to completion and returns its JSON report.
async fn run_bench(nodes: &[&Node], redis: &Redis, extra: &[&str]) -> Value {
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let mut args: Vec<String> = [
        "--nodes",
        &addrs.join(","),
        "-n",
        "20",
        "--channels",
        "5",
        "--rate",
        "200",
        "--duration",
        "1s",
        "--drain",
        "2s",
        "--settle",
        "200ms",
        "--publishers",
        "2",
        "--threads",
        "1",
        "--redis",
        &redis.url(),
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_herald-bench"))
            .args(&args)
            .output()
            .expect("herald-bench runs")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "herald-bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "report is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn assert_complete(report: &Value, durable: bool) {
    let d = &report["deliveries"];
    // 200/s for 1 s, each to the 4 subscribers of its channel.
    assert_eq!(report["publish"]["ok"], 200, "{report}");
    assert_eq!(report["publish"]["failed"], 0, "{report}");
    assert_eq!(d["expected"], 800, "{report}");
    assert_eq!(d["received"], 800, "{report}");
    assert_eq!(d["lost"], 0, "{report}");
    assert_eq!(d["duplicates"], 0, "{report}");
    assert_eq!(d["out_of_order"], 0, "{report}");
    assert_eq!(d["offset_gaps"], 0, "{report}");
    assert_eq!(report["scenario"]["durable"], durable, "{report}");
    assert!(report["latency_us"]["p99"].as_u64().is_some(), "{report}");
    assert!(
        report["publish"]["send_lag_us"]["p99"].as_u64().is_some(),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_of_publishing_is_counted_complete() {
    let redis = Redis::start();
    let a = start(config_from_toml(Some(&redis), "a", BENCH)).await;
    let b = start(config_from_toml(Some(&redis), "b", BENCH)).await;
    for (via, durable) in [
        ("http", false),
        ("ws", true),
        ("redis", false),
        ("redis", true),
    ] {
        let mut extra = vec!["--via", via];
        if durable {
            extra.push("--durable");
        }
        let report = run_bench(&[&a, &b], &redis, &extra).await;
        assert_eq!(report["scenario"]["via"], via, "{report}");
        assert_complete(&report, durable);
    }
    // The durable runs went through Herald's script: each channel's offsets count on
    // from the ws run's 40 per channel (200 publishes over 5 channels) to 80.
    let meta = redis.cli(&["HGET", "herald:{dbench:0}:meta", "offset"]);
    assert_eq!(meta.trim(), "80");
}
