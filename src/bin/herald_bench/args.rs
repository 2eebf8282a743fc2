//! The command line of herald-bench: every flag, its default and its help text.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// `POST /api/publish`.
    Http,
    /// The WebSocket `publish` op.
    Ws,
    /// Alternating, publish by publish.
    Both,
    /// Straight into Redis (`--redis`), as a backend may: `PUBLISH` (or `SPUBLISH`)
    /// for plain channels, Herald's publish script for durable ones. The nodes do no
    /// ingress work, only pub/sub receipt and fan-out.
    Redis,
}

/// Load generator and meter for Herald nodes (loopback only).
#[derive(Debug, Parser)]
#[command(name = "herald-bench", version)]
pub struct Args {
    /// Nodes to connect to and publish through, round-robin.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8080")]
    pub nodes: Vec<SocketAddr>,
    /// Local addresses to bind client sockets to, round-robin (more ephemeral ports).
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// Number of subscribing WebSocket connections.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: usize,
    /// Number of channels: client i subscribes to `{prefix}{i % K}`.
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Channel name prefix (its namespace must exist on the nodes).
    #[arg(long)]
    pub channel_prefix: Option<String>,
    /// Durable channels: prefix `dbench:` unless given, and offsets are checked.
    #[arg(long)]
    pub durable: bool,
    /// Publishes per second (0: no publishing).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// How to publish.
    #[arg(long, value_enum, default_value = "http")]
    pub via: Via,
    /// Publisher connections per node (HTTP keep-alive or WebSocket), each with one
    /// request in flight.
    #[arg(long, default_value_t = 8)]
    pub publishers: usize,
    /// Approximate size of each delivered message frame, in bytes (padding in data).
    #[arg(long, default_value_t = 100)]
    pub frame_bytes: usize,
    /// After publishing, wait for outstanding deliveries until none has arrived for
    /// this long (what is missing then counts as lost).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Never wait longer than this after publishing ends.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub drain_max: Duration,
    /// Idle scenario: connect, subscribe, wait this long, measure RSS (with --rate 0).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle: Option<Duration>,
    /// Node PIDs (same order as --nodes, or any order): CPU and RSS from /proc.
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Other processes to report CPU for, as NAME=PID (e.g. redis=1234).
    #[arg(long, value_delimiter = ',')]
    pub aux_pids: Vec<String>,
    /// Write the JSON report to this file (the table then goes to stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A name for this run, copied into the report.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Worker threads of the load tool's runtime.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Give up on connecting after this long.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Wait after connecting before the RSS sample and the publish phase.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Bearer key for /api/publish (where the nodes require one).
    #[arg(long, env = "HERALD_BENCH_API_KEY")]
    pub api_key: Option<String>,
    /// The Redis the nodes use, for `--via redis`: `redis://127.0.0.1:PORT`, or
    /// `redis-cluster://127.0.0.1:PORT?node=127.0.0.1:PORT&…` for Redis Cluster (each
    /// publish goes to the primary owning its channel's slot).
    #[arg(long)]
    pub redis: Option<String>,
    /// `--via redis`: `SPUBLISH` instead of `PUBLISH` (sharded pub/sub, for nodes with
    /// `redis.pubsub` sharded; plain channels only).
    #[arg(long)]
    pub redis_sharded: bool,
    /// The nodes' key prefix, for `--via redis`.
    #[arg(long, default_value = "herald")]
    pub redis_prefix: String,
    /// `--via redis`: publishes a publisher writes at once before reading their replies
    /// (1: one in flight, like the HTTP and WebSocket publishers).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub redis_pipeline: u16,
    /// The durable namespace's `history_size`, for `--via redis --durable` (the script
    /// trims the stream to it; bench/bench.toml's `dbench` has 100).
    #[arg(long, default_value_t = 100)]
    pub history_size: u64,
    /// The durable namespace's `history_ttl`, for `--via redis --durable`.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub history_ttl: Duration,
    /// No table, only JSON.
    #[arg(long)]
    pub quiet: bool,
}
