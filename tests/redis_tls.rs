//! Redis over TLS (issue 20, "Managed Redis"): `rediss://` with the `[redis]` TLS keys
//! (docs/CONFIG.md "Redis over TLS").
//!
//! Each test makes its own certificates with `openssl` in a temporary directory (a CA,
//! a server certificate for 127.0.0.1 and localhost, a client certificate, and another
//! CA that signed nothing) and starts its own `redis-server` listening on TLS only, on
//! a free port, with an ACL user `herald`. Cases:
//! - with `redis.tls_ca_file` (and the ACL user and password in the URL) nodes become
//!   ready and a publish on one reaches a WebSocket subscriber on the other;
//! - with the wrong CA, or the wrong password, a node stays unready (503) and logs the
//!   reason, but not at every reconnection attempt;
//! - mutual TLS: without a client certificate a node is not ready, with one it is and
//!   delivers;
//! - a TLS file that is missing or not PEM stops the `herald` binary with exit code 2
//!   and an error naming the key;
//! - a Redis Cluster on TLS only (3 primaries + 3 replicas, `tests/support/cluster.rs`,
//!   bus and replication on TLS too, client certificates required, a server
//!   certificate naming a host, not the address): nodes on `rediss-cluster://` with
//!   the CA file, a client certificate and `redis.tls_server_name` become ready, use
//!   sharded pub/sub, deliver across nodes on channels of every shard and take durable
//!   publishes; with the wrong CA, or without the client certificate, a node stays
//!   unready.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use herald::config::{Config, RedisTlsConfig};
use serde_json::json;
use support::cluster::{ClusterOptions, RedisCluster};
use support::*;

/// How long one `openssl` command may take (key generation is milliseconds).
const OPENSSL_LIMIT: Duration = Duration::from_secs(20);
/// The ACL user of every test Redis, and its password.
const USER: &str = "herald";
const PASSWORD: &str = "s3cret-pw";

/// Captured log lines that contain every one of `needles`.
fn lines_with(logs: &Mutex<Vec<u8>>, needles: &[&str]) -> Vec<String> {
    let text = captured_text(logs);
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(String::from)
        .collect()
}

/// A temporary directory removed at the end of the test.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("herald-test-tls-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The certificates of one test, made with `openssl`.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn generate() -> Pki {
        let pki = Pki {
            dir: TempDir::new("pki"),
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        for (name, cn) in [("ca", "herald test CA"), ("other-ca", "unrelated CA")] {
            pki.openssl(
                &[&["req", "-x509", "-nodes", "-days", "2"][..], &ec[..]].concat(),
                &[
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.pem"),
                    "-subj",
                    &format!("/CN={cn}"),
                ],
            );
        }
        pki.signed(
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        pki.signed("client", "extendedKeyUsage=clientAuth\n");
        pki
    }

    /// A key and a certificate `name` signed by the CA, with the extensions `ext`.
    fn signed(&self, name: &str, ext: &str) {
        let ext_file = format!("{name}.ext");
        std::fs::write(
            self.dir.path(&ext_file),
            format!("basicConstraints=CA:FALSE\n{ext}"),
        )
        .expect("write the extensions file");
        self.openssl(
            &[
                "req",
                "-nodes",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ],
            &[
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        self.openssl(
            &[
                "x509", "-req", "-days", "2", "-CA", "ca.pem", "-CAkey", "ca.key",
            ],
            &[
                "-CAcreateserial",
                "-in",
                &format!("{name}.csr"),
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                &ext_file,
            ],
        );
    }

    /// Runs `openssl` in the directory, bounded; panics with its output on failure.
    fn openssl(&self, args: &[&str], more: &[&str]) {
        let mut cmd = Command::new("openssl");
        cmd.current_dir(&self.dir.0).args(args).args(more);
        let what = describe(&cmd);
        let out = try_run_bounded(&mut cmd, OPENSSL_LIMIT).unwrap_or_else(|e| {
            panic!("making the test certificates: {e} (is openssl installed?)")
        });
        assert!(
            out.status.success(),
            "making the test certificates: `{what}` failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path(name)
    }
}

/// A `redis-server` listening on TLS only (`--port 0`), on a free port, owned by the
/// test and killed when dropped.
struct TlsRedis {
    port: u16,
    child: Option<Child>,
    /// The certificates' directory (the client's, for `redis-cli`).
    pki: PathBuf,
    _dir: TempDir,
}

impl TlsRedis {
    /// `auth_clients`: whether the server requires a client certificate.
    fn start(pki: &Pki, auth_clients: bool) -> TlsRedis {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start(pki, auth_clients) {
                Ok(r) => return r,
                Err(e) => failures.push(e),
            }
        }
        panic!("redis-server with TLS did not start on 3 free ports: {failures:#?}");
    }

    fn try_start(pki: &Pki, auth_clients: bool) -> Result<TlsRedis, String> {
        let port = free_port();
        let dir = TempDir::new("redis");
        let log = dir.path("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(pki.file("server.pem"))
            .arg("--tls-key-file")
            .arg(pki.file("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(pki.file("ca.pem"))
            .args([
                "--tls-auth-clients",
                if auth_clients { "yes" } else { "no" },
            ])
            .args([
                "--user",
                USER,
                "on",
                &format!(">{PASSWORD}"),
                "~*",
                "&*",
                "+@all",
            ])
            .arg("--dir")
            .arg(&dir.0)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("redis-server could not be started ({e}); apt-get install redis-server")
            })?;
        let mut redis = TlsRedis {
            port,
            child: Some(child),
            pki: pki.dir.0.clone(),
            _dir: dir,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(Ok(Some(status))) = redis.child.as_mut().map(Child::try_wait) {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!(
                    "redis-server on TLS port {port} exited with {status}: {log}"
                ));
            }
            if redis.ping().is_ok_and(|o| o.trim() == "PONG") {
                return Ok(redis);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "redis-server on TLS port {port} did not answer within {WAIT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `PING` over TLS with the test's CA and client certificate, as the ACL user.
    fn ping(&self) -> Result<String, String> {
        self.cli(&["PING"])
    }

    /// `redis-cli` over TLS with the test's CA and client certificate, as the ACL
    /// user; its output.
    fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = try_run_bounded(
            Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--tls"])
                .arg("--cacert")
                .arg(self.pki.join("ca.pem"))
                .arg("--cert")
                .arg(self.pki.join("client.pem"))
                .arg("--key")
                .arg(self.pki.join("client.key"))
                .args(["--user", USER, "--pass", PASSWORD, "--no-auth-warning"])
                .args(args),
            Duration::from_secs(2),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn url(&self, password: &str) -> String {
        format!("rediss://{USER}:{password}@127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A node's configuration for `redis` over TLS: the CA file, the client certificate
/// and key (mutual TLS) and the password of the URL.
fn tls_config(
    redis: &TlsRedis,
    node_id: &str,
    ca_file: PathBuf,
    client: Option<(PathBuf, PathBuf)>,
    password: &str,
) -> Config {
    let mut c = config(None, node_id);
    c.redis_url = Some(redis.url(password));
    let (cert_file, key_file) = client.unzip();
    c.redis_tls = RedisTlsConfig {
        ca_file: Some(ca_file),
        cert_file,
        key_file,
        server_name: None,
    };
    c
}

/// A node started without waiting for it to be ready.
async fn start_unready(config: Config) -> herald::server::Node {
    tokio::time::timeout(WAIT, herald::server::Node::start(config))
        .await
        .unwrap_or_else(|_| panic!("Node::start did not return within {WAIT:?}"))
        .expect("node starts")
}

/// Asserts that `addr` answers `/readyz` with 503 throughout `period`.
async fn stays_unready(addr: std::net::SocketAddr, period: Duration, what: &str) {
    let deadline = Instant::now() + period;
    while Instant::now() < deadline {
        assert_eq!(ready_status(addr).await, 503, "{what}: /readyz");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A publish on `from` reaches a WebSocket subscriber on `to` (through Redis).
async fn delivers(from: std::net::SocketAddr, to: std::net::SocketAddr, channel: &str) {
    let mut sub = Client::connect(to).await;
    sub.subscribe(channel).await;
    let (status, body) = publish_http(from, json!({"channel": channel, "data": "over tls"})).await;
    assert_eq!(status, 200, "publish: {body}");
    let m = sub
        .next_message(WAIT)
        .await
        .unwrap_or_else(|| panic!("no message on {channel} within {WAIT:?}"));
    assert_eq!(m["data"], "over tls", "{m}");
}

#[tokio::test]
async fn a_node_trusting_the_ca_file_is_ready_and_delivers() {
    let pki = Pki::generate();
    let redis = TlsRedis::start(&pki, false);
    let a = start(tls_config(
        &redis,
        "tls-a",
        pki.file("ca.pem"),
        None,
        PASSWORD,
    ))
    .await;
    // The name checked in the server's certificate may differ from the URL's host.
    let mut b_config = tls_config(&redis, "tls-b", pki.file("ca.pem"), None, PASSWORD);
    b_config.redis_tls.server_name = Some("localhost".into());
    let b = start(b_config).await;
    delivers(b.addr, a.addr, "tls:news").await;
    delivers(a.addr, b.addr, "tls:back").await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_wrong_ca_or_password_leaves_the_node_unready_and_logs_rarely() {
    let logs = captured_logs();
    let pki = Pki::generate();
    let redis = TlsRedis::start(&pki, false);
    let wrong_ca = start_unready(tls_config(
        &redis,
        "tls-wrong-ca",
        pki.file("other-ca.pem"),
        None,
        PASSWORD,
    ))
    .await;
    let wrong_password = start_unready(tls_config(
        &redis,
        "tls-wrong-pw",
        pki.file("ca.pem"),
        None,
        "not-the-password",
    ))
    .await;
    // About five reconnection attempts each (100 ms doubling towards 5 s).
    let watch = Duration::from_secs(5);
    tokio::join!(
        stays_unready(wrong_ca.addr, watch, "wrong CA"),
        stays_unready(wrong_password.addr, watch, "wrong password"),
    );
    for (what, needle) in [
        ("wrong CA", "UnknownIssuer"),
        ("wrong password", "WRONGPASS"),
    ] {
        let lines = lines_with(&logs, &["redis connection error", needle]);
        assert!(
            (1..=2).contains(&lines.len()),
            "{what}: the reason is logged, but not at every attempt: {lines:#?}"
        );
    }
    // The password never reaches the logs.
    assert!(lines_with(&logs, &[PASSWORD]).is_empty());
    assert!(lines_with(&logs, &["not-the-password"]).is_empty());
    // The node keeps trying: once Redis accepts its password it becomes ready.
    let reply = redis
        .cli(&["ACL", "SETUSER", USER, ">not-the-password"])
        .unwrap_or_else(|e| panic!("ACL SETUSER: {e}"));
    assert_eq!(reply.trim(), "OK", "ACL SETUSER");
    wait_ready(wrong_password.addr).await;
    assert_eq!(ready_status(wrong_ca.addr).await, 503, "wrong CA: /readyz");
    tokio::join!(wrong_ca.stop(), wrong_password.stop());
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::generate();
    let redis = TlsRedis::start(&pki, true);
    let without = start_unready(tls_config(
        &redis,
        "tls-no-cert",
        pki.file("ca.pem"),
        None,
        PASSWORD,
    ))
    .await;
    let client = Some((pki.file("client.pem"), pki.file("client.key")));
    let with = start(tls_config(
        &redis,
        "tls-cert",
        pki.file("ca.pem"),
        client.clone(),
        PASSWORD,
    ))
    .await;
    let other = start(tls_config(
        &redis,
        "tls-cert-2",
        pki.file("ca.pem"),
        client,
        PASSWORD,
    ))
    .await;
    delivers(with.addr, other.addr, "mtls:news").await;
    stays_unready(
        without.addr,
        Duration::from_secs(2),
        "no client certificate",
    )
    .await;
    tokio::join!(without.stop(), with.stop(), other.stop());
}

#[test]
fn a_missing_or_non_pem_tls_file_stops_the_binary_with_exit_code_2() {
    let dir = TempDir::new("config");
    let junk = dir.path("junk.pem");
    std::fs::write(&junk, "this is not PEM\n").unwrap();
    let cases = [
        (
            format!(
                "tls_ca_file = \"{}\"\n",
                dir.path("missing-ca.pem").display()
            ),
            "redis.tls_ca_file",
        ),
        (
            format!("tls_ca_file = \"{}\"\n", junk.display()),
            "redis.tls_ca_file",
        ),
        (
            format!(
                "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
                junk.display(),
                junk.display()
            ),
            "redis.tls_cert_file",
        ),
    ];
    for (i, (keys, key)) in cases.iter().enumerate() {
        let file = dir.path(&format!("herald-{i}.toml"));
        // Port 1: nothing is ever contacted; the files are checked first.
        std::fs::write(
            &file,
            format!("[redis]\nurl = \"rediss://{USER}:{PASSWORD}@127.0.0.1:1\"\n{keys}"),
        )
        .unwrap();
        let out = run_bounded(
            Command::new(env!("CARGO_BIN_EXE_herald"))
                .args(["--listen", "127.0.0.1:0", "--config"])
                .arg(&file)
                .env("RUST_LOG", "warn"),
            WAIT,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{keys}: {stderr}");
        assert!(stderr.contains(key), "{keys}: stderr names {key}: {stderr}");
        assert!(
            !stderr.contains(PASSWORD),
            "{keys}: the password is not shown: {stderr}"
        );
    }
}

/// The name in the cluster servers' certificate, and the only one: not the address
/// clients connect to, so every node of the cluster must be checked against it.
const CLUSTER_NAME: &str = "redis.cluster.test";

/// The options of a cluster on TLS only, with the test's certificates (the server
/// certificate `cluster`, for [`CLUSTER_NAME`]): the server certificate for clients
/// and the other servers, the client certificate for the
/// servers' own outgoing connections (bus and replication), client certificates
/// required, and the ACL user of the other tests (the default user stays open for
/// `redis-cli --cluster` and replication).
fn tls_cluster_options(pki: &Pki) -> ClusterOptions {
    pki.signed(
        "cluster",
        &format!("subjectAltName=DNS:{CLUSTER_NAME}\nextendedKeyUsage=serverAuth\n"),
    );
    let file = |name: &str| pki.file(name).into_os_string();
    let mut server_args: Vec<std::ffi::OsString> = Vec::new();
    for (key, name) in [
        ("--tls-cert-file", "cluster.pem"),
        ("--tls-key-file", "cluster.key"),
        ("--tls-client-cert-file", "client.pem"),
        ("--tls-client-key-file", "client.key"),
        ("--tls-ca-cert-file", "ca.pem"),
    ] {
        server_args.extend([key.into(), file(name)]);
    }
    let acl = [
        "--tls-auth-clients",
        "yes",
        "--user",
        USER,
        "on",
        &format!(">{PASSWORD}"),
        "~*",
        "&*",
        "+@all",
    ];
    server_args.extend(acl.iter().map(Into::into));
    let mut cli_args: Vec<std::ffi::OsString> = vec!["--tls".into()];
    for (key, name) in [
        ("--cacert", "ca.pem"),
        ("--cert", "client.pem"),
        ("--key", "client.key"),
    ] {
        cli_args.extend([key.into(), file(name)]);
    }
    ClusterOptions {
        tls: true,
        server_args,
        cli_args,
    }
}

/// A node on the TLS cluster as the ACL user, trusting `ca`, with the client
/// certificate or not, checking [`CLUSTER_NAME`]; `news:*` is durable.
fn tls_cluster_config(
    cluster: &RedisCluster,
    pki: &Pki,
    node_id: &str,
    ca: &str,
    client_cert: bool,
) -> Config {
    let mut c = config_from_toml(
        None,
        node_id,
        "[namespaces.news]\nhistory_size = 100\nhistory_ttl = \"10m\"\n",
    );
    let url = cluster.url();
    assert!(url.starts_with("rediss-cluster://"), "{url}");
    c.redis_url = Some(url.replacen("://", &format!("://{USER}:{PASSWORD}@"), 1));
    c.redis_tls = RedisTlsConfig {
        ca_file: Some(pki.file(ca)),
        cert_file: client_cert.then(|| pki.file("client.pem")),
        key_file: client_cert.then(|| pki.file("client.key")),
        server_name: Some(CLUSTER_NAME.into()),
    };
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_is_sharded_and_delivers_on_every_shard() {
    let began = Instant::now();
    let logs = captured_logs();
    let pki = Pki::generate();
    let cluster = RedisCluster::start_with(tls_cluster_options(&pki));
    let started = began.elapsed();
    // TLS only: no server answers in plain text.
    for port in cluster.running_ports() {
        let plain = support::cluster::cli_on(port, &["PING"]).unwrap_or_default();
        assert_ne!(plain.trim(), "PONG", "plain-text PING answered on {port}");
    }
    let wrong_ca = start_unready(tls_cluster_config(
        &cluster,
        &pki,
        "tlsc-wrong-ca",
        "other-ca.pem",
        true,
    ))
    .await;
    let no_cert = start_unready(tls_cluster_config(
        &cluster,
        &pki,
        "tlsc-no-cert",
        "ca.pem",
        false,
    ))
    .await;
    // Ready: every server of the cluster, the ones named in the URL and the ones
    // discovered from it (all 127.0.0.1), is checked against the configured name,
    // the only one its certificate holds.
    let a = start(tls_cluster_config(&cluster, &pki, "tlsc-a", "ca.pem", true)).await;
    let b = start(tls_cluster_config(&cluster, &pki, "tlsc-b", "ca.pem", true)).await;
    for n in [&a, &b] {
        assert_eq!(
            metric_of(n.addr, "herald_backplane_sharded_pubsub").await,
            1.0,
            "sharded pub/sub on {}",
            n.addr
        );
    }

    // Two plain and one durable channel on every shard.
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    let mut plain = Vec::new();
    let mut durable = Vec::new();
    for p in &primaries {
        plain.extend(cluster.channels_on(p.port, "room", 2));
        durable.extend(cluster.channels_on(p.port, "news:", 1));
    }
    let (mut on_a, mut on_b) = (Client::connect(a.addr).await, Client::connect(b.addr).await);
    for ch in plain.iter().chain(&durable) {
        on_a.subscribe(ch).await;
        on_b.subscribe(ch).await;
    }
    // Each shard holds its own channels' sharded subscriptions, one per node.
    for p in &primaries {
        for ch in plain.iter().chain(&durable) {
            let key = format!("herald:{{{ch}}}:ch");
            let mine = p.owns(cluster.keyslot(&key));
            let reply = cluster
                .cli_at(p.port, &["PUBSUB", "SHARDNUMSUB", &key])
                .unwrap_or_else(|e| panic!("{e}"));
            let count = reply.lines().nth(1).map(str::trim).unwrap_or_default();
            assert_eq!(
                count,
                if mine { "2" } else { "0" },
                "{key} on {}: {reply}",
                p.port
            );
        }
    }
    // Plain: each channel published on one node reaches the subscriber on the other.
    for (i, ch) in plain.iter().enumerate() {
        let from = if i % 2 == 0 { a.addr } else { b.addr };
        let (st, body) = publish_http(from, json!({"channel": ch, "data": i})).await;
        assert_eq!(st, 200, "publish to {ch}: {body}");
    }
    for (who, c) in [("a", &mut on_a), ("b", &mut on_b)] {
        let got = c.messages(plain.len(), WAIT).await;
        let mut data: Vec<i64> = got.iter().map(|m| m["data"].as_i64().unwrap()).collect();
        data.sort();
        assert_eq!(
            data,
            (0..plain.len() as i64).collect::<Vec<_>>(),
            "on {who}"
        );
    }
    // Durable: taken at offset 1 on every shard, delivered with it on both nodes.
    for ch in &durable {
        let (st, body) = publish_http(a.addr, json!({"channel": ch, "data": "kept"})).await;
        assert_eq!(st, 200, "durable publish to {ch}: {body}");
        assert_eq!(body["offset"], 1, "{ch}: {body}");
        for c in [&mut on_a, &mut on_b] {
            let m = c
                .next_message(WAIT)
                .await
                .unwrap_or_else(|| panic!("no message on {ch} within {WAIT:?}"));
            assert_eq!(
                (&m["channel"], &m["offset"]),
                (&json!(ch), &json!(1)),
                "{m}"
            );
        }
    }

    // Meanwhile the other two kept failing: the wrong CA, the missing certificate.
    tokio::join!(
        stays_unready(wrong_ca.addr, Duration::from_secs(1), "wrong CA"),
        stays_unready(
            no_cert.addr,
            Duration::from_secs(1),
            "no client certificate"
        ),
    );
    for (what, needle) in [
        ("wrong CA", "UnknownIssuer"),
        ("no client certificate", "CertificateRequired"),
    ] {
        assert!(
            !lines_with(&logs, &["redis connection error", needle]).is_empty(),
            "{what}: the reason ({needle}) is logged"
        );
    }
    assert!(lines_with(&logs, &[PASSWORD]).is_empty());
    println!(
        "TLS cluster: started in {started:?}, the whole test took {:?}",
        began.elapsed()
    );
    on_a.close().await;
    on_b.close().await;
    tokio::join!(a.stop(), b.stop(), wrong_ca.stop(), no_cert.stop());
}
