//! The one reader of pub/sub messages: each payload is validated once and its shared
//! bytes handed to the node's [`Inbound`]; `Lagged` is counted and reported as a
//! possible gap, never ignored. Payloads that anyone with Redis access can write (too
//! large, invalid) are dropped, counted one by one and logged through a [`LogLimit`].
//! Subscribing is the engine's (`redis.rs`); what a delivery does is the node's.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use fred::prelude::*;
use fred::types::Message;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::keys::Keys;
use super::topology::Probes;
use crate::backplane::Inbound;
use crate::backplane::log_limit::{self, LogLimit};
use crate::metrics::Metrics;
use crate::protocol::{self, PayloadKind};

/// Starts the reader of `rx`, and the tasks that write its drop logs' burst summaries,
/// until `shutdown`.
pub(super) fn spawn(
    rx: broadcast::Receiver<Message>,
    keys: Keys,
    inbound: Arc<dyn Inbound>,
    probes: Arc<Probes>,
    max_frame_bytes: usize,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let drops = Drops {
        max_frame_bytes,
        invalid: Arc::new(LogLimit::new(
            "invalid backplane payloads",
            log_limit::INTERVAL,
        )),
        oversized: Arc::new(LogLimit::new(
            "oversized backplane payloads",
            log_limit::INTERVAL,
        )),
        metrics,
    };
    tokio::spawn(drops.invalid.clone().run(shutdown.clone()));
    tokio::spawn(drops.oversized.clone().run(shutdown.clone()));
    let to = Destinations {
        keys,
        inbound,
        probes,
    };
    tokio::spawn(read_messages(rx, to, drops, shutdown));
}

/// What the reader drops: each payload counted, the lines rate-limited per kind.
struct Drops {
    max_frame_bytes: usize,
    invalid: Arc<LogLimit>,
    oversized: Arc<LogLimit>,
    metrics: Arc<Metrics>,
}

impl Drops {
    fn invalid(&self, channel: &str, reason: &str) {
        self.metrics.invalid_payloads.increment(1);
        if let Some(suppressed) = self.invalid.admit(reason) {
            tracing::warn!(
                channel,
                reason = log_limit::clip(reason),
                suppressed,
                "dropped an invalid backplane payload"
            );
        }
    }

    fn oversized(&self, channel: &str, bytes: usize) {
        self.metrics.oversized_payloads.increment(1);
        let reason = "above limits.max_backplane_frame_bytes";
        if let Some(suppressed) = self.oversized.admit(reason) {
            tracing::warn!(
                channel,
                bytes,
                limit = self.max_frame_bytes,
                suppressed,
                "dropped an oversized backplane payload unread"
            );
        }
    }
}

/// Where a message goes: a Herald channel's to the node, a probe's to `topology.rs`.
struct Destinations {
    keys: Keys,
    inbound: Arc<dyn Inbound>,
    probes: Arc<Probes>,
}

/// The one reader of pub/sub messages: validate once, hand to the node.
async fn read_messages(
    mut rx: broadcast::Receiver<Message>,
    to: Destinations,
    drops: Drops,
    shutdown: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return,
            msg = rx.recv() => msg,
        };
        match msg {
            Ok(msg) => deliver(msg, &to, &drops),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                drops.metrics.backplane_lagged.increment(n);
                tracing::warn!(
                    skipped = n,
                    "backplane reader lagged; checking durable channels for gaps"
                );
                to.inbound.lost_any();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Validates one message and delivers it, or drops it with a reason.
fn deliver(msg: Message, to: &Destinations, drops: &Drops) {
    let now = Instant::now();
    let inbound = to.inbound.as_ref();
    let Some(channel) = to.keys.channel_of(&msg.channel) else {
        if to.keys.is_node(&msg.channel) {
            // Anyone with Redis access can write here too: the same size limit.
            match msg.value.as_bytes() {
                Some(bytes) if bytes.len() > drops.max_frame_bytes => {
                    drops.oversized(&msg.channel, bytes.len());
                }
                Some(bytes) => inbound.node_message(bytes),
                None => drops.invalid(&msg.channel, "not a string payload"),
            }
        } else if let Some(tag) = to.keys.probe_of(&msg.channel)
            && let Some(payload) = msg.value.as_str()
        {
            to.probes.record(tag, &payload);
        }
        return;
    };
    let bytes: Bytes = match msg.value {
        Value::String(s) => s.into_inner(),
        Value::Bytes(b) => b,
        _ => {
            drops.invalid(channel, "not a string payload");
            return;
        }
    };
    // Before any parsing: a frame this large would cost every subscriber its copy in
    // the socket buffers, and parsing it costs the reader.
    if bytes.len() > drops.max_frame_bytes {
        drops.oversized(channel, bytes.len());
        return;
    }
    let Ok(frame) = Utf8Bytes::try_from(bytes) else {
        drops.invalid(channel, "payload is not UTF-8");
        return;
    };
    match protocol::check_payload(channel, frame.as_str()) {
        Ok(PayloadKind::Message { seq }) => {
            let seq = seq.as_ref().map(|(o, e)| (*o, e.as_str()));
            inbound.deliver(channel, &frame, seq, now);
        }
        Ok(PayloadKind::Presence) => inbound.deliver(channel, &frame, None, now),
        Err(reason) => drops.invalid(channel, &reason),
    }
}
