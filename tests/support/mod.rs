//! Shared test support: real `redis-server` processes on free ports, Herald nodes
//! (in-process or as child processes) and a small WebSocket client.
//!
//! Tests never touch the machine's Redis on its standard port: every Redis here is
//! started by the test, on a port the OS picked, with persistence off.
//!
//! Nothing here waits without a bound: every external command (`redis-cli`, `kill`,
//! `cargo`) runs under [`run_bounded`], every wait for a process or a node has a
//! deadline, and a bound that passes fails the test with a message naming what it
//! waited for. The test runner bounds each test as a whole on top of that
//! (`.config/nextest.toml`).

#![allow(dead_code)]

pub mod cluster;

use std::collections::VecDeque;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use herald::config::Config;
use herald::server::Node;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(10);

/// How long one external command may take (`redis-cli` against a local server answers
/// in milliseconds; this is for a loaded machine, not a slow command).
pub const COMMAND_LIMIT: Duration = Duration::from_secs(10);

/// How a command line reads in a failure message.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to its end, with stdin closed and its output captured, and returns its
/// output. Panics naming the command when it cannot start or when it runs longer
/// than `limit` (it is killed first), so a stuck command fails its test instead of
/// hanging it.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    try_run_bounded(cmd, limit).unwrap_or_else(|e| panic!("{e}"))
}

/// [`run_bounded`] that reports instead of panicking: Err says which command did not
/// start or did not finish (it was killed) and why.
pub fn try_run_bounded(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("`{what}` could not be started: {e}"))?;
    // Both pipes are read while it runs: a child blocked on a full pipe never exits.
    let stdout = child.stdout.take().map(read_to_end_in_thread);
    let stderr = child.stderr.take().map(read_to_end_in_thread);
    let status = match wait_bounded(&mut child, limit) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "`{what}` did not finish within {limit:?}; killed it"
            ));
        }
        Err(e) => return Err(format!("waiting for `{what}`: {e}")),
    };
    let collect = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

fn read_to_end_in_thread(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Waits for `child` to exit: Some(status), or None when it still runs after `limit`.
/// Blocks the calling thread (polling), as the commands it serves take milliseconds.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// A free TCP port on loopback (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A `redis-server` child process owned by the test.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

/// How often [`Redis::start`] tries another port when the one it picked was taken
/// before redis-server could bind it (other tests pick free ports at the same time).
const REDIS_PORT_TRIES: usize = 3;
/// How long one `redis-cli INFO` may take while a server starts (it is retried until
/// [`WAIT`] has passed).
const PING_LIMIT: Duration = Duration::from_secs(2);

impl Redis {
    pub fn start() -> Redis {
        let mut failures = Vec::new();
        for _ in 0..REDIS_PORT_TRIES {
            let port = free_port();
            let dir = std::env::temp_dir()
                .join(format!("herald-test-redis-{port}-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&dir);
            let mut r = Redis {
                port,
                child: None,
                dir,
            };
            match r.try_spawn() {
                Ok(()) => return r,
                // Dropping it kills what was started and removes its directory.
                Err(e) => failures.push(e),
            }
        }
        panic!("redis-server did not start on {REDIS_PORT_TRIES} free ports: {failures:#?}");
    }

    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}");
        }
    }

    /// Starts redis-server on `self.port` and waits, within [`WAIT`], until this very
    /// process answers (a PONG from another server that took the port does not
    /// count). On failure the reason names the port and quotes the server's log.
    fn try_spawn(&mut self) -> Result<(), String> {
        let port = self.port;
        let log = self.dir.join("redis.log");
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server could not be started ({e}); apt-get install redis-server")
            });
        let pid = child.id();
        let deadline = Instant::now() + WAIT;
        let failure = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break format!("redis-server on port {port} exited with {status}");
            }
            let info = match self.try_cli(&["INFO", "server"], PING_LIMIT) {
                Ok(info) => info,
                // A loaded machine, or something on the port that does not answer as
                // a Redis: the latter is named once the deadline passes.
                Err(e) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break format!("port {port} does not answer as a Redis: {e}");
                }
                Err(_) => continue,
            };
            if info
                .lines()
                .any(|l| l.trim() == format!("process_id:{pid}"))
            {
                self.child = Some(child);
                return Ok(());
            }
            if !info.trim().is_empty() {
                // Something answers on the port, and it is not our server: the port
                // was taken between picking it and binding it.
                let _ = child.kill();
                let _ = child.wait();
                break format!("port {port} is taken by another process");
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break format!("redis-server on port {port} did not answer within {WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(5)..];
        Err(format!("{failure}; its log ends: {tail:#?}"))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against this server and returns its output; panics, naming
    /// the command, when it takes longer than [`COMMAND_LIMIT`].
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args, COMMAND_LIMIT)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_cli(&self, args: &[&str], limit: Duration) -> Result<String, String> {
        let out = try_run_bounded(
            Command::new("redis-cli")
                .args(["-p", &self.port.to_string()])
                .args(args),
            limit,
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Kills the server (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A configuration for an in-process node on a free port.
pub fn config(redis: Option<&Redis>, node_id: &str) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        redis_url: redis.map(Redis::url),
        node_id: node_id.into(),
        unsubscribe_grace: Duration::from_millis(200),
        static_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("static"),
        ..Config::default()
    }
}

/// A configuration from TOML text, on a free port.
pub fn config_from_toml(redis: Option<&Redis>, node_id: &str, toml: &str) -> Config {
    let mut c = Config::from_toml(toml).expect("valid test config");
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.redis_url = redis.map(Redis::url);
    c.node_id = node_id.into();
    c.unsubscribe_grace = Duration::from_millis(200);
    c
}

pub async fn start(config: Config) -> Node {
    let node = tokio::time::timeout(WAIT, Node::start(config))
        .await
        .unwrap_or_else(|_| panic!("Node::start did not return within {WAIT:?}"))
        .expect("node starts");
    wait_ready(node.addr).await;
    node
}

pub async fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(r) = http().get(format!("http://{addr}/readyz")).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "node {addr} not ready in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the node at `addr` was not ready and is ready again, within `limit` of
/// `since` (a failover); returns how long after `since` it was ready again.
pub async fn ready_again(addr: SocketAddr, since: Instant, limit: Duration) -> Duration {
    let mut was_down = false;
    loop {
        let st = ready_status(addr).await;
        if st != 200 {
            was_down = true;
        } else if was_down {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < limit,
            "node {addr} not ready again (was down: {was_down})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn ready_status(addr: SocketAddr) -> u16 {
    match http().get(format!("http://{addr}/readyz")).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// What a publisher had taken: (data, epoch, offset) of each publish, in order.
pub type Taken = Vec<(i64, String, u64)>;

/// One durable channel's publisher: publishes 1, 2, … one after the other to `channel`
/// on `addr` until `stop`, retrying an answer 503 for up to `limit` (a failover);
/// returns what was taken and the number of 503s. `acked` counts the publishes taken.
pub fn retrying_publisher(
    addr: SocketAddr,
    channel: String,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> tokio::task::JoinHandle<(Taken, u32)> {
    tokio::spawn(async move {
        let mut taken = Vec::new();
        let mut refused = 0u32;
        let mut i = 0i64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let deadline = tokio::time::Instant::now() + limit;
            loop {
                let (st, body) = publish_http(addr, json!({"channel": channel, "data": i})).await;
                if st == 200 {
                    taken.push((
                        i,
                        body["epoch"].as_str().unwrap().to_string(),
                        body["offset"].as_u64().unwrap(),
                    ));
                    acked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                assert_eq!(st, 503, "publish {i} to {channel}: {body}");
                refused += 1;
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "publish {i} to {channel} refused for {limit:?}: {body}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (taken, refused)
    })
}

/// `POST /api/publish` with a JSON body; returns the status and body.
pub async fn publish_http(addr: SocketAddr, body: Value) -> (u16, Value) {
    let r = http()
        .post(format!("http://{addr}/api/publish"))
        .json(&body)
        .send()
        .await
        .expect("http publish");
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// A herald binary as a child process (for signals and crashes).
pub struct NodeProcess {
    pub addr: SocketAddr,
    pub child: Child,
}

impl NodeProcess {
    /// Waits for the process to exit without blocking the runtime: Some(exit code) or
    /// None when it is still running after `limit`.
    pub async fn exit_code(&mut self, limit: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn spawn(args: &[&str]) -> NodeProcess {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("herald binary");
        let mut node = NodeProcess { addr, child };
        node.wait_ready().await;
        node
    }

    /// Waits until the node answers `/readyz` with 200, within [`WAIT`]; a process
    /// that exits first (a bad flag, a port taken) fails at once with its exit status.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "herald on {} exited with {status} before it was ready",
                    self.addr
                );
            }
            if ready_status(self.addr).await == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "herald on {} not ready within {WAIT:?}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        run_bounded(
            Command::new("kill").args([sig, &self.child.id().to_string()]),
            COMMAND_LIMIT,
        );
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebSocket client speaking PROTOCOL.md, keeping frames that arrive while it waits
/// for a reply.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
    pending: VecDeque<Value>,
    next_id: u64,
    /// The connection ended: its close was reported once; reads now return None.
    ended: bool,
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    Code(u16),
    /// The TCP connection ended without a close frame.
    Dropped,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Self::connect_path(addr, "/ws")
            .await
            .expect("websocket upgrade")
    }

    pub async fn connect_path(
        addr: SocketAddr,
        path: &str,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let url = format!("ws://{addr}{path}");
        let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&url))
            .await
            .unwrap_or_else(|_| {
                panic!("websocket upgrade to {url} did not finish within {WAIT:?}")
            })?;
        let welcome = loop {
            match tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("welcome in time")
            {
                Some(Ok(Message::Text(t))) => {
                    break serde_json::from_str::<Value>(&t).expect("json welcome");
                }
                Some(Ok(_)) => continue,
                other => panic!("no welcome: {other:?}"),
            }
        };
        assert_eq!(welcome["type"], "welcome");
        Ok(Client {
            ws,
            welcome,
            pending: VecDeque::new(),
            next_id: 1,
            ended: false,
        })
    }

    pub async fn send_text(&mut self, text: &str) {
        tokio::time::timeout(WAIT, self.ws.send(Message::Text(text.into())))
            .await
            .unwrap_or_else(|_| panic!("sending a frame took longer than {WAIT:?}"))
            .expect("send");
    }

    /// Sends any message, ignoring failures (tests that break the protocol on
    /// purpose); a send that cannot finish within [`WAIT`] is given up too.
    pub async fn send_raw(&mut self, msg: Message) {
        let _ = tokio::time::timeout(WAIT, self.ws.send(msg)).await;
    }

    /// Sends `frame` with a fresh id and waits for its reply (other frames are kept).
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = json!(id);
        self.send_text(&frame.to_string()).await;
        self.reply_to(id).await
    }

    pub async fn reply_to(&mut self, id: u64) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self
                .read_frame(deadline)
                .await
                .unwrap_or_else(|| panic!("no reply to {id}"));
            if v["type"] == "reply" && v["id"] == json!(id) {
                return v;
            }
            self.pending.push_back(v);
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let r = self
            .request(json!({"op": "subscribe", "channel": channel}))
            .await;
        assert!(r.get("result").is_some(), "subscribe {channel} failed: {r}");
        r["result"].clone()
    }

    pub async fn publish(&mut self, channel: &str, data: Value) -> Value {
        self.request(json!({"op": "publish", "channel": channel, "data": data}))
            .await
    }

    /// The next frame of any type, within `limit`.
    pub async fn next_frame(&mut self, limit: Duration) -> Option<Value> {
        if let Some(v) = self.pending.pop_front() {
            return Some(v);
        }
        self.read_frame(tokio::time::Instant::now() + limit).await
    }

    /// The next `message` frame (other frames are skipped).
    pub async fn next_message(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.next_frame(left).await?;
            if v["type"] == "message" {
                return Some(v);
            }
        }
    }

    /// Collects `n` messages or panics after `limit`.
    pub async fn messages(&mut self, n: usize, limit: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_message(left).await {
                Some(v) => out.push(v),
                None => panic!("got {} of {n} messages: {:?}", out.len(), out.last()),
            }
        }
        out
    }

    async fn read_frame(&mut self, deadline: tokio::time::Instant) -> Option<Value> {
        if self.ended {
            return None;
        }
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Some(serde_json::from_str(&t).expect("json frame"));
                }
                Ok(Some(Ok(Message::Close(f)))) => {
                    self.ended = true;
                    return Some(json!({"type": "closed", "code": f.map(|f| u16::from(f.code))}));
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => {
                    return Some(json!({"type": "closed", "code": null}));
                }
            }
        }
    }

    /// Reads until the connection closes; returns how.
    pub async fn closed(&mut self, limit: Duration) -> Option<Closed> {
        let deadline = tokio::time::Instant::now() + limit;
        while let Some(v) = self.pending.pop_front() {
            if v["type"] == "closed" {
                return Some(close_of(&v));
            }
        }
        loop {
            let v = self.read_frame(deadline).await?;
            if v["type"] == "closed" {
                return Some(close_of(&v));
            }
        }
    }

    pub async fn close(mut self) {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = tokio::time::timeout(WAIT, self.ws.close(Some(frame))).await;
    }
}

fn close_of(v: &Value) -> Closed {
    match v["code"].as_u64() {
        Some(c) => Closed::Code(c as u16),
        None => Closed::Dropped,
    }
}

/// The `data` values of messages, as i64 (tests publish numbers).
pub fn numbers(msgs: &[Value]) -> Vec<i64> {
    msgs.iter()
        .map(|m| m["data"].as_i64().expect("numeric data"))
        .collect()
}

/// The offsets of messages.
pub fn offsets(msgs: &[Value]) -> Vec<u64> {
    msgs.iter()
        .map(|m| m["offset"].as_u64().expect("offset"))
        .collect()
}

/// `GET /metrics` of a node, as text.
pub async fn metrics_text(addr: SocketAddr) -> String {
    http()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body")
}

/// The value of a metric summed over its label sets; None when it is not exposed.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        if &line[..end] != name {
            continue;
        }
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("unparsable sample: {line}"));
        *found.get_or_insert(0.0) += value;
    }
    found
}

pub async fn metric_of(addr: SocketAddr, name: &str) -> f64 {
    let text = metrics_text(addr).await;
    metric(&text, name).unwrap_or_else(|| panic!("{name} is not in /metrics:\n{text}"))
}

/// The value of the first line of a Prometheus text that starts with `prefix`.
pub fn metric_in(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `f` until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Seconds since the Unix epoch, for token claims.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// A token with `claims`, signed HS256 with `secret`.
pub fn sign_hs256(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("a signable token")
}

/// The HTTP status a WebSocket upgrade at `/ws{query}` gets (101 when it succeeds),
/// with an `Origin` header when given.
pub async fn upgrade_status(addr: SocketAddr, query: &str, origin: Option<&str>) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}/ws{query}")
        .into_client_request()
        .expect("a valid upgrade request");
    if let Some(o) = origin {
        req.headers_mut()
            .insert("origin", o.parse().expect("a valid Origin header"));
    }
    let upgrade = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req)).await;
    match upgrade.expect("the upgrade is answered in time") {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
    }
}

/// Everything the test process logs at WARN and above, as text. One subscriber for the
/// whole process (nextest runs each test in a process of its own; tests sharing one
/// tell their lines apart by what they contain).
pub fn captured_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || LogCapture(writer.clone()))
            .finish();
        // Fails only if another subscriber was installed first; then nothing is captured
        // and the tests that count lines say so.
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    })
    .clone()
}

/// The captured logs as text.
pub fn captured_text(logs: &std::sync::Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The node's backplane reconnected at least once (a new generation: its channels
/// were subscribed again).
pub async fn assert_backplane_reconnected(addr: SocketAddr) {
    let n = metric_of(addr, "herald_backplane_reconnects_total").await;
    assert!(n >= 1.0, "{addr}: herald_backplane_reconnects_total = {n}");
}
