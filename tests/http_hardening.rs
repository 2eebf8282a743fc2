//! The HTTP side of a node under hostile or careless clients (issue 26): connections
//! that never finish their request headers, more plain HTTP connections than the node
//! allows, file names the file system refuses, and the headers every static file
//! carries (no sniffing, no framing, a content security policy, revalidated caching).

mod support;

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use herald::config::Config;
use herald::server::Node;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// A node with a short header timeout and a small cap on plain HTTP connections.
fn hardened(header_read_timeout: &str, max_http_connections: usize) -> Config {
    let mut c = config_from_toml(
        None,
        "hh",
        &format!(
            "[server]\nheader_read_timeout = \"{header_read_timeout}\"\n\
             [limits]\nmax_http_connections = {max_http_connections}\n"
        ),
    );
    c.static_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/static").into();
    c
}

/// A metric of the node, read in-process (a `GET /metrics` would itself hold one of
/// the HTTP connections being counted).
fn node_metric(node: &Node, name: &str) -> f64 {
    metric(&node.state.metrics.render(), name).unwrap_or(f64::NAN)
}

/// Reads until the peer closes the connection (EOF or reset) or `limit` passes.
/// Returns what was read and when it closed (None: still open after `limit`).
async fn read_until_closed(tcp: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Instant>) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return (got, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(Instant::now())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A connection closed by the 1 s header timeout of these tests: not early, and well
/// before anything else would have closed it.
fn about_the_header_timeout(closed_after: Duration) {
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(4),
        "closed after {closed_after:?}; the header timeout is 1 s"
    );
}

/// The node counts the closed connection as one header timeout, and no longer as open.
async fn counted_as_one_header_timeout(node: &Node) {
    assert!(
        eventually(WAIT, || async {
            node_metric(node, "herald_http_connections") == 0.0
        })
        .await,
        "herald_http_connections back to 0"
    );
    assert_eq!(node_metric(node, "herald_http_header_timeouts_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_that_never_end_are_cut_off_after_the_header_timeout() {
    let node = start(hardened("1s", 64)).await;
    let tcp = TcpStream::connect(node.addr).await.unwrap();
    let (mut rx, mut tx) = tcp.into_split();
    let opened = Instant::now();
    // Slow loris: a request line, then one more header line now and then, never the
    // blank line that ends the headers.
    let trickle = tokio::spawn(async move {
        if tx
            .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .is_err()
        {
            return;
        }
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if tx
                .write_all(format!("x-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(8), rx.read(&mut buf)).await {
            Err(_) => break None,
            Ok(Ok(0)) | Ok(Err(_)) => break Some(opened.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    };
    trickle.abort();
    let closed = closed.expect("a slow-loris connection is still open after 8 s");
    about_the_header_timeout(closed);
    let answer = String::from_utf8_lossy(&got);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "a header timeout is answered with 408 or nothing: {answer}"
    );
    counted_as_one_header_timeout(&node).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let node = start(hardened("1s", 64)).await;
    let opened = Instant::now();
    let mut idle = TcpStream::connect(node.addr).await.unwrap();
    let (got, closed) = read_until_closed(&mut idle, Duration::from_secs(8)).await;
    let closed = closed.expect("an idle connection is still open after 8 s") - opened;
    about_the_header_timeout(closed);
    assert!(got.is_empty(), "nothing is answered to nothing");
    counted_as_one_header_timeout(&node).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_idle_after_its_answer_is_closed_after_the_header_timeout() {
    let node = start(hardened("1s", 64)).await;
    let mut tcp = TcpStream::connect(node.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let answered = Instant::now();
    let (_, closed) = read_until_closed(&mut tcp, Duration::from_secs(8)).await;
    let idle = closed.expect("an idle keep-alive connection is still open after 8 s") - answered;
    about_the_header_timeout(idle);
    counted_as_one_header_timeout(&node).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_the_cap_new_connections_are_closed_at_once_until_others_close() {
    let node = start(hardened("10s", 3)).await;
    let addr = node.addr;
    // The readiness probe's connection closes first.
    assert!(
        eventually(WAIT, || async {
            node_metric(&node, "herald_http_connections") == 0.0
        })
        .await
    );
    // Three idle connections fill the node's plain HTTP connections.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A fourth is accepted by the kernel, then reset by the node at once (so quickly,
    // at times, that the reset is what `connect` reports).
    if let Ok(mut over) = TcpStream::connect(addr).await {
        let _ = over
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let (got, closed) = read_until_closed(&mut over, Duration::from_secs(3)).await;
        assert!(closed.is_some(), "a connection above the cap is still open");
        assert!(got.is_empty(), "nothing is served above the cap: {got:?}");
    }
    // So is a real client's request.
    let refused = http().get(format!("http://{addr}/healthz")).send().await;
    assert!(refused.is_err(), "served above the cap: {refused:?}");
    // The idle ones still are open.
    for c in &idle {
        let mut b = [0u8; 1];
        assert!(
            matches!(c.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "an idle connection under the cap was closed"
        );
    }
    assert_eq!(node_metric(&node, "herald_http_connections"), 3.0);
    assert!(node_metric(&node, "herald_http_connections_refused_total") >= 2.0);

    // Once they close, a real client is served again.
    drop(idle);
    assert!(
        eventually(WAIT, || async {
            matches!(
                http().get(format!("http://{addr}/healthz")).send().await,
                Ok(r) if r.status() == 200
            )
        })
        .await,
        "not served after the idle connections closed"
    );
    assert!(
        eventually(WAIT, || async {
            node_metric(&node, "herald_http_connections") == 0.0
        })
        .await,
        "herald_http_connections back to 0: {}",
        node_metric(&node, "herald_http_connections")
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sessions_leave_the_plain_http_count_at_their_upgrade() {
    let node = start(hardened("10s", 2)).await;
    // The readiness probe's connection closes first.
    assert!(
        eventually(WAIT, || async {
            node_metric(&node, "herald_http_connections") == 0.0
        })
        .await
    );
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Client::connect(node.addr).await);
    }
    assert!(
        eventually(WAIT, || async {
            node_metric(&node, "herald_http_connections") == 0.0
        })
        .await,
        "upgraded connections still counted as plain HTTP"
    );
    assert_eq!(node_metric(&node, "herald_connections"), 4.0);
    assert_eq!(
        node_metric(&node, "herald_http_connections_refused_total"),
        0.0
    );
    for c in clients {
        c.close().await;
    }
    node.stop().await;
}

/// ERROR events logged in this test binary (target: message), for the tests that
/// assert a request logs none.
fn error_events() -> &'static Mutex<Vec<String>> {
    static EVENTS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    EVENTS.get_or_init(|| {
        let _ = tracing_subscriber::registry().with(RecordErrors).try_init();
        Mutex::new(Vec::new())
    })
}

struct RecordErrors;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RecordErrors {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() != tracing::Level::ERROR {
            return;
        }
        struct Text(String);
        impl Visit for Text {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={value:?}", field.name()));
            }
        }
        let mut text = Text(event.metadata().target().to_string());
        event.record(&mut text);
        if let Ok(mut events) = error_events().lock() {
            events.push(text.0);
        }
    }
}

async fn status_of(addr: SocketAddr, path: &str) -> u16 {
    http()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_names_the_file_system_refuses_are_not_found_and_log_no_error() {
    let errors = error_events();
    let node = start(config(None, "files")).await;
    let a = node.addr;
    let long_segment = format!("/{}", "a".repeat(300));
    assert_eq!(status_of(a, &long_segment).await, 404, "a 300-byte name");
    assert_eq!(
        status_of(a, &format!("/x{long_segment}.js")).await,
        404,
        "a 300-byte name below a directory that does not exist"
    );
    assert_eq!(
        status_of(a, &"/abcdefgh".repeat(600)).await,
        404,
        "a path longer than PATH_MAX"
    );
    assert_eq!(
        status_of(a, "/herald.js/x").await,
        404,
        "a file as a directory"
    );
    assert_eq!(status_of(a, "/herald.js").await, 200);
    let logged = errors.lock().unwrap().clone();
    assert!(logged.is_empty(), "errors logged: {logged:?}");
    node.stop().await;
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or("<not text>"))
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_carry_security_and_cache_headers() {
    let node = start(config(None, "headers")).await;
    let a = node.addr;

    let page = http().get(format!("http://{a}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    assert_eq!(header(&page, "x-frame-options"), "DENY");
    let csp = header(&page, "content-security-policy").to_string();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    ] {
        assert!(csp.contains(directive), "CSP without {directive}: {csp:?}");
    }

    // The client library: cached, but revalidated on every use, so a deploy reaches
    // every browser at its next page load.
    let js = http()
        .get(format!("http://{a}/herald.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert_eq!(header(&js, "x-content-type-options"), "nosniff");
    assert_eq!(header(&js, "cache-control"), "no-cache");
    let etag = header(&js, "etag").to_string();
    assert!(!etag.is_empty(), "herald.js without an ETag");
    let again = http()
        .get(format!("http://{a}/herald.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304, "revalidation with the ETag");
    assert_eq!(header(&again, "cache-control"), "no-cache");

    // Not only files: every answer of the node says nosniff.
    let missing = http()
        .get(format!("http://{a}/no-such-file"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(header(&missing, "x-content-type-options"), "nosniff");
    let api = http()
        .get(format!("http://{a}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&api, "x-content-type-options"), "nosniff");
    node.stop().await;
}
