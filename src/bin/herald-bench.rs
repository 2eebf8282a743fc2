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

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[path = "herald_bench/http.rs"]
mod http;
#[path = "herald_bench/procfs.rs"]
mod procfs;
#[path = "herald_bench/resp.rs"]
mod resp;

use http::HttpConn;
use resp::{DurableArgs, RespConn};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Via {
    /// `POST /api/publish`.
    Http,
    /// The WebSocket `publish` op.
    Ws,
    /// Alternating, publish by publish.
    Both,
    /// Straight into Redis (`--redis`), as a backend may: `PUBLISH` for plain
    /// channels, Herald's publish script for durable ones. The nodes do no ingress
    /// work, only pub/sub receipt and fan-out.
    Redis,
}

/// Load generator and meter for Herald nodes (loopback only).
#[derive(Debug, Parser)]
#[command(name = "herald-bench", version)]
struct Args {
    /// Nodes to connect to and publish through, round-robin.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8080")]
    nodes: Vec<SocketAddr>,
    /// Local addresses to bind client sockets to, round-robin (more ephemeral ports).
    #[arg(long, value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    /// Number of subscribing WebSocket connections.
    #[arg(short = 'n', long, default_value_t = 1000)]
    connections: usize,
    /// Number of channels: client i subscribes to `{prefix}{i % K}`.
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Channel name prefix (its namespace must exist on the nodes).
    #[arg(long)]
    channel_prefix: Option<String>,
    /// Durable channels: prefix `dbench:` unless given, and offsets are checked.
    #[arg(long)]
    durable: bool,
    /// Publishes per second (0: no publishing).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How to publish.
    #[arg(long, value_enum, default_value = "http")]
    via: Via,
    /// Publisher connections per node (HTTP keep-alive or WebSocket), each with one
    /// request in flight.
    #[arg(long, default_value_t = 8)]
    publishers: usize,
    /// Approximate size of each delivered message frame, in bytes (padding in data).
    #[arg(long, default_value_t = 100)]
    frame_bytes: usize,
    /// After publishing, wait for outstanding deliveries until none has arrived for
    /// this long (what is missing then counts as lost).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Never wait longer than this after publishing ends.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    drain_max: Duration,
    /// Idle scenario: connect, subscribe, wait this long, measure RSS (with --rate 0).
    #[arg(long, value_parser = humantime::parse_duration)]
    idle: Option<Duration>,
    /// Node PIDs (same order as --nodes, or any order): CPU and RSS from /proc.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Other processes to report CPU for, as NAME=PID (e.g. redis=1234).
    #[arg(long, value_delimiter = ',')]
    aux_pids: Vec<String>,
    /// Write the JSON report to this file (the table then goes to stdout).
    #[arg(long)]
    json: Option<PathBuf>,
    /// A name for this run, copied into the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Worker threads of the load tool's runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Give up on connecting after this long.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// Wait after connecting before the RSS sample and the publish phase.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Bearer key for /api/publish (where the nodes require one).
    #[arg(long, env = "HERALD_BENCH_API_KEY")]
    api_key: Option<String>,
    /// The Redis the nodes use, for `--via redis` (redis://127.0.0.1:PORT).
    #[arg(long)]
    redis: Option<String>,
    /// The nodes' key prefix, for `--via redis`.
    #[arg(long, default_value = "herald")]
    redis_prefix: String,
    /// `--via redis`: publishes a publisher writes at once before reading their replies
    /// (1: one in flight, like the HTTP and WebSocket publishers).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    redis_pipeline: u16,
    /// The durable namespace's `history_size`, for `--via redis --durable` (the script
    /// trims the stream to it; bench/bench.toml's `dbench` has 100).
    #[arg(long, default_value_t = 100)]
    history_size: u64,
    /// The durable namespace's `history_ttl`, for `--via redis --durable`.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    history_ttl: Duration,
    /// No table, only JSON.
    #[arg(long)]
    quiet: bool,
}

// ---- shared counters --------------------------------------------------------------

/// Publish state of one sequence number.
const PUB_NONE: u8 = 0;
const PUB_SENT: u8 = 1;
const PUB_OK: u8 = 2;
const PUB_FAILED: u8 = 3;

type Hist = Histogram<u64>;

fn new_hist() -> Hist {
    // Microseconds, 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

struct Shared {
    /// The process-wide clock origin: timestamps in payloads are ns since this.
    origin: Instant,
    subscribed: AtomicUsize,
    connect_failed: AtomicUsize,
    connect_retries: AtomicU64,
    connect_errors: Mutex<BTreeMap<String, u64>>,
    received: AtomicU64,
    /// Message frames whose payload could not be read, or with a seq never published.
    unknown: AtomicU64,
    /// A client saw a seq not above the previous one on its channel (duplicate or
    /// reordering). Publishes in flight at the same time on different connections
    /// have no order between them, so this counts those too.
    out_of_order: AtomicU64,
    /// A client saw a seq after a later one although the earlier publish was
    /// acknowledged before the later one was sent: a break of the channel's order.
    order_violations: AtomicU64,
    /// A durable client saw offsets that do not follow each other.
    offset_gaps: AtomicU64,
    /// Error replies and other frames that are neither messages nor replies.
    other_frames: AtomicU64,
    read_errors: AtomicU64,
    closes: Mutex<BTreeMap<u16, u64>>,
    /// Deliveries per seq.
    per_seq: Vec<AtomicU32>,
    /// PUB_* per seq.
    pub_state: Vec<AtomicU8>,
    /// When each seq was sent, ns since `origin` (for the publish acknowledgement time).
    sent_at: Vec<AtomicU64>,
    /// When each seq's publish was acknowledged, ns since `origin` (0: not yet).
    acked_at: Vec<AtomicU64>,
    published: AtomicU64,
    pub_ok: AtomicU64,
    pub_failed: AtomicU64,
    /// Pipelines (writes) the `--via redis` publishers sent.
    redis_writes: AtomicU64,
    pub_errors: Mutex<BTreeMap<String, u64>>,
    last_delivery_ns: AtomicU64,
    /// Per-thread histograms.
    hists: Mutex<Vec<SharedHists>>,
    stop_clients: AtomicBool,
    /// When the paced publishing began, ns since `origin` (u64::MAX before), and its
    /// rate: publish `seq` is due at `start + seq / rate`.
    pace_start_ns: AtomicU64,
    rate: f64,
}

/// What the load tool measures in µs, one set per thread.
struct Hists {
    /// Publish (send) to delivery.
    delivery: Hist,
    /// Publish (send) to the publisher's acknowledgement.
    ack: Hist,
    /// Due time to send: how long a publish waited in the load tool for a free
    /// publisher (the delivery latency does not include it).
    send_lag: Hist,
}

impl Hists {
    fn new() -> Self {
        Self {
            delivery: new_hist(),
            ack: new_hist(),
            send_lag: new_hist(),
        }
    }
}

type SharedHists = Arc<Mutex<Hists>>;

thread_local! {
    static LOCAL_HIST: RefCell<Option<SharedHists>> = const { RefCell::new(None) };
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn with_hist(&self, f: impl FnOnce(&mut Hists)) {
        LOCAL_HIST.with(|l| {
            let mut l = l.borrow_mut();
            let h = l.get_or_insert_with(|| {
                let h = Arc::new(Mutex::new(Hists::new()));
                self.hists.lock().unwrap().push(h.clone());
                h
            });
            f(&mut h.lock().unwrap());
        });
    }

    fn merged(&self) -> Hists {
        let mut all = Hists::new();
        for h in self.hists.lock().unwrap().iter() {
            let h = h.lock().unwrap();
            let _ = all.delivery.add(&h.delivery);
            let _ = all.ack.add(&h.ack);
            let _ = all.send_lag.add(&h.send_lag);
        }
        all
    }

    fn count_error(map: &Mutex<BTreeMap<String, u64>>, e: impl ToString) {
        let mut text = e.to_string();
        text.truncate(120);
        *map.lock().unwrap().entry(text).or_default() += 1;
    }
}

/// Everything a task needs to know about the scenario.
struct Plan {
    nodes: Vec<SocketAddr>,
    source_ips: Vec<IpAddr>,
    prefix: String,
    channels: usize,
    connections: usize,
    durable: bool,
    via: Via,
    frame_bytes: usize,
    api_key: Option<String>,
    ws_config: WebSocketConfig,
    /// Where `--via redis` publishes.
    redis: Option<SocketAddr>,
    redis_prefix: String,
    /// The durable namespace's `history_size`, for the durable script.
    history_size: u64,
    /// The durable namespace's `history_ttl` in seconds, for the durable script.
    history_ttl_secs: u64,
    /// Publishes per pipeline of a `--via redis` publisher.
    redis_pipeline: usize,
}

impl Plan {
    fn channel(&self, i: u64) -> String {
        format!("{}{}", self.prefix, i % self.channels as u64)
    }

    /// Subscribers of channel index `c`.
    fn subscribers_of(&self, c: usize) -> u64 {
        let (n, k) = (self.connections, self.channels);
        (n / k + usize::from(c < n % k)) as u64
    }

    /// The publish body's `data`, padded so that the delivered frame is about
    /// `frame_bytes` long.
    fn data(&self, channel: &str, seq: u64, t: u64) -> String {
        let mut data = format!("{{\"s\":{seq},\"t\":{t},\"p\":\"");
        // {"type":"message","channel":"…","data":…}  is 32 bytes + channel + data.
        let base = 32 + channel.len() + data.len() + 2;
        let pad = self.frame_bytes.saturating_sub(base);
        data.extend(std::iter::repeat_n('x', pad));
        data.push_str("\"}");
        data
    }
}

// ---- subscribers ------------------------------------------------------------------

type Ws = WebSocketStream<TcpStream>;

async fn open_ws(plan: &Plan, i: usize, node: SocketAddr) -> anyhow::Result<Ws> {
    let socket = match node {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if !plan.source_ips.is_empty() {
        let ip = plan.source_ips[i % plan.source_ips.len()];
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(node).await?;
    stream.set_nodelay(true)?;
    let url = format!("ws://{node}/ws");
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(plan.ws_config)).await?;
    Ok(ws)
}

/// One subscribing client: connect (with retries), subscribe, then count what arrives.
async fn subscriber(
    i: usize,
    plan: Arc<Plan>,
    sh: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
    deadline: Instant,
) {
    let node = plan.nodes[i % plan.nodes.len()];
    let channel = plan.channel(i as u64);
    let mut attempt = 0u32;
    let mut ws = loop {
        let result = tokio::time::timeout(Duration::from_secs(10), open_ws(&plan, i, node)).await;
        let err = match result {
            Ok(Ok(ws)) => break ws,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out".to_string(),
        };
        attempt += 1;
        if Instant::now() >= deadline || attempt >= 50 {
            Shared::count_error(&sh.connect_errors, err);
            sh.connect_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        sh.connect_retries.fetch_add(1, Ordering::Relaxed);
        let backoff = Duration::from_millis(50 * u64::from(attempt.min(20)));
        tokio::time::sleep(backoff + Duration::from_millis(i as u64 % 50)).await;
    };
    let subscribe = format!("{{\"op\":\"subscribe\",\"id\":1,\"channel\":\"{channel}\"}}");
    if let Err(e) = ws.send(Message::text(subscribe)).await {
        Shared::count_error(&sh.connect_errors, e);
        sh.connect_failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // The welcome frame comes first; wait for the reply to id 1.
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let t = t.as_str();
                if t.starts_with("{\"type\":\"reply\"") && t.contains("\"id\":1") {
                    if t.contains("\"error\"") {
                        Shared::count_error(&sh.connect_errors, t);
                        sh.connect_failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    break;
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                Shared::count_error(&sh.connect_errors, e);
                sh.connect_failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(None) | Err(_) => {
                Shared::count_error(&sh.connect_errors, "no subscribe reply");
                sh.connect_failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    sh.subscribed.fetch_add(1, Ordering::Relaxed);
    drop(permit);

    let mut last_seq: Option<u64> = None;
    let mut last_offset: Option<u64> = None;
    while let Some(frame) = ws.next().await {
        match frame {
            Ok(Message::Text(t)) => {
                let t = t.as_str();
                if !t.starts_with("{\"type\":\"message\"") {
                    sh.other_frames.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let now = sh.now_ns();
                sh.received.fetch_add(1, Ordering::Relaxed);
                sh.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
                let (Some(seq), Some(ts)) = (number_after(t, "\"s\":"), number_after(t, "\"t\":"))
                else {
                    sh.unknown.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                match sh.per_seq.get(seq as usize) {
                    Some(c) => {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        sh.unknown.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let Some(l) = last_seq
                    && seq <= l
                {
                    sh.out_of_order.fetch_add(1, Ordering::Relaxed);
                    if acked_before_sent(&sh.acked_at, &sh.sent_at, seq, l) {
                        sh.order_violations.fetch_add(1, Ordering::Relaxed);
                    }
                }
                last_seq = Some(seq);
                if plan.durable
                    && let Some(off) = number_after(t, "\"offset\":")
                {
                    if last_offset.is_some_and(|l| off != l + 1) {
                        sh.offset_gaps.fetch_add(1, Ordering::Relaxed);
                    }
                    last_offset = Some(off);
                }
                let latency_us = now.saturating_sub(ts) / 1000;
                sh.with_hist(|h| h.delivery.saturating_record(latency_us.max(1)));
            }
            Ok(Message::Close(frame)) => {
                let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                *sh.closes.lock().unwrap().entry(code).or_default() += 1;
                break;
            }
            Ok(_) => {}
            Err(_) => {
                if !sh.stop_clients.load(Ordering::Relaxed) {
                    sh.read_errors.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
        }
    }
}

/// The unsigned integer right after `key` in `text`.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits = text[at..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .fold((0u64, 0usize), |(v, n), b| {
            (v.wrapping_mul(10).wrapping_add(u64::from(b - b'0')), n + 1)
        });
    (digits.1 > 0).then_some(digits.0)
}

// ---- publishers -------------------------------------------------------------------

type JobQueue = Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<u64>>>;

/// Whether publish `first` was acknowledged before publish `then` was sent: then every
/// subscriber must see `first` before `then`.
/// (`acked_at` and `sent_at` as in `Shared`, ns, 0 for not yet.)
fn acked_before_sent(acked_at: &[AtomicU64], sent_at: &[AtomicU64], first: u64, then: u64) -> bool {
    let acked = acked_at
        .get(first as usize)
        .map_or(0, |a| a.load(Ordering::Relaxed));
    let sent = sent_at
        .get(then as usize)
        .map_or(0, |s| s.load(Ordering::Relaxed));
    acked != 0 && acked < sent
}

fn mark_published(sh: &Shared, seq: u64, ok: bool, error: Option<String>) {
    let state = if ok { PUB_OK } else { PUB_FAILED };
    if let Some(s) = sh.pub_state.get(seq as usize) {
        s.store(state, Ordering::Relaxed);
    }
    if ok {
        sh.pub_ok.fetch_add(1, Ordering::Relaxed);
        let now = sh.now_ns();
        if let Some(a) = sh.acked_at.get(seq as usize) {
            a.store(now, Ordering::Relaxed);
        }
        if let Some(at) = sh.sent_at.get(seq as usize) {
            let ack_us = now.saturating_sub(at.load(Ordering::Relaxed)) / 1000;
            sh.with_hist(|h| h.ack.saturating_record(ack_us.max(1)));
        }
    } else {
        sh.pub_failed.fetch_add(1, Ordering::Relaxed);
        Shared::count_error(&sh.pub_errors, error.unwrap_or_default());
    }
}

fn stamp(sh: &Shared, seq: u64) -> u64 {
    let t = sh.now_ns();
    let start = sh.pace_start_ns.load(Ordering::Relaxed);
    if start != u64::MAX && sh.rate > 0.0 {
        let due = start + (seq as f64 * 1e9 / sh.rate) as u64;
        let lag_us = t.saturating_sub(due) / 1000;
        sh.with_hist(|h| h.send_lag.saturating_record(lag_us.max(1)));
    }
    if let Some(s) = sh.sent_at.get(seq as usize) {
        s.store(t, Ordering::Relaxed);
    }
    if let Some(s) = sh.pub_state.get(seq as usize) {
        s.store(PUB_SENT, Ordering::Relaxed);
    }
    sh.published.fetch_add(1, Ordering::Relaxed);
    t
}

async fn http_publisher(node: SocketAddr, plan: Arc<Plan>, sh: Arc<Shared>, jobs: JobQueue) {
    let mut conn: Option<HttpConn> = None;
    let path = "/api/publish";
    let mut body = Vec::with_capacity(256);
    loop {
        let Some(seq) = jobs.lock().await.recv().await else {
            return;
        };
        if conn.is_none() {
            match HttpConn::connect(node).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    stamp(&sh, seq);
                    mark_published(&sh, seq, false, Some(format!("connect: {e}")));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        let channel = plan.channel(seq);
        let t = stamp(&sh, seq);
        body.clear();
        body.extend_from_slice(b"{\"channel\":\"");
        body.extend_from_slice(channel.as_bytes());
        body.extend_from_slice(b"\",\"data\":");
        body.extend_from_slice(plan.data(&channel, seq, t).as_bytes());
        body.push(b'}');
        let result = c
            .request("POST", path, &body, plan.api_key.as_deref())
            .await;
        match result {
            Ok((200, _)) => mark_published(&sh, seq, true, None),
            Ok((status, b)) => mark_published(
                &sh,
                seq,
                false,
                Some(format!("HTTP {status}: {}", String::from_utf8_lossy(&b))),
            ),
            Err(e) => {
                mark_published(&sh, seq, false, Some(format!("HTTP: {e}")));
                conn = None;
            }
        }
    }
}

/// One `--via redis` publisher: takes the publishes that are due (up to
/// `--redis-pipeline` of them), writes them in one pipeline and reads their replies
/// in order, the way a client library's automatic pipelining does.
async fn redis_publisher(plan: Arc<Plan>, sh: Arc<Shared>, jobs: JobQueue) {
    let Some(addr) = plan.redis else {
        return;
    };
    // Only a channel without an epoch takes this one (a fresh run on a fresh Redis).
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let fresh_epoch = format!("bench{unix_ms}");
    let mut conn: Option<RespConn> = None;
    let mut frame = Vec::with_capacity(256);
    let mut batch = Vec::with_capacity(plan.redis_pipeline);
    loop {
        batch.clear();
        {
            let mut rx = jobs.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            batch.push(first);
            while batch.len() < plan.redis_pipeline {
                match rx.try_recv() {
                    Ok(seq) => batch.push(seq),
                    Err(_) => break,
                }
            }
        }
        let fail_all = |batch: &[u64], why: String| {
            for &seq in batch {
                stamp(&sh, seq);
                mark_published(&sh, seq, false, Some(why.clone()));
            }
        };
        if conn.is_none() {
            match RespConn::connect(addr).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    fail_all(&batch, format!("redis connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        if plan.durable
            && let Err(e) = c.ensure_script().await
        {
            fail_all(&batch, format!("redis: {e}"));
            conn = None;
            continue;
        }
        for &seq in &batch {
            let channel = plan.channel(seq);
            let t = stamp(&sh, seq);
            frame.clear();
            frame.extend_from_slice(b"{\"type\":\"message\",\"channel\":\"");
            frame.extend_from_slice(channel.as_bytes());
            frame.extend_from_slice(b"\",\"data\":");
            frame.extend_from_slice(plan.data(&channel, seq, t).as_bytes());
            if plan.durable {
                let args = DurableArgs {
                    frame_open: &frame,
                    history_size: plan.history_size,
                    history_ttl_secs: plan.history_ttl_secs,
                    fresh_epoch: &fresh_epoch,
                };
                c.push_durable(&plan.redis_prefix, &channel, &args);
            } else {
                frame.push(b'}');
                c.push_publish(&format!("{}:{{{channel}}}:ch", plan.redis_prefix), &frame);
            }
        }
        sh.redis_writes.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = c.send().await {
            for &seq in &batch {
                mark_published(&sh, seq, false, Some(format!("redis: {e}")));
            }
            conn = None;
            continue;
        }
        for (i, &seq) in batch.iter().enumerate() {
            let reply = match c.read_reply().await {
                Ok(reply) => reply,
                Err(e) => {
                    for &rest in &batch[i..] {
                        mark_published(&sh, rest, false, Some(format!("redis: {e}")));
                    }
                    conn = None;
                    break;
                }
            };
            let result = if plan.durable {
                c.durable_result(reply).map(drop)
            } else {
                RespConn::publish_result(reply).map(drop)
            };
            match result {
                Ok(()) => mark_published(&sh, seq, true, None),
                Err(e) => mark_published(&sh, seq, false, Some(format!("redis: {e}"))),
            }
        }
    }
}

/// How long a WebSocket publisher waits for a reply before it gives the connection up
/// (its remaining jobs then fail at once, so the run still ends by itself).
const WS_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// One WebSocket publisher: like the HTTP ones, one publish in flight, the next sent
/// when the reply to the last one is in (frames it receives meanwhile are skipped).
async fn ws_publisher(
    index: usize,
    node: SocketAddr,
    plan: Arc<Plan>,
    sh: Arc<Shared>,
    jobs: JobQueue,
) {
    let mut ws = match open_ws(&plan, index, node).await {
        Ok(ws) => ws,
        Err(e) => {
            Shared::count_error(&sh.pub_errors, format!("ws publisher connect: {e}"));
            // Fail every job this publisher would have taken.
            while let Some(seq) = jobs.lock().await.recv().await {
                stamp(&sh, seq);
                mark_published(&sh, seq, false, Some("no ws publisher".into()));
            }
            return;
        }
    };
    let mut broken: Option<String> = None;
    loop {
        let Some(seq) = jobs.lock().await.recv().await else {
            break;
        };
        if let Some(why) = &broken {
            stamp(&sh, seq);
            mark_published(&sh, seq, false, Some(why.clone()));
            continue;
        }
        let channel = plan.channel(seq);
        let t = stamp(&sh, seq);
        let frame = format!(
            "{{\"op\":\"publish\",\"id\":{seq},\"channel\":\"{channel}\",\"data\":{}}}",
            plan.data(&channel, seq, t)
        );
        if let Err(e) = ws.send(Message::text(frame)).await {
            broken = Some(format!("ws publish: {e}"));
            mark_published(&sh, seq, false, broken.clone());
            continue;
        }
        let reply = tokio::time::timeout(WS_REPLY_TIMEOUT, ws_reply(&mut ws, seq))
            .await
            .unwrap_or_else(|_| Err(format!("ws publisher: no reply in {WS_REPLY_TIMEOUT:?}")));
        match reply {
            Ok(None) => mark_published(&sh, seq, true, None),
            Ok(Some(error)) => mark_published(&sh, seq, false, Some(error)),
            Err(why) => {
                mark_published(&sh, seq, false, Some(why.clone()));
                broken = Some(why);
            }
        }
    }
}

/// Reads until the reply to `seq`: Ok(None) for a success, Ok(Some(frame)) for an
/// error reply, Err when the connection ended first.
async fn ws_reply(ws: &mut Ws, seq: u64) -> Result<Option<String>, String> {
    while let Some(frame) = ws.next().await {
        let frame = frame.map_err(|e| format!("ws publisher read: {e}"))?;
        let Message::Text(t) = frame else { continue };
        let t = t.as_str();
        if t.starts_with("{\"type\":\"reply\"") && number_after(t, "\"id\":") == Some(seq) {
            return Ok(t.contains("\"error\"").then(|| t.to_string()));
        }
    }
    Err("ws publisher: connection closed".into())
}

// ---- phases -----------------------------------------------------------------------

#[derive(Default, Clone)]
struct ProcSample {
    cpu: Vec<Option<f64>>,
    rss: Vec<Option<u64>>,
}

fn sample(pids: &[String]) -> ProcSample {
    ProcSample {
        cpu: pids.iter().map(|p| procfs::cpu_secs(p)).collect(),
        rss: pids.iter().map(|p| procfs::rss_kib(p)).collect(),
    }
}

fn cpu_delta(a: &ProcSample, b: &ProcSample, i: usize) -> Option<f64> {
    Some(b.cpu.get(i).copied()?? - a.cpu.get(i).copied()??)
}

async fn scrape_metrics(nodes: &[SocketAddr]) -> Vec<Option<String>> {
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

const NODE_METRICS: [(&str, &str); 5] = [
    ("delivered", "herald_messages_delivered_total"),
    ("backplane_lagged", "herald_backplane_lagged_total"),
    ("dropped", "herald_messages_dropped_total"),
    ("slow_consumer_closes", "herald_slow_consumer_closes_total"),
    ("published", "herald_messages_published_total"),
];

fn metric_deltas(before: &[Option<String>], after: &[Option<String>], i: usize) -> Value {
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

fn q(h: &Hist, quantile: f64) -> Value {
    if h.is_empty() {
        Value::Null
    } else {
        json!(h.value_at_quantile(quantile))
    }
}

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

async fn run(args: &Args) -> anyhow::Result<Value> {
    let prefix = args.channel_prefix.clone().unwrap_or_else(|| {
        if args.durable {
            "dbench:".into()
        } else {
            "bench:".into()
        }
    });
    let redis = match (&args.via, &args.redis) {
        (Via::Redis, None) => anyhow::bail!("--via redis needs --redis redis://127.0.0.1:PORT"),
        (_, Some(url)) => {
            let hostport = url.strip_prefix("redis://").unwrap_or(url);
            let addr: SocketAddr = hostport
                .trim_end_matches('/')
                .parse()
                .map_err(|e| anyhow::anyhow!("--redis {url}: {e} (expected redis://IP:PORT)"))?;
            anyhow::ensure!(addr.ip().is_loopback(), "--redis must be on loopback");
            Some(addr)
        }
        (_, None) => None,
    };
    let plan = Arc::new(Plan {
        nodes: args.nodes.clone(),
        source_ips: args.source_ips.clone(),
        prefix,
        channels: args.channels,
        connections: args.connections,
        durable: args.durable,
        via: args.via,
        frame_bytes: args.frame_bytes,
        api_key: args.api_key.clone(),
        redis,
        redis_prefix: args.redis_prefix.clone(),
        history_size: args.history_size,
        history_ttl_secs: args.history_ttl.as_secs().max(1),
        redis_pipeline: usize::from(args.redis_pipeline),
        ws_config: WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20)),
    });
    let total_pubs = if args.rate > 0.0 {
        (args.rate * args.duration.as_secs_f64()).round() as u64
    } else {
        0
    };
    let sh = Arc::new(Shared {
        origin: Instant::now(),
        subscribed: AtomicUsize::new(0),
        connect_failed: AtomicUsize::new(0),
        connect_retries: AtomicU64::new(0),
        connect_errors: Mutex::default(),
        received: AtomicU64::new(0),
        unknown: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        order_violations: AtomicU64::new(0),
        offset_gaps: AtomicU64::new(0),
        other_frames: AtomicU64::new(0),
        read_errors: AtomicU64::new(0),
        closes: Mutex::default(),
        per_seq: (0..total_pubs).map(|_| AtomicU32::new(0)).collect(),
        pub_state: (0..total_pubs).map(|_| AtomicU8::new(PUB_NONE)).collect(),
        sent_at: (0..total_pubs).map(|_| AtomicU64::new(0)).collect(),
        acked_at: (0..total_pubs).map(|_| AtomicU64::new(0)).collect(),
        published: AtomicU64::new(0),
        pub_ok: AtomicU64::new(0),
        pub_failed: AtomicU64::new(0),
        redis_writes: AtomicU64::new(0),
        pub_errors: Mutex::default(),
        last_delivery_ns: AtomicU64::new(0),
        hists: Mutex::default(),
        stop_clients: AtomicBool::new(false),
        pace_start_ns: AtomicU64::new(u64::MAX),
        rate: args.rate,
    });
    let pids: Vec<String> = args.pids.iter().map(|p| p.to_string()).collect();
    let aux: Vec<(String, String)> = args
        .aux_pids
        .iter()
        .map(|s| match s.split_once('=') {
            Some((name, pid)) => (name.to_string(), pid.to_string()),
            None => (format!("pid{s}"), s.clone()),
        })
        .collect();
    let aux_pids: Vec<String> = aux.iter().map(|(_, p)| p.clone()).collect();

    // Progress, every second, to stderr.
    let phase = Arc::new(Mutex::new("connect"));
    let progress = {
        let sh = sh.clone();
        let phase = phase.clone();
        let n = args.connections;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let (mut last_pub, mut last_recv) = (0, 0);
            // This second's latency: the merged histogram minus the last second's.
            let mut last_hist = new_hist();
            tick.tick().await;
            loop {
                tick.tick().await;
                let p = sh.published.load(Ordering::Relaxed);
                let r = sh.received.load(Ordering::Relaxed);
                let now_hist = sh.merged().delivery;
                let mut second = now_hist.clone();
                let p99_ms = match second.subtract(&last_hist) {
                    Ok(()) if !second.is_empty() => {
                        format!("{:.2}", second.value_at_quantile(0.99) as f64 / 1000.0)
                    }
                    _ => "–".into(),
                };
                last_hist = now_hist;
                eprintln!(
                    "[herald-bench {:>6.1}s {:>8}] subscribed {}/{} (failed {}), published {} (+{}/s, failed {}), received {} (+{}/s, p99 {p99_ms} ms), closes {:?}",
                    sh.origin.elapsed().as_secs_f64(),
                    *phase.lock().unwrap(),
                    sh.subscribed.load(Ordering::Relaxed),
                    n,
                    sh.connect_failed.load(Ordering::Relaxed),
                    p,
                    p - last_pub,
                    sh.pub_failed.load(Ordering::Relaxed),
                    r,
                    r - last_recv,
                    sh.closes.lock().unwrap(),
                );
                (last_pub, last_recv) = (p, r);
            }
        })
    };

    // ---- connect and subscribe
    let loadavg_start = loadavg();
    let before_connect = sample(&pids);
    let tool_cpu_start = procfs::cpu_secs("self");
    let connect_start = Instant::now();
    let deadline = connect_start + args.connect_timeout;
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    for i in 0..args.connections {
        let permit = gate.clone().acquire_owned().await?;
        tokio::spawn(subscriber(i, plan.clone(), sh.clone(), permit, deadline));
    }
    // Every permit back: every client subscribed or gave up.
    let _all = gate
        .acquire_many(args.connect_concurrency.max(1) as u32)
        .await?;
    let connect_secs = connect_start.elapsed().as_secs_f64();
    let after_connect_cpu = sample(&pids);
    let subscribed = sh.subscribed.load(Ordering::Relaxed);
    eprintln!(
        "[herald-bench] {subscribed}/{} subscribed in {connect_secs:.2}s ({:.0}/s), {} failed",
        args.connections,
        subscribed as f64 / connect_secs,
        sh.connect_failed.load(Ordering::Relaxed)
    );
    *phase.lock().unwrap() = "settle";
    tokio::time::sleep(args.settle).await;
    if let Some(idle) = args.idle {
        *phase.lock().unwrap() = "idle";
        tokio::time::sleep(idle).await;
    }
    let after_connect = sample(&pids);
    let tool_rss_connected = procfs::rss_kib("self");

    // ---- publish
    let mut publish_secs = 0.0;
    let mut drain_secs = 0.0;
    let metrics_before = scrape_metrics(&args.nodes).await;
    let pub_before = sample(&pids);
    let aux_before = sample(&aux_pids);
    let tool_before = procfs::cpu_secs("self");
    let window_start = Instant::now();
    let window_start_ns = sh.now_ns();
    if total_pubs > 0 {
        *phase.lock().unwrap() = "publish";
        // Queues: per node, per way of publishing.
        let ways: &[Via] = match plan.via {
            Via::Http => &[Via::Http],
            Via::Ws => &[Via::Ws],
            Via::Both => &[Via::Http, Via::Ws],
            Via::Redis => &[Via::Redis],
        };
        let cap = ((args.rate / 100.0) as usize).clamp(64, 8192);
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        for (ni, node) in plan.nodes.iter().enumerate() {
            let mut per_way = Vec::new();
            for way in ways {
                let (tx, rx) = tokio::sync::mpsc::channel::<u64>(cap);
                let rx: JobQueue = Arc::new(tokio::sync::Mutex::new(rx));
                for w in 0..args.publishers.max(1) {
                    let (plan, sh, rx, node) = (plan.clone(), sh.clone(), rx.clone(), *node);
                    workers.push(match way {
                        Via::Http => tokio::spawn(http_publisher(node, plan, sh, rx)),
                        Via::Redis => tokio::spawn(redis_publisher(plan, sh, rx)),
                        _ => tokio::spawn(ws_publisher(
                            args.connections + ni * 1000 + w,
                            node,
                            plan,
                            sh,
                            rx,
                        )),
                    });
                }
                per_way.push(tx);
            }
            senders.push(per_way);
        }
        // Paced: every millisecond, send what is due by now.
        let start = Instant::now();
        sh.pace_start_ns.store(sh.now_ns(), Ordering::Relaxed);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut next: u64 = 0;
        let n_nodes = plan.nodes.len() as u64;
        'pace: loop {
            tick.tick().await;
            let due = ((start.elapsed().as_secs_f64() * args.rate) as u64).min(total_pubs);
            while next < due {
                let node = (next % n_nodes) as usize;
                let way = ((next / n_nodes) % ways.len() as u64) as usize;
                if senders[node][way].send(next).await.is_err() {
                    break 'pace;
                }
                next += 1;
            }
            if next >= total_pubs {
                break;
            }
        }
        drop(senders);
        publish_secs = start.elapsed().as_secs_f64();
        *phase.lock().unwrap() = "drain";
        // Wait for acknowledgements and deliveries while they still make progress:
        // stop when everything arrived, when nothing new came for `--drain`, or at
        // `--drain-max`. Late deliveries are not losses; what never comes is.
        let hard_deadline = Instant::now() + args.drain_max;
        let mut last_progress = Instant::now();
        let mut last_seen = (0, 0);
        loop {
            let acked = sh.pub_ok.load(Ordering::Relaxed) + sh.pub_failed.load(Ordering::Relaxed);
            let received = sh.received.load(Ordering::Relaxed);
            if acked >= total_pubs && received >= expected_now(&sh, &plan) {
                break;
            }
            if (acked, received) != last_seen {
                last_seen = (acked, received);
                last_progress = Instant::now();
            }
            if last_progress.elapsed() >= args.drain || Instant::now() >= hard_deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drain_secs = start.elapsed().as_secs_f64() - publish_secs;
        for w in workers {
            w.abort();
        }
    }
    let window_secs = window_start.elapsed().as_secs_f64();
    let pub_after = sample(&pids);
    let aux_after = sample(&aux_pids);
    let tool_after = procfs::cpu_secs("self");
    let metrics_after = scrape_metrics(&args.nodes).await;
    sh.stop_clients.store(true, Ordering::Relaxed);
    progress.abort();

    // ---- results
    let received = sh.received.load(Ordering::Relaxed);
    let mut expected = 0u64;
    let mut unique = 0u64;
    let mut extra = 0u64;
    let mut unacked = 0u64;
    for seq in 0..total_pubs as usize {
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
    let lost = expected - unique;
    let Hists {
        delivery: lat,
        ack,
        send_lag,
    } = sh.merged();
    let last_delivery = sh.last_delivery_ns.load(Ordering::Relaxed);
    let delivery_secs = if last_delivery > window_start_ns {
        (last_delivery - window_start_ns) as f64 / 1e9
    } else {
        0.0
    };

    let mut nodes_json = Vec::new();
    let mut node_cpu_total = 0.0;
    let mut cpu_known = !pids.is_empty();
    let mut rss_delta_total: i64 = 0;
    let mut rss_known = !pids.is_empty();
    for (i, pid) in pids.iter().enumerate() {
        let cpu = cpu_delta(&pub_before, &pub_after, i);
        let cpu_connect = cpu_delta(&before_connect, &after_connect_cpu, i);
        match cpu {
            Some(c) => node_cpu_total += c,
            None => cpu_known = false,
        }
        let rss_before = before_connect.rss.get(i).copied().flatten();
        let rss_after = after_connect.rss.get(i).copied().flatten();
        match (rss_before, rss_after) {
            (Some(b), Some(a)) => rss_delta_total += a as i64 - b as i64,
            _ => rss_known = false,
        }
        nodes_json.push(json!({
            "pid": pid,
            "addr": args.nodes.get(i).map(|a| a.to_string()),
            "cpu_s_publish": cpu,
            "cpu_s_connect": cpu_connect,
            "rss_kib_before": rss_before,
            "rss_kib_connected": rss_after,
            "rss_kib_end": pub_after.rss.get(i).copied().flatten(),
            "metrics_delta": metric_deltas(&metrics_before, &metrics_after, i),
        }));
    }
    let aux_json: Vec<Value> = aux
        .iter()
        .enumerate()
        .map(|(i, (name, pid))| {
            let cpu = cpu_delta(&aux_before, &aux_after, i);
            json!({
                "name": name,
                "pid": pid,
                "cpu_s_publish": cpu,
                "cpu_us_per_delivery": cpu.filter(|_| received > 0).map(|c| c * 1e6 / received as f64),
            })
        })
        .collect();
    let tool_cpu = match (tool_before, tool_after) {
        (Some(b), Some(a)) => Some(a - b),
        _ => None,
    };
    let tool_total = match (tool_cpu_start, tool_after) {
        (Some(b), Some(a)) => Some(a - b),
        _ => None,
    };
    let closes: BTreeMap<String, u64> = sh
        .closes
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    let conn_n = args.connections.max(1) as f64;
    let report = json!({
        "label": args.label,
        "scenario": {
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
            "frame_bytes": args.frame_bytes,
            "idle_s": args.idle.map(|d| d.as_secs_f64()),
            "tool_threads": args.threads,
            "source_ips": args.source_ips.len(),
        },
        "connect": {
            "secs": connect_secs,
            "subscribed": subscribed,
            "failed": sh.connect_failed.load(Ordering::Relaxed),
            "retries": sh.connect_retries.load(Ordering::Relaxed),
            "per_sec": subscribed as f64 / connect_secs.max(1e-9),
            "errors": *sh.connect_errors.lock().unwrap(),
        },
        "publish": {
            "requested": total_pubs,
            "sent": sh.published.load(Ordering::Relaxed),
            "ok": sh.pub_ok.load(Ordering::Relaxed),
            "failed": sh.pub_failed.load(Ordering::Relaxed),
            "redis_writes": sh.redis_writes.load(Ordering::Relaxed),
            "unacked": unacked,
            "secs": publish_secs,
            "per_sec": if publish_secs > 0.0 { sh.published.load(Ordering::Relaxed) as f64 / publish_secs } else { 0.0 },
            "ack_us": {"p50": q(&ack, 0.5), "p99": q(&ack, 0.99), "max": if ack.is_empty() { Value::Null } else { json!(ack.max()) }},
            "send_lag_us": {"p50": q(&send_lag, 0.5), "p99": q(&send_lag, 0.99), "max": if send_lag.is_empty() { Value::Null } else { json!(send_lag.max()) }},
            "errors": *sh.pub_errors.lock().unwrap(),
        },
        "deliveries": {
            "expected": expected,
            "received": received,
            "unique": unique,
            "lost": lost,
            "loss_ratio": if expected > 0 { lost as f64 / expected as f64 } else { 0.0 },
            "duplicates": extra,
            "out_of_order": sh.out_of_order.load(Ordering::Relaxed),
            "order_violations": sh.order_violations.load(Ordering::Relaxed),
            "offset_gaps": sh.offset_gaps.load(Ordering::Relaxed),
            "unknown": sh.unknown.load(Ordering::Relaxed),
            "other_frames": sh.other_frames.load(Ordering::Relaxed),
            "read_errors": sh.read_errors.load(Ordering::Relaxed),
            "closes": closes,
            "secs": delivery_secs,
            "per_sec": if delivery_secs > 0.0 { received as f64 / delivery_secs } else { 0.0 },
        },
        "latency_us": {
            "count": lat.len(),
            "p50": q(&lat, 0.5),
            "p90": q(&lat, 0.9),
            "p99": q(&lat, 0.99),
            "p999": q(&lat, 0.999),
            "max": if lat.is_empty() { Value::Null } else { json!(lat.max()) },
            "mean": if lat.is_empty() { Value::Null } else { json!(lat.mean()) },
        },
        "window_s": window_secs,
        "loadavg": {"start": loadavg_start, "end": loadavg()},
        "drain_s": drain_secs,
        "node_cpu_s": if cpu_known { json!(node_cpu_total) } else { Value::Null },
        "node_cpu_us_per_delivery": if cpu_known && received > 0 { json!(node_cpu_total * 1e6 / received as f64) } else { Value::Null },
        "node_cores": if cpu_known && window_secs > 0.0 { json!(node_cpu_total / window_secs) } else { Value::Null },
        "rss_kib_per_connection": if rss_known { json!(rss_delta_total as f64 / conn_n) } else { Value::Null },
        "nodes": nodes_json,
        "aux": aux_json,
        "tool": {
            "cpu_s_window": tool_cpu,
            "cores_window": tool_cpu.filter(|_| window_secs > 0.0).map(|c| c / window_secs),
            "cpu_s_total": tool_total,
            "rss_kib": tool_rss_connected,
            "clk_tck": procfs::clk_tck(),
        },
    });
    Ok(report)
}

/// The 1-minute load average (how busy the shared machine was).
fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Deliveries expected for what has been acknowledged (or sent) so far.
fn expected_now(sh: &Shared, plan: &Plan) -> u64 {
    let mut expected = 0;
    for (seq, state) in sh.pub_state.iter().enumerate() {
        match state.load(Ordering::Relaxed) {
            PUB_OK | PUB_SENT => expected += plan.subscribers_of(seq % plan.channels),
            _ => {}
        }
    }
    expected
}

fn fmt(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            if n.is_f64() {
                if f.abs() >= 100.0 {
                    format!("{f:.0}")
                } else {
                    format!("{f:.2}")
                }
            } else {
                n.to_string()
            }
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The readable table.
fn table(r: &Value) -> String {
    let rows: Vec<(&str, String)> = vec![
        ("label", fmt(&r["label"])),
        (
            "connections / channels / nodes",
            format!(
                "{} / {} / {}",
                fmt(&r["scenario"]["connections"]),
                fmt(&r["scenario"]["channels"]),
                r["scenario"]["nodes"].as_array().map_or(0, |a| a.len())
            ),
        ),
        (
            "connect: subscribed, secs, per sec, failed",
            format!(
                "{}, {} s, {}/s, {}",
                fmt(&r["connect"]["subscribed"]),
                fmt(&r["connect"]["secs"]),
                fmt(&r["connect"]["per_sec"]),
                fmt(&r["connect"]["failed"])
            ),
        ),
        (
            "publish: rate asked, achieved, ok, failed",
            format!(
                "{}/s, {}/s, {}, {}",
                fmt(&r["scenario"]["rate"]),
                fmt(&r["publish"]["per_sec"]),
                fmt(&r["publish"]["ok"]),
                fmt(&r["publish"]["failed"])
            ),
        ),
        (
            "deliveries: expected, received, lost, duplicates",
            format!(
                "{}, {}, {}, {}",
                fmt(&r["deliveries"]["expected"]),
                fmt(&r["deliveries"]["received"]),
                fmt(&r["deliveries"]["lost"]),
                fmt(&r["deliveries"]["duplicates"])
            ),
        ),
        ("deliveries per second", fmt(&r["deliveries"]["per_sec"])),
        (
            "latency µs p50 / p90 / p99 / p99.9 / max",
            format!(
                "{} / {} / {} / {} / {}",
                fmt(&r["latency_us"]["p50"]),
                fmt(&r["latency_us"]["p90"]),
                fmt(&r["latency_us"]["p99"]),
                fmt(&r["latency_us"]["p999"]),
                fmt(&r["latency_us"]["max"])
            ),
        ),
        (
            "publish µs p50 / p99: acknowledged, waited to be sent",
            format!(
                "{} / {}, {} / {}",
                fmt(&r["publish"]["ack_us"]["p50"]),
                fmt(&r["publish"]["ack_us"]["p99"]),
                fmt(&r["publish"]["send_lag_us"]["p50"]),
                fmt(&r["publish"]["send_lag_us"]["p99"])
            ),
        ),
        (
            "node CPU µs per delivery",
            fmt(&r["node_cpu_us_per_delivery"]),
        ),
        ("node cores busy (window)", fmt(&r["node_cores"])),
        (
            "node RSS KiB per connection",
            fmt(&r["rss_kib_per_connection"]),
        ),
        (
            "load tool cores busy (window)",
            fmt(&r["tool"]["cores_window"]),
        ),
        ("closes", r["deliveries"]["closes"].to_string()),
        (
            "machine load average, start / end",
            format!(
                "{} / {}",
                fmt(&r["loadavg"]["start"]),
                fmt(&r["loadavg"]["end"])
            ),
        ),
    ];
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<width$}  {v}\n"));
    }
    for a in r["aux"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<width$}  {} s ({} µs per delivery)\n",
            format!("{} CPU", fmt(&a["name"])),
            fmt(&a["cpu_s_publish"]),
            fmt(&a["cpu_us_per_delivery"]),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(n: usize, k: usize) -> Plan {
        Plan {
            nodes: vec!["127.0.0.1:1".parse().unwrap()],
            source_ips: vec![],
            prefix: "bench:".into(),
            channels: k,
            connections: n,
            durable: false,
            via: Via::Http,
            frame_bytes: 100,
            api_key: None,
            redis: None,
            redis_prefix: "herald".into(),
            history_size: 100,
            history_ttl_secs: 600,
            redis_pipeline: 1,
            ws_config: WebSocketConfig::default(),
        }
    }

    #[test]
    fn only_an_acknowledged_publish_overtaken_by_a_later_send_breaks_order() {
        let at = |v: &[u64]| v.iter().map(|&x| AtomicU64::new(x)).collect::<Vec<_>>();
        // Publish 0 acknowledged at 100; publish 1 sent at 200 (after), 2 at 50 (before).
        let acked = at(&[100, 0, 0]);
        let sent = at(&[10, 200, 50]);
        assert!(acked_before_sent(&acked, &sent, 0, 1));
        assert!(
            !acked_before_sent(&acked, &sent, 0, 2),
            "in flight together"
        );
        assert!(
            !acked_before_sent(&acked, &sent, 1, 2),
            "never acknowledged"
        );
        assert!(!acked_before_sent(&acked, &sent, 0, 9), "unknown seq");
    }

    #[test]
    fn subscribers_per_channel_add_up() {
        let p = plan(10, 3);
        assert_eq!(
            (0..3).map(|c| p.subscribers_of(c)).collect::<Vec<_>>(),
            vec![4, 3, 3]
        );
    }

    #[test]
    fn frames_come_out_near_the_asked_size() {
        let p = plan(1, 1);
        let ch = p.channel(7);
        let data = p.data(&ch, 7, 123_456_789);
        let frame = format!("{{\"type\":\"message\",\"channel\":\"{ch}\",\"data\":{data}}}");
        // Near: the sequence number and timestamp take a varying number of digits.
        assert!((95..=110).contains(&frame.len()), "{} bytes", frame.len());
        assert_eq!(number_after(&frame, "\"s\":"), Some(7));
        assert_eq!(number_after(&frame, "\"t\":"), Some(123_456_789));
    }
}
