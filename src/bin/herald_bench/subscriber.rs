//! The subscribing clients: each connects (with retries), subscribes to its channel,
//! then counts what arrives: deliveries per publish, latency, order, offset gaps and
//! how its connection ended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::plan::Plan;
use crate::shared::{Shared, acked_before_sent};

pub type Ws = WebSocketStream<TcpStream>;

/// Connects client (or publisher) `i` to `node`, from its `--source-ips` address.
pub async fn open_ws(plan: &Plan, i: usize, node: SocketAddr) -> anyhow::Result<Ws> {
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
/// The permit goes back once the client is subscribed or has given up.
pub async fn subscriber(
    i: usize,
    plan: Arc<Plan>,
    sh: Arc<Shared>,
    permit: OwnedSemaphorePermit,
    deadline: Instant,
) {
    let node = plan.nodes[i % plan.nodes.len()];
    let channel = plan.channel(i as u64);
    let Some(mut ws) = connect_with_retries(i, &plan, &sh, node, deadline).await else {
        return;
    };
    if let Err(e) = subscribe(&mut ws, &channel).await {
        count_connect_failure(&sh, e);
        return;
    }
    sh.subscribed.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    count_deliveries(ws, &plan, &sh).await;
}

fn count_connect_failure(sh: &Shared, error: impl ToString) {
    Shared::count_error(&sh.connect_errors, error);
    sh.connect_failed.fetch_add(1, Ordering::Relaxed);
}

/// Opens client `i`'s connection, retrying with a growing backoff (jittered by `i` so
/// that thousands of clients do not retry in step) until `deadline` or 50 attempts;
/// None, counted as a failure, when it never succeeds.
async fn connect_with_retries(
    i: usize,
    plan: &Plan,
    sh: &Shared,
    node: SocketAddr,
    deadline: Instant,
) -> Option<Ws> {
    let mut attempt = 0u32;
    loop {
        let result = tokio::time::timeout(Duration::from_secs(10), open_ws(plan, i, node)).await;
        let err = match result {
            Ok(Ok(ws)) => return Some(ws),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out".to_string(),
        };
        attempt += 1;
        if Instant::now() >= deadline || attempt >= 50 {
            count_connect_failure(sh, err);
            return None;
        }
        sh.connect_retries.fetch_add(1, Ordering::Relaxed);
        let backoff = Duration::from_millis(50 * u64::from(attempt.min(20)));
        tokio::time::sleep(backoff + Duration::from_millis(i as u64 % 50)).await;
    }
}

/// Subscribes to `channel` and waits for the reply; Err holds what went wrong (an
/// error reply's text, or the connection's error).
async fn subscribe(ws: &mut Ws, channel: &str) -> Result<(), String> {
    let subscribe = format!("{{\"op\":\"subscribe\",\"id\":1,\"channel\":\"{channel}\"}}");
    ws.send(Message::text(subscribe))
        .await
        .map_err(|e| e.to_string())?;
    // The welcome frame comes first; wait for the reply to id 1.
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let t = t.as_str();
                if t.starts_with("{\"type\":\"reply\"") && t.contains("\"id\":1") {
                    if t.contains("\"error\"") {
                        return Err(t.to_string());
                    }
                    return Ok(());
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) | Err(_) => return Err("no subscribe reply".to_string()),
        }
    }
}

/// What one client last saw on its channel.
#[derive(Default)]
struct Order {
    last_seq: Option<u64>,
    last_offset: Option<u64>,
}

/// Reads until the connection ends, counting every frame.
async fn count_deliveries(mut ws: Ws, plan: &Plan, sh: &Shared) {
    let mut order = Order::default();
    while let Some(frame) = ws.next().await {
        match frame {
            Ok(Message::Text(t)) => count_text_frame(t.as_str(), plan, sh, &mut order),
            Ok(Message::Close(frame)) => {
                let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                *sh.closes.lock().unwrap().entry(code).or_default() += 1;
                break;
            }
            Ok(_) => {}
            Err(_) => {
                // Errors after the end of the run are the tool's own closing.
                if !sh.stop_clients.load(Ordering::Relaxed) {
                    sh.read_errors.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
        }
    }
}

/// Counts one text frame: a message's delivery, order, offset and latency, or
/// anything else as an other frame.
fn count_text_frame(t: &str, plan: &Plan, sh: &Shared, order: &mut Order) {
    if !t.starts_with("{\"type\":\"message\"") {
        sh.other_frames.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let now = sh.now_ns();
    sh.received.fetch_add(1, Ordering::Relaxed);
    sh.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
    let (Some(seq), Some(ts)) = (number_after(t, "\"s\":"), number_after(t, "\"t\":")) else {
        sh.unknown.fetch_add(1, Ordering::Relaxed);
        return;
    };
    match sh.per_seq.get(seq as usize) {
        Some(c) => {
            c.fetch_add(1, Ordering::Relaxed);
        }
        None => {
            sh.unknown.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(l) = order.last_seq
        && seq <= l
    {
        sh.out_of_order.fetch_add(1, Ordering::Relaxed);
        if acked_before_sent(&sh.acked_at, &sh.sent_at, seq, l) {
            sh.order_violations.fetch_add(1, Ordering::Relaxed);
        }
    }
    order.last_seq = Some(seq);
    if plan.durable
        && let Some(off) = number_after(t, "\"offset\":")
    {
        if order.last_offset.is_some_and(|l| off != l + 1) {
            sh.offset_gaps.fetch_add(1, Ordering::Relaxed);
        }
        order.last_offset = Some(off);
    }
    let latency_us = now.saturating_sub(ts) / 1000;
    sh.with_hist(|h| h.delivery.saturating_record(latency_us.max(1)));
}

/// The unsigned integer right after `key` in `text`.
pub fn number_after(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits = text[at..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .fold((0u64, 0usize), |(v, n), b| {
            (v.wrapping_mul(10).wrapping_add(u64::from(b - b'0')), n + 1)
        });
    (digits.1 > 0).then_some(digits.0)
}
