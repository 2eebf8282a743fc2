//! The publishers through a node: over HTTP (`POST /api/publish`) and over the
//! WebSocket `publish` op, each with one publish in flight; and the bookkeeping every
//! publisher (these and `--via redis`'s) does per publish: when it was sent, whether
//! and when it was acknowledged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::http::HttpConn;
use crate::plan::Plan;
use crate::shared::{PUB_FAILED, PUB_OK, PUB_SENT, Shared};
use crate::subscriber::{Ws, number_after, open_ws};

/// The sequence numbers due for publishing, shared by a pool of publishers.
pub type JobQueue = Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<u64>>>;

/// Records the outcome of publish `seq`: acknowledged (with its acknowledgement time),
/// or failed with `error`.
pub fn mark_published(sh: &Shared, seq: u64, ok: bool, error: Option<String>) {
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

/// Records that publish `seq` is being sent now (and how late against its due time);
/// returns the send time, ns since the origin, which goes into the payload.
pub fn stamp(sh: &Shared, seq: u64) -> u64 {
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

/// One HTTP publisher: a keep-alive connection to `node` (opened again after an
/// error), one `POST /api/publish` at a time.
pub async fn http_publisher(node: SocketAddr, plan: Arc<Plan>, sh: Arc<Shared>, jobs: JobQueue) {
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
        write_publish_body(&mut body, &plan, &channel, seq, t);
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

/// The body of `POST /api/publish` for publish `seq` to `channel` sent at `t`, into
/// `body`.
fn write_publish_body(body: &mut Vec<u8>, plan: &Plan, channel: &str, seq: u64, t: u64) {
    body.clear();
    body.extend_from_slice(b"{\"channel\":\"");
    body.extend_from_slice(channel.as_bytes());
    body.extend_from_slice(b"\",\"data\":");
    body.extend_from_slice(plan.data(channel, seq, t).as_bytes());
    body.push(b'}');
}

/// How long a WebSocket publisher waits for a reply before it gives the connection up
/// (its remaining jobs then fail at once, so the run still ends by itself).
const WS_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// One WebSocket publisher: like the HTTP ones, one publish in flight, the next sent
/// when the reply to the last one is in (frames it receives meanwhile are skipped).
pub async fn ws_publisher(
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
