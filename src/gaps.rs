//! Gap detection and filling for durable channels (PROTOCOL §2.2, guarantee 3;
//! docs/ARCHITECTURE.md decision 7).
//!
//! A node can miss pub/sub messages: while Redis was unreachable, or when its reader
//! lagged. The hub holds back any durable frame that does not follow the last offset
//! it delivered and reports the channel here; a lag or a reconnect makes every durable
//! channel suspect. For each suspect channel this task reads the stream after the last
//! delivered offset and dispatches what is missing, in order; when history cannot fill
//! the gap (trimmed, expired, new epoch) the channel's subscribers are closed with
//! 4008, so that they reconnect and recover with the truth.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backplane::HistoryQuery;
use crate::error::CloseReason;
use crate::publish::durability;
use crate::state::AppState;

/// Channels to check, shared by the backplane reader (which reports) and [`run`].
/// Unbounded in count only up to the number of channels with local subscribers.
#[derive(Default)]
pub struct GapReport {
    suspects: Mutex<HashSet<Arc<str>>>,
    all: AtomicBool,
    wake: Notify,
}

impl GapReport {
    pub fn channel(&self, channel: &str) {
        self.suspects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(channel.into());
        self.wake.notify_one();
    }

    pub fn everything(&self) {
        self.all.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn take(&self) -> (bool, Vec<Arc<str>>) {
        let all = self.all.swap(false, Ordering::AcqRel);
        let list = self
            .suspects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        (all, list)
    }
}

/// Checks suspect channels whenever something is reported and after every reconnect.
pub async fn run(state: Arc<AppState>, report: Arc<GapReport>, shutdown: CancellationToken) {
    let mut link = state.backplane.link();
    let mut checked_generation = link.borrow().generation;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = report.wake.notified() => {}
            changed = link.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = *link.borrow_and_update();
                if now.generation != checked_generation && now.connected {
                    checked_generation = now.generation;
                    // Wait until the channels are subscribed again, so nothing is missed
                    // between the check and the live path.
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while !state.subscriptions.is_current(state.link()) && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    report.everything();
                }
                continue;
            }
        }
        let (all, mut list) = report.take();
        if all {
            list = state.hub.channel_names();
        }
        for channel in list {
            if let Err(e) = check(&state, &channel).await {
                tracing::warn!(channel = %channel, error = %e, "gap check failed; will retry");
                report.channel(&channel);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn check(state: &AppState, channel: &Arc<str>) -> Result<(), crate::error::BackplaneError> {
    let Some(d) = state
        .config
        .namespaces
        .for_channel(channel)
        .and_then(durability)
    else {
        return Ok(());
    };
    let Some((epoch, last)) = state.hub.position(channel) else {
        return Ok(());
    };
    let history = state
        .backplane
        .history(
            channel,
            d,
            HistoryQuery::After {
                offset: last,
                limit: None,
            },
        )
        .await?;
    let pos = &history.position;
    let fillable = *pos.epoch == *epoch
        && pos.offset >= last
        && history
            .messages
            .first()
            .is_none_or(|m| m.offset == last + 1);
    if !fillable {
        let (closed, sessions) = state
            .hub
            .close_subscribers(channel, CloseReason::SlowConsumer);
        state.metrics.gap_closes.increment(closed as u64);
        state.hub.reset_position(channel, &pos.epoch, pos.offset);
        // Everything needed to tell why history could not fill it: the node's
        // position against the stream's, and where the stream's history starts.
        tracing::warn!(
            channel = %channel,
            closed,
            delivered_epoch = %epoch,
            delivered_offset = last,
            stream_epoch = %pos.epoch,
            stream_offset = pos.offset,
            history_first = history.messages.first().map(|m| m.offset),
            "durable gap could not be filled; subscribers closed with 4008"
        );
        // One line per session, as for every other 4008, so a client's close can be
        // found by its session.
        for session in sessions {
            tracing::info!(
                channel = %channel,
                session,
                delivered_epoch = %epoch,
                delivered_offset = last,
                stream_epoch = %pos.epoch,
                stream_offset = pos.offset,
                "unfillable durable gap; closing with 4008"
            );
        }
        return Ok(());
    }
    let now = Instant::now();
    let mut filled = 0;
    for m in &history.messages {
        let f = state
            .hub
            .dispatch(channel, &m.frame, Some((m.offset, &pos.epoch)), now);
        if f.queued > 0 || f.dropped > 0 {
            filled += 1;
        }
    }
    if filled > 0 {
        state.metrics.gap_fills.increment(filled);
        tracing::info!(channel = %channel, filled, "durable gap filled from history");
    }
    Ok(())
}
