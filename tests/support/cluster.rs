//! A local Redis Cluster for tests: three primaries and three replicas, each a
//! `redis-server --cluster-enabled yes` child process on a free port whose bus port
//! (+10000) is free too, joined by `redis-cli --cluster create … --cluster-replicas 1`.
//! Everything is killed (SIGKILL) and its directory removed on drop.
//! [`RedisCluster::start_with`] starts one with more server arguments and, with
//! [`ClusterOptions::tls`], listening on TLS only (every `redis-cli` call of the
//! cluster then carries [`ClusterOptions::cli_args`]).
//!
//! Beside starting it: which primary owns a slot, killing a server, and moving a slot
//! (with its keys) from one primary to another the way `redis-cli --cluster reshard`
//! does, so that tests can fail over and migrate under load.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{WAIT, free_port, try_run_bounded};

/// How long one `redis-cli` call may take.
const CLI_LIMIT: Duration = Duration::from_secs(5);
/// How long the cluster may take to agree after `--cluster create` or a failover.
const SETTLE: Duration = Duration::from_secs(30);
/// `cluster-node-timeout`: how long a primary may be silent before its replica takes
/// over (the failover itself follows within about twice this).
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// One `redis-server` of the cluster.
pub struct ClusterServer {
    pub port: u16,
    child: Option<Child>,
}

impl ClusterServer {
    /// SIGKILL: no goodbye to clients or to the other servers.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A primary as a running server sees it.
pub struct Primary {
    pub port: u16,
    pub id: String,
    /// Slot ranges, inclusive.
    pub slots: Vec<(u16, u16)>,
}

impl Primary {
    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }
}

/// How the servers of [`RedisCluster::start_with`] run, beyond the defaults of
/// [`RedisCluster::start`] (which is `start_with(ClusterOptions::default())`).
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// Every server listens on TLS only, on its port (`--port 0 --tls-port P`), with
    /// the cluster bus (P + 10000) and replication over TLS too (`--tls-cluster yes
    /// --tls-replication yes`, so the servers announce their TLS port to each other
    /// and to clients); [`RedisCluster::url`] is then `rediss-cluster://`. The
    /// certificates go in `server_args`, `redis-cli`'s side in `cli_args`.
    pub tls: bool,
    /// More `redis-server` arguments, after the defaults (`--tls-cert-file …`).
    pub server_args: Vec<OsString>,
    /// `redis-cli` arguments put before every command the cluster runs (`--tls
    /// --cacert …`).
    pub cli_args: Vec<OsString>,
}

pub struct RedisCluster {
    pub servers: Vec<ClusterServer>,
    dir: PathBuf,
    options: ClusterOptions,
}

/// `redis-cli -p port args…` on loopback: its standard output, or why it failed.
pub fn cli_on(port: u16, args: &[&str]) -> Result<String, String> {
    cli_on_with(port, &[], args)
}

/// `redis-cli cli_args… -p port args…` on loopback (`cli_args`: e.g. `--tls --cacert
/// …`): its standard output, or why it failed.
pub fn cli_on_with(port: u16, cli_args: &[OsString], args: &[&str]) -> Result<String, String> {
    let out = try_run_bounded(
        Command::new("redis-cli")
            .args(cli_args)
            .args(["-p", &port.to_string()])
            .args(args),
        CLI_LIMIT,
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A port whose cluster bus port (+10000) is free as well.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisCluster {
    /// Starts six servers and joins them into 3 primaries + 3 replicas; returns once
    /// every server reports `cluster_state:ok` and every replica is in sync.
    pub fn start() -> RedisCluster {
        RedisCluster::start_with(ClusterOptions::default())
    }

    /// [`RedisCluster::start`] with `options` (TLS only, more server arguments).
    pub fn start_with(options: ClusterOptions) -> RedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "herald-test-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut cluster = RedisCluster {
            servers: Vec::new(),
            dir,
            options,
        };
        for _ in 0..6 {
            let server = cluster.spawn_server();
            cluster.servers.push(server);
        }
        let addrs: Vec<String> = cluster
            .servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let out = try_run_bounded(
            Command::new("redis-cli")
                .args(&cluster.options.cli_args)
                .args(["--cluster", "create"])
                .args(&addrs)
                .args(["--cluster-replicas", "1", "--cluster-yes"]),
            SETTLE,
        )
        .unwrap_or_else(|e| panic!("redis-cli --cluster create failed: {e}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_settled();
        cluster
    }

    fn spawn_server(&self) -> ClusterServer {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = free_cluster_port();
            let d = self.dir.join(port.to_string());
            std::fs::create_dir_all(&d).expect("a server directory");
            let mut server = Command::new("redis-server");
            if self.options.tls {
                server
                    .args(["--port", "0", "--tls-port", &port.to_string()])
                    .args(["--tls-cluster", "yes", "--tls-replication", "yes"]);
            } else {
                server.args(["--port", &port.to_string()]);
            }
            let mut child = server
                .args(["--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                // A replica syncs at once instead of after 5 s: one that has not synced
                // yet is not promoted when its primary dies.
                .args(["--repl-diskless-sync-delay", "0"])
                .arg("--dir")
                .arg(&d)
                .arg("--logfile")
                .arg(d.join("redis.log"))
                .args(&self.options.server_args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("redis-server could not be started ({e}); apt-get install redis-server")
                });
            let pid = format!("process_id:{}", child.id());
            let deadline = Instant::now() + WAIT;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    failures.push(format!("redis-server on {port} exited with {status}"));
                    break;
                }
                let info = self.cli_at(port, &["INFO", "server"]).unwrap_or_default();
                if info.lines().any(|l| l.trim() == pid) {
                    return ClusterServer {
                        port,
                        child: Some(child),
                    };
                }
                if !info.trim().is_empty() || Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    failures.push(format!("redis-server on {port} did not answer as itself"));
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("a cluster server did not start: {failures:#?}");
    }

    /// Waits until every running server reports `cluster_state:ok`, every slot has a
    /// primary that is running, and every replica whose primary runs is in sync.
    pub fn wait_settled(&self) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let ok = self.running_ports().iter().all(|p| {
                let state_ok = self
                    .cli_at(*p, &["CLUSTER", "INFO"])
                    .map(|i| i.contains("cluster_state:ok"))
                    .unwrap_or(false);
                let repl = self
                    .cli_at(*p, &["INFO", "replication"])
                    .unwrap_or_default();
                let synced = repl.contains("role:master")
                    || repl.contains("master_link_status:up")
                    || !self.primary_of_replica_runs(&repl);
                state_ok && synced
            }) && self.primaries().len() == 3;
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not settle within {SETTLE:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the primary named in a replica's `INFO replication` is running (a
    /// replica of a killed primary never syncs again).
    fn primary_of_replica_runs(&self, repl: &str) -> bool {
        repl.lines()
            .find_map(|l| l.trim().strip_prefix("master_port:"))
            .and_then(|p| p.parse::<u16>().ok())
            .is_some_and(|p| self.running_ports().contains(&p))
    }

    pub fn running_ports(&self) -> Vec<u16> {
        self.servers
            .iter()
            .filter(|s| s.is_running())
            .map(|s| s.port)
            .collect()
    }

    /// `redis-cluster://…?node=…` naming every server (docs/CONFIG.md);
    /// `rediss-cluster://…` when the servers listen on TLS.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls {
            "rediss-cluster"
        } else {
            "redis-cluster"
        };
        let mut ports = self.servers.iter().map(|s| s.port);
        let first = ports.next().expect("servers");
        let rest: Vec<String> = ports.map(|p| format!("node=127.0.0.1:{p}")).collect();
        format!("{scheme}://127.0.0.1:{first}?{}", rest.join("&"))
    }

    /// `redis-cli` against the first running server.
    pub fn cli(&self, args: &[&str]) -> String {
        let port = self.running_ports()[0];
        self.cli_at(port, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `redis-cli` against the server on `port`, with the cluster's `redis-cli`
    /// arguments ([`cli_on`] for a cluster started without options).
    pub fn cli_at(&self, port: u16, args: &[&str]) -> Result<String, String> {
        cli_on_with(port, &self.options.cli_args, args)
    }

    /// The slot of a key.
    pub fn keyslot(&self, key: &str) -> u16 {
        self.cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number")
    }

    /// The running primaries that serve slots, as a running server sees them.
    pub fn primaries(&self) -> Vec<Primary> {
        let Some(port) = self.running_ports().first().copied() else {
            return Vec::new();
        };
        let nodes = self.cli_at(port, &["CLUSTER", "NODES"]).unwrap_or_default();
        let running = self.running_ports();
        let mut out = Vec::new();
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let Some(p) = f[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok())
            else {
                continue;
            };
            if !running.contains(&p) {
                continue;
            }
            let ranges: Vec<(u16, u16)> = f[8..]
                .iter()
                .filter(|r| !r.starts_with('['))
                .filter_map(|r| match r.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => r.parse().ok().map(|s| (s, s)),
                })
                .collect();
            if !ranges.is_empty() {
                out.push(Primary {
                    port: p,
                    id: f[0].to_string(),
                    slots: ranges,
                });
            }
        }
        out
    }

    /// The port of the primary that owns `slot`.
    pub fn owner_of(&self, slot: u16) -> u16 {
        self.primaries()
            .into_iter()
            .find(|p| p.owns(slot))
            .map(|p| p.port)
            .unwrap_or_else(|| panic!("no primary owns slot {slot}"))
    }

    /// `n` names `make(i)` whose key (`key_of(name)`) lies in a slot of the primary on
    /// `port`.
    pub fn names_on(
        &self,
        port: u16,
        n: usize,
        make: impl Fn(usize) -> String,
        key_of: impl Fn(&str) -> String,
    ) -> Vec<String> {
        let primary = self
            .primaries()
            .into_iter()
            .find(|p| p.port == port)
            .expect("a primary");
        (0..10_000)
            .map(make)
            .filter(|name| primary.owns(self.keyslot(&key_of(name))))
            .take(n)
            .collect()
    }

    /// `n` Herald channel names `<stem><i>` whose pub/sub channel the primary on `port`
    /// serves.
    pub fn channels_on(&self, port: u16, stem: &str, n: usize) -> Vec<String> {
        self.names_on(
            port,
            n,
            |i| format!("{stem}{i}"),
            |c| format!("herald:{{{c}}}:ch"),
        )
    }

    /// Kills the server on `port` (SIGKILL).
    pub fn kill(&mut self, port: u16) {
        if let Some(s) = self.servers.iter_mut().find(|s| s.port == port) {
            s.kill();
        }
    }

    /// Moves `slot` and its keys to the primary on `to`, as `redis-cli --cluster
    /// reshard` does: IMPORTING/MIGRATING, MIGRATE of every key, then SETSLOT NODE on
    /// both and on every other primary.
    pub fn migrate_slot(&self, slot: u16, to: u16) {
        let from = self.owner_of(slot);
        assert_ne!(from, to, "slot {slot} is already on {to}");
        let primaries = self.primaries();
        let id = |port: u16| {
            primaries
                .iter()
                .find(|p| p.port == port)
                .map(|p| p.id.clone())
                .unwrap_or_else(|| panic!("{port} is not a primary"))
        };
        let (from_id, to_id) = (id(from), id(to));
        let s = slot.to_string();
        let ok = |port: u16, args: &[&str]| {
            let out = self.cli_at(port, args).unwrap_or_else(|e| panic!("{e}"));
            assert!(out.trim() == "OK", "{args:?} on {port}: {out}");
        };
        ok(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]);
        ok(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]);
        loop {
            let keys = self
                .cli_at(from, &["CLUSTER", "GETKEYSINSLOT", &s, "100"])
                .unwrap_or_else(|e| panic!("{e}"));
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            let out = self.cli_at(from, &args).unwrap_or_else(|e| panic!("{e}"));
            assert!(out.trim() == "OK", "MIGRATE: {out}");
        }
        ok(to, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
        ok(from, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
        for p in &primaries {
            if p.port != from && p.port != to {
                let _ = self.cli_at(p.port, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
            }
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            s.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
