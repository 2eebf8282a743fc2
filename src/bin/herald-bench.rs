//! herald-bench: the load tool of docs/BENCHMARKS.md.
//!
//! Opens N WebSocket connections spread over one or more nodes, subscribes client `i`
//! to channel `{prefix}{i % K}`, publishes at a paced rate through `POST /api/publish`
//! and/or the WebSocket `publish` op (nodes round-robin), and measures what arrives:
//! end-to-end latency (the publisher's timestamp is in the payload; both ends run in
//! this process and share one monotonic clock), loss and duplicates per (channel, seq),
//! and, given the nodes' PIDs, their CPU per delivery and RSS per connection from /proc.
//!
//! It prints progress to stderr every second, stops by itself, and reports one JSON
//! object (stdout, or `--json FILE`) plus a readable table.
//!
//! This file holds the order of the run's phases; their parts are under
//! herald_bench/: the command line (args), the scenario (plan), the counters (shared),
//! the subscribers, the publishers and the paced publish phase, the outside samples
//! (probes, procfs), the progress line, the report and its table.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use clap::Parser;
use serde_json::Value;
use tokio::sync::Semaphore;

#[path = "herald_bench/args.rs"]
mod args;
#[path = "herald_bench/http.rs"]
mod http;
#[path = "herald_bench/plan.rs"]
mod plan;
#[path = "herald_bench/probes.rs"]
mod probes;
#[path = "herald_bench/procfs.rs"]
mod procfs;
#[path = "herald_bench/progress.rs"]
mod progress;
#[path = "herald_bench/publish.rs"]
mod publish;
#[path = "herald_bench/publishers.rs"]
mod publishers;
#[path = "herald_bench/redis_publisher.rs"]
mod redis_publisher;
#[path = "herald_bench/report.rs"]
mod report;
#[path = "herald_bench/resp.rs"]
mod resp;
#[path = "herald_bench/shared.rs"]
mod shared;
#[path = "herald_bench/subscriber.rs"]
mod subscriber;
#[path = "herald_bench/table.rs"]
mod table;

use args::Args;
use plan::Plan;
use probes::{loadavg, sample, scrape_metrics};
use progress::Phase;
use publish::PublishTimes;
use report::{Connected, Window};
use shared::Shared;
use table::table;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.nodes.is_empty() || args.channels == 0 {
        anyhow::bail!("need at least one node and one channel");
    }
    for n in &args.nodes {
        if !n.ip().is_loopback() {
            anyhow::bail!("{n}: herald-bench only sends traffic to loopback addresses");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&args))?;
    let text = serde_json::to_string_pretty(&report)?;
    match &args.json {
        Some(path) => {
            std::fs::write(path, format!("{text}\n"))?;
            if !args.quiet {
                println!("{}", table(&report));
            }
        }
        None => {
            if !args.quiet {
                eprintln!("{}", table(&report));
            }
            println!("{text}");
        }
    }
    // Exiting closes every socket at once; no need to wait for 10k graceful closes.
    std::process::exit(0);
}

/// The whole run: connect and subscribe every client, settle, publish and drain
/// while measuring, then the report.
async fn run(args: &Args) -> anyhow::Result<Value> {
    let plan = Arc::new(Plan::from_args(args)?);
    let total_pubs = plan::total_publishes(args);
    let sh = Arc::new(Shared::new(total_pubs, args.rate));
    let pids: Vec<String> = args.pids.iter().map(|p| p.to_string()).collect();
    let aux = aux_processes(&args.aux_pids);
    let aux_pids: Vec<String> = aux.iter().map(|(_, p)| p.clone()).collect();

    let phase = Phase::new("connect");
    let progress = progress::spawn(sh.clone(), phase.clone(), args.connections);
    let connected = connect_and_settle(args, &plan, &sh, &phase, &pids).await?;
    let window = measure_window(args, &plan, &sh, &phase, &pids, &aux_pids, total_pubs).await;
    sh.stop_clients.store(true, Ordering::Relaxed);
    progress.abort();

    Ok(report::build(&report::Run {
        args,
        plan: &plan,
        sh: &sh,
        total_pubs,
        pids: &pids,
        aux: &aux,
        connected: &connected,
        window: &window,
    }))
}

/// `--aux-pids` as (name, PID); a bare PID is named `pid{PID}`.
fn aux_processes(aux_pids: &[String]) -> Vec<(String, String)> {
    aux_pids
        .iter()
        .map(|s| match s.split_once('=') {
            Some((name, pid)) => (name.to_string(), pid.to_string()),
            None => (format!("pid{s}"), s.clone()),
        })
        .collect()
}

/// Connects and subscribes every client, `--connect-concurrency` at a time, then waits
/// `--settle` (and `--idle`); samples the nodes before, after connecting and after the
/// wait.
async fn connect_and_settle(
    args: &Args,
    plan: &Arc<Plan>,
    sh: &Arc<Shared>,
    phase: &Phase,
    pids: &[String],
) -> anyhow::Result<Connected> {
    let loadavg_start = loadavg();
    let nodes_before = sample(pids);
    let tool_cpu_start = procfs::cpu_secs("self");
    let connect_start = Instant::now();
    connect_all(args, plan, sh, connect_start + args.connect_timeout).await?;
    let secs = connect_start.elapsed().as_secs_f64();
    let nodes_connected = sample(pids);
    let subscribed = sh.subscribed.load(Ordering::Relaxed);
    eprintln!(
        "[herald-bench] {subscribed}/{} subscribed in {secs:.2}s ({:.0}/s), {} failed",
        args.connections,
        subscribed as f64 / secs,
        sh.connect_failed.load(Ordering::Relaxed)
    );
    phase.set("settle");
    tokio::time::sleep(args.settle).await;
    if let Some(idle) = args.idle {
        phase.set("idle");
        tokio::time::sleep(idle).await;
    }
    let nodes_settled = sample(pids);
    let tool_rss = procfs::rss_kib("self");
    Ok(Connected {
        loadavg_start,
        nodes_before,
        tool_cpu_start,
        secs,
        subscribed,
        nodes_connected,
        nodes_settled,
        tool_rss,
    })
}

/// Starts every subscriber and returns once each has subscribed or given up (giving
/// up at `deadline` at the latest).
async fn connect_all(
    args: &Args,
    plan: &Arc<Plan>,
    sh: &Arc<Shared>,
    deadline: Instant,
) -> anyhow::Result<()> {
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    for i in 0..args.connections {
        let permit = gate.clone().acquire_owned().await?;
        tokio::spawn(subscriber::subscriber(
            i,
            plan.clone(),
            sh.clone(),
            permit,
            deadline,
        ));
    }
    // Every permit back: every client subscribed or gave up.
    let _all = gate
        .acquire_many(args.connect_concurrency.max(1) as u32)
        .await?;
    Ok(())
}

/// Publishes and drains (when there is anything to publish), sampling the nodes, the
/// other processes, the tool and the nodes' /metrics before and after.
async fn measure_window(
    args: &Args,
    plan: &Arc<Plan>,
    sh: &Arc<Shared>,
    phase: &Phase,
    pids: &[String],
    aux_pids: &[String],
    total_pubs: u64,
) -> Window {
    let metrics_before = scrape_metrics(&args.nodes).await;
    let nodes_before = sample(pids);
    let aux_before = sample(aux_pids);
    let tool_cpu_before = procfs::cpu_secs("self");
    let start = Instant::now();
    let start_ns = sh.now_ns();
    let times = if total_pubs > 0 {
        publish::publish_and_drain(args, plan, sh, phase, total_pubs).await
    } else {
        PublishTimes {
            publish_secs: 0.0,
            drain_secs: 0.0,
        }
    };
    let secs = start.elapsed().as_secs_f64();
    let nodes_after = sample(pids);
    let aux_after = sample(aux_pids);
    let tool_cpu_after = procfs::cpu_secs("self");
    let metrics_after = scrape_metrics(&args.nodes).await;
    Window {
        start_ns,
        secs,
        times,
        metrics_before,
        metrics_after,
        nodes_before,
        nodes_after,
        aux_before,
        aux_after,
        tool_cpu_before,
        tool_cpu_after,
    }
}
