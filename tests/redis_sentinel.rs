//! Redis Sentinel (issue 20, item 5): `redis-sentinel://…?sentinelServiceName=m&node=…`
//! URLs (docs/CONFIG.md).
//!
//! Each test starts its own primary `redis-server`, a replica of it (`--replicaof`)
//! and three sentinels (`redis-server --sentinel`) watching it as `m` (quorum 2, down after 1 s), each on
//! a free port with its own config file in a temporary directory. Cases:
//! - two nodes on the sentinel URL find the primary through the sentinels and deliver
//!   a publish across nodes;
//! - the primary is SIGKILLed while a node publishes to a durable channel (a publish
//!   answered 503 is retried): the sentinels promote the replica, both nodes follow
//!   it, re-subscribe and are ready again, every publish is taken exactly once in one
//!   order, and every subscriber sees every offset once and in order, or is closed
//!   with 4008 and then recovers the rest with `recover`. The failover-to-ready time
//!   is printed.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// The master's name the sentinels watch.
const SERVICE: &str = "m";
/// How long one `redis-cli` may take.
const CLI_LIMIT: Duration = Duration::from_secs(2);
/// How long the replica may take to sync and the sentinels to find each other (their
/// hello messages go out every 2 s).
const SETTLE: Duration = Duration::from_secs(20);
/// How long the sentinels may take to promote the replica and the nodes to follow.
const FAILOVER: Duration = Duration::from_secs(30);

const DURABLE: &str = "[limits]\nmessages_per_sec = 100000\n\n[namespaces.news]\nhistory_size = 5000\nhistory_ttl = \"1h\"\npublish = \"anyone\"\n";

fn redis_cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = try_run_bounded(
        Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args),
        CLI_LIMIT,
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A `redis-server` or `redis-sentinel` child process, killed (SIGKILL) on drop.
struct Proc {
    port: u16,
    child: Option<Child>,
}

impl Proc {
    /// Starts `bin` with `args(port)` on a free port and waits until it answers PING
    /// as this very process (`INFO server` shows its pid); tries three ports.
    fn start(bin: &str, args: impl Fn(u16) -> Vec<String>) -> Proc {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let mut child = Command::new(bin)
                .args(args(port))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{bin} could not be started ({e})"));
            let pid = format!("process_id:{}", child.id());
            let deadline = Instant::now() + WAIT;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    failures.push(format!("{bin} on {port} exited with {status}"));
                    break;
                }
                let info = redis_cli(port, &["INFO", "server"]).unwrap_or_default();
                if info.lines().any(|l| l.trim() == pid) {
                    return Proc {
                        port,
                        child: Some(child),
                    };
                }
                if !info.trim().is_empty() || Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    failures.push(format!("{bin} on {port} did not answer as itself"));
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("{bin} did not start: {failures:#?}");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A primary, its replica and three sentinels, in a temporary directory removed at
/// the end.
struct Sentinels {
    primary: Proc,
    replica: Proc,
    sentinels: Vec<Proc>,
    _dir: TempDir,
}

/// A temporary directory, removed on drop (also when the set-up fails half-way).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn server_args(dir: &Path, name: &str, port: u16) -> Vec<String> {
    let d = dir.join(name);
    let _ = std::fs::create_dir_all(&d);
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &d.display().to_string(),
        "--logfile",
        &d.join("redis.log").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The field `name` of a `SENTINEL MASTER` reply (name and value on alternate lines).
fn field(reply: &str, name: &str) -> Option<String> {
    let lines: Vec<&str> = reply.lines().map(str::trim).collect();
    lines
        .chunks(2)
        .find(|kv| kv[0] == name)
        .and_then(|kv| kv.get(1).map(|v| v.to_string()))
}

impl Sentinels {
    fn start() -> Sentinels {
        let guard =
            TempDir(std::env::temp_dir().join(format!("herald-test-sentinel-{}", free_port())));
        let dir = guard.0.clone();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let primary = Proc::start("redis-server", |p| server_args(&dir, "primary", p));
        let replica = Proc::start("redis-server", |p| {
            let mut a = server_args(&dir, "replica", p);
            a.extend([
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.port.to_string(),
            ]);
            a
        });
        let deadline = Instant::now() + SETTLE;
        while !redis_cli(replica.port, &["INFO", "replication"])
            .unwrap_or_default()
            .contains("master_link_status:up")
        {
            assert!(Instant::now() < deadline, "the replica did not sync");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut sentinels = Vec::new();
        for i in 0..3 {
            // A sentinel rewrites its config file: one file each.
            let d = dir.join(format!("sentinel{i}"));
            std::fs::create_dir_all(&d).unwrap();
            let conf = d.join("sentinel.conf");
            // `redis-server <file> --sentinel` is `redis-sentinel <file>` (one binary;
            // Debian ships the latter in a package of its own).
            sentinels.push(Proc::start("redis-server", |p| {
                let text = format!(
                    "port {p}\nbind 127.0.0.1\ndir {}\nlogfile {}\n\
                     sentinel monitor {SERVICE} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {SERVICE} 1000\n\
                     sentinel failover-timeout {SERVICE} 5000\n",
                    d.display(),
                    d.join("sentinel.log").display(),
                    primary.port
                );
                std::fs::write(&conf, text).expect("write the sentinel config");
                vec![conf.display().to_string(), "--sentinel".into()]
            }));
        }
        // Every sentinel knows the replica and the two others, or a failover could not
        // be agreed.
        for s in &sentinels {
            loop {
                let reply = redis_cli(s.port, &["SENTINEL", "MASTER", SERVICE]).unwrap_or_default();
                if field(&reply, "num-slaves").as_deref() == Some("1")
                    && field(&reply, "num-other-sentinels").as_deref() == Some("2")
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sentinel {} did not see the replica and the other sentinels: {reply}",
                    s.port
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Sentinels {
            primary,
            replica,
            sentinels,
            _dir: guard,
        }
    }

    fn url(&self) -> String {
        let mut url = format!(
            "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName={SERVICE}",
            self.sentinels[0].port
        );
        for s in &self.sentinels[1..] {
            url.push_str(&format!("&node=127.0.0.1:{}", s.port));
        }
        url
    }

    /// The master's port as the first sentinel that answers reports it.
    fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let r = redis_cli(s.port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE]).ok()?;
            r.lines().nth(1)?.trim().parse().ok()
        })
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for s in &mut self.sentinels {
            s.kill();
        }
        self.primary.kill();
        self.replica.kill();
    }
}

fn node_config(s: &Sentinels, id: &str) -> herald::config::Config {
    let mut c = config_from_toml(None, id, DURABLE);
    c.redis_url = Some(s.url());
    c
}

/// A publish on one node reaches a WebSocket subscriber on the other (plain channel).
async fn delivers_across(from: std::net::SocketAddr, to: std::net::SocketAddr, tag: &str) {
    let mut c = Client::connect(to).await;
    c.subscribe("plain").await;
    let (status, body) = publish_http(from, json!({"channel": "plain", "data": tag})).await;
    assert_eq!(status, 200, "{body}");
    let m = c
        .next_message(WAIT)
        .await
        .expect("the publish across nodes");
    assert_eq!(m["data"], tag);
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_find_the_primary_through_the_sentinels() {
    let s = Sentinels::start();
    let a = start(node_config(&s, "a")).await;
    let b = start(node_config(&s, "b")).await;
    delivers_across(a.addr, b.addr, "a-to-b").await;
    delivers_across(b.addr, a.addr, "b-to-a").await;
    // They write to the primary: the replica refuses writes.
    let (status, _) = publish_http(a.addr, json!({"channel": "news:x", "data": 1})).await;
    assert_eq!(status, 200);
    let keys = redis_cli(s.primary.port, &["DBSIZE"]).unwrap();
    assert_ne!(keys.trim(), "0", "nothing written to the primary");
}

/// What one subscriber saw: (epoch, offset, data) of each message.
type Seen = Vec<(String, u64, i64)>;

/// Reads `c` until it has seen offset `last` or is closed; Some(code) when closed.
async fn read_until(c: &mut Client, last: u64, seen: &mut Seen) -> Option<Value> {
    while seen.last().is_none_or(|m| m.1 < last) {
        let f = c.next_frame(WAIT).await?;
        match f["type"].as_str() {
            Some("message") => seen.push((
                f["epoch"].as_str().unwrap().into(),
                f["offset"].as_u64().unwrap(),
                f["data"].as_i64().unwrap(),
            )),
            Some("closed") => return Some(f["code"].clone()),
            _ => {}
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_loses_nothing_on_durable_channels() {
    let mut s = Sentinels::start();
    let a = start(node_config(&s, "a")).await;
    let b = start(node_config(&s, "b")).await;
    assert_eq!(s.master_port(), Some(s.primary.port));
    let mut subs = Vec::new();
    let mut epoch = Value::Null;
    for node in [&a, &b] {
        for _ in 0..3 {
            let mut c = Client::connect(node.addr).await;
            epoch = c.subscribe("news:f").await["epoch"].clone();
            subs.push((node.addr, c));
        }
    }
    let epoch = epoch.as_str().unwrap().to_string();

    // A publisher on node a: one publish after the other, a 503 retried.
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = retrying_publisher(
        a.addr,
        "news:f".into(),
        acked.clone(),
        stop.clone(),
        FAILOVER,
    );
    while acked.load(Ordering::Relaxed) < 30 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = acked.load(Ordering::Relaxed);
    let killed = Instant::now();
    s.primary.kill();

    // Both nodes go unready, then ready again once on the promoted replica.
    let back = tokio::join!(
        ready_again(a.addr, killed, FAILOVER),
        ready_again(b.addr, killed, FAILOVER)
    );
    let promoted = s.master_port();
    assert_eq!(
        promoted,
        Some(s.replica.port),
        "the replica was not promoted"
    );
    // The first publish taken after the kill.
    while acked.load(Ordering::Relaxed) <= before {
        assert!(
            killed.elapsed() < FAILOVER,
            "no publish taken after the kill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let publishing_again = killed.elapsed();
    while acked.load(Ordering::Relaxed) < before + 30 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (taken, refused) = publisher.await.unwrap();

    // Every publish taken once, in one order, in the subscribers' epoch.
    let n = taken.len() as u64;
    for (k, (i, e, off)) in taken.iter().enumerate() {
        assert_eq!(*i, k as i64 + 1);
        assert_eq!(*e, epoch, "publish {i} in another epoch: history lost");
        assert_eq!(*off, k as u64 + 1, "publish {i} at offset {off}");
    }

    // Every subscriber: every offset once and in order, directly or by `recover`.
    let mut closed_4008 = 0;
    for (k, (addr, c)) in subs.iter_mut().enumerate() {
        let mut seen = Seen::new();
        if let Some(code) = read_until(c, n, &mut seen).await {
            assert_eq!(code, json!(4008), "subscriber {k} closed with {code}");
            closed_4008 += 1;
            let from = seen.last().map_or(0, |m| m.1);
            let mut again = Client::connect(*addr).await;
            let r = again
                .request(json!({"op": "subscribe", "channel": "news:f", "recover": {"epoch": epoch, "offset": from}}))
                .await;
            assert_eq!(r["result"]["recovered"], true, "subscriber {k}: {r}");
            let closed = read_until(&mut again, n, &mut seen).await;
            assert!(closed.is_none(), "subscriber {k} closed again: {closed:?}");
        }
        let want: Seen = taken
            .iter()
            .map(|(i, e, off)| (e.clone(), *off, *i))
            .collect();
        assert_eq!(seen, want, "subscriber {k}: lost, duplicated or reordered");
        assert!(
            c.next_message(Duration::from_millis(200)).await.is_none(),
            "subscriber {k}: a duplicate after offset {n}"
        );
    }

    // Each node reconnected (a new generation: subscribed again) and still delivers
    // across nodes on the new primary.
    for node in [&a, &b] {
        assert_backplane_reconnected(node.addr).await;
    }
    delivers_across(a.addr, b.addr, "after").await;
    delivers_across(b.addr, a.addr, "after").await;
    println!(
        "sentinel failover: primary killed after {before} publishes; nodes ready again after \
         {:?} and {:?}; first publish taken after {publishing_again:?}; {n} publishes taken, \
         {refused} answers 503 retried; 6 subscribers: 0 lost, 0 duplicated, {closed_4008} \
         closed with 4008 and recovered",
        back.0, back.1
    );
}
