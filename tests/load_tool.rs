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
        "10",
        "--drain",
        "2s",
        "--settle",
        "200ms",
        "--publishers",
        "1",
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

fn assert_complete(report: &Value, durable: bool, publishes: u64) {
    let d = &report["deliveries"];
    // Each publish reaches the 2 subscribers of its channel. One publisher per node
    // and an even channel count put each channel's publishes on one connection, so
    // they also arrive in order.
    assert_eq!(report["publish"]["ok"], publishes, "{report}");
    assert_eq!(report["publish"]["failed"], 0, "{report}");
    assert_eq!(d["expected"], publishes * 2, "{report}");
    assert_eq!(d["received"], publishes * 2, "{report}");
    assert_eq!(d["lost"], 0, "{report}");
    assert_eq!(d["duplicates"], 0, "{report}");
    assert_eq!(d["out_of_order"], 0, "{report}");
    assert_eq!(d["order_violations"], 0, "{report}");
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
    // (way, durable, commands per pipeline into Redis, publishes/s, for how long).
    // The pipelined run's rate makes several publishes due at each 1 ms pacing tick.
    for (via, durable, pipeline, rate, secs) in [
        ("http", false, "1", 200, "1s"),
        ("ws", true, "1", 200, "1s"),
        ("redis", false, "1", 200, "1s"),
        ("redis", true, "1", 200, "1s"),
        ("redis", true, "16", 10_000, "500ms"),
    ] {
        let rate_arg = rate.to_string();
        let mut extra = vec![
            "--via",
            via,
            "--redis-pipeline",
            pipeline,
            "--rate",
            &rate_arg,
            "--duration",
            secs,
        ];
        if durable {
            extra.push("--durable");
        }
        let report = run_bench(&[&a, &b], &redis, &extra).await;
        assert_eq!(report["scenario"]["via"], via, "{report}");
        assert_eq!(
            report["scenario"]["redis_pipeline"].to_string(),
            pipeline,
            "{report}"
        );
        let publishes = report["publish"]["requested"].as_u64().unwrap_or(0);
        assert_eq!(publishes, if secs == "1s" { rate } else { rate / 2 });
        assert_complete(&report, durable, publishes);
        let writes = report["publish"]["redis_writes"].as_u64().unwrap_or(0);
        match (via, pipeline) {
            ("redis", "1") => assert_eq!(writes, publishes, "{report}"),
            ("redis", _) => assert!(writes < publishes / 2, "not pipelined: {report}"),
            _ => assert_eq!(writes, 0, "{report}"),
        }
    }
    // The durable runs went through Herald's script: each channel's offsets count on
    // over all three (a tenth of the publishes each): 20 + 20 + 500.
    let meta = redis.cli(&["HGET", "herald:{dbench:0}:meta", "offset"]);
    assert_eq!(meta.trim(), "540");
}
