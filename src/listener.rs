//! The HTTP listener: accepts TCP connections and serves each as HTTP/1.1 with
//! upgrades, until the node stops. It also bounds what a connection may cost before
//! it becomes a WebSocket session (which `limits.max_connections` counts): plain HTTP
//! connections are capped at `limits.max_http_connections`, and each must send its
//! request headers within `server.header_read_timeout` (docs/CONFIG.md).
//!
//! Herald runs its own accept loop rather than `axum::serve` because a WebSocket
//! session takes the raw `TcpStream` back from hyper after the upgrade (see
//! [`crate::ws::handshake`]), which works only when hyper serves the connection as
//! `TokioIo<TcpStream>` itself. What a request does is the router's business
//! ([`crate::server`]); this file owns sockets and connections only.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::{Counter, Gauge};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::connection::http_slot::HttpSlot;
use crate::metrics::HttpMetrics;

/// After a failed `accept` (typically the open-file limit), wait this long before the
/// next, rather than spinning on the error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long open HTTP connections get to finish their requests at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// While the cap holds, say so at most this often: a flood must not flood the log.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(60);

/// The configured bounds on plain HTTP connections.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Request headers must be complete within this; an idle connection is closed
    /// after it.
    pub header_read_timeout: Duration,
    /// Open connections not upgraded to WebSocket; beyond it new ones are closed.
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `stop` fires, then lets open requests finish.
/// Upgraded WebSocket connections are not waited for here: they belong to their
/// sessions, which the node drains itself.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    metrics: HttpMetrics,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    let open = Arc::new(AtomicUsize::new(0));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let http = Arc::new(http);
    let mut warned_at: Option<Instant> = None;
    loop {
        let tcp = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Only this loop adds to `open`, so the check cannot be overtaken.
        if open.load(Ordering::Acquire) >= limits.max_connections {
            refuse(tcp);
            metrics.refused.increment(1);
            if warned_at.is_none_or(|t| t.elapsed() >= CAP_WARNING_EVERY) {
                warned_at = Some(Instant::now());
                tracing::warn!(
                    limit = limits.max_connections,
                    "plain HTTP connections at limits.max_http_connections: new connections are closed at once"
                );
            }
            continue;
        }
        let slot = Slot::take(&open, &metrics.open);
        // Frames are batched by the outbox (one `writev` per burst), so Nagle's delay
        // would only add latency.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        connections.spawn(serve_connection(
            tcp,
            slot,
            http.clone(),
            app.clone(),
            limits.header_read_timeout,
            metrics.header_timeouts.clone(),
            stop.clone(),
        ));
    }
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("http connections still open after the shutdown grace period");
    }
}

/// One connection, from its accept until it closes or becomes a WebSocket (hyper's
/// connection future ends once the upgraded socket is handed over); `slot` is held
/// for exactly that long, unless a request gives it back earlier because it turned
/// the connection into a streaming session (its [`HttpSlot`] extension).
async fn serve_connection(
    tcp: TcpStream,
    slot: Slot,
    http: Arc<http1::Builder>,
    app: Router,
    header_read_timeout: Duration,
    header_timeouts: Counter,
    stop: CancellationToken,
) {
    let slot = HttpSlot::new(move || drop(slot));
    // Whatever way this function ends, the place is given back.
    let _give_back = GiveBack(slot.clone());
    // Wait for the first byte before handing the socket to hyper, which gives every
    // connection its buffers (8 KiB to read, 8 KiB to write) as soon as it has it: a
    // connection that sends nothing then costs its task and socket only (measured with
    // bench/http-idle.py; docs/CONFIG.md). `peek`, not `readable`: tokio reports a new
    // socket readable before anything arrived. hyper's own header timer starts after.
    let mut first = [0u8; 1];
    let first_byte = tokio::select! {
        _ = stop.cancelled() => return,
        peeked = tokio::time::timeout(header_read_timeout, tcp.peek(&mut first)) => peeked,
    };
    match first_byte {
        Ok(Ok(0)) => return, // closed without a word
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "http connection failed before its request");
            return;
        }
        Err(_) => {
            header_timeouts.increment(1);
            tracing::debug!("http connection sent nothing within the header timeout");
            return;
        }
    }
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(slot.clone());
            app.clone().oneshot(req)
        });
    let conn = http
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    match result {
        Ok(()) => {}
        // hyper's header timer closed it: a slow loris, a client that stalled
        // mid-request, or a keep-alive connection left idle after its answer.
        Err(e) if e.is_timeout() => {
            header_timeouts.increment(1);
            tracing::debug!("request headers not complete within the header timeout");
        }
        Err(e) => tracing::debug!(error = %e, "http connection ended with an error"),
    }
}

/// Closes a connection above the cap with a reset rather than a FIN: the client learns
/// at once (and may try another node), and the node keeps no TIME_WAIT entry for it.
///
/// Accepting and resetting, rather than leaving connections in the kernel's accept
/// queue until a place frees up, keeps that queue short: a queued connection would
/// wait, unanswered, behind the flood (health probes and real clients alike, for
/// seconds of SYN retries once the queue is full), and could be stale by the time it
/// is accepted. One `accept` and `close` per refused connection is all it costs.
fn refuse(tcp: TcpStream) {
    if let Err(e) = tcp.set_zero_linger() {
        tracing::debug!(error = %e, "SO_LINGER not set on a refused connection");
    }
}

/// Releases a connection's [`HttpSlot`] when dropped.
struct GiveBack(HttpSlot);

impl Drop for GiveBack {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// One counted plain HTTP connection; dropping it (the connection ended, or became a
/// WebSocket session) gives its place back.
struct Slot {
    open: Arc<AtomicUsize>,
    gauge: Gauge,
}

impl Slot {
    fn take(open: &Arc<AtomicUsize>, gauge: &Gauge) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        gauge.increment(1.0);
        Self {
            open: open.clone(),
            gauge: gauge.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.decrement(1.0);
    }
}
