//! Subscribing to a durable channel, with or without `recover` (PROTOCOL §2.2,
//! guarantee 3; docs/ARCHITECTURE.md decision 6).
//!
//! The order of steps is what makes it loss-free and duplicate-free:
//! 1. join the channel with a *buffering* route and wait for the backplane to confirm
//!    (from here on, every live frame lands in the buffer);
//! 2. read the position, and with `recover` the history after the client's offset;
//! 3. send the reply, then the history;
//! 4. switch the route to live, releasing buffered frames newer than what was sent.

use std::sync::Arc;

use serde_json::json;

use crate::backplane::{Durability, HistoryQuery, Position, PresenceEntry, StoredMessage};
use crate::config::Namespace;
use crate::connection::frame::Frame;
use crate::connection::outbox::Outbox;
use crate::error::BackplaneError;
use crate::error::{ErrorCode, OpError};
use crate::hub::{GoLive, SessionId, Subscriber};
use crate::protocol::{self, RequestId, StreamPosition};
use crate::state::AppState;

/// One durable subscribe, as the session asked for it.
pub struct DurableSubscribe<'a> {
    pub channel: &'a Arc<str>,
    pub durability: Durability,
    pub recover: Option<StreamPosition>,
    /// The request id to reply to (no id: no reply).
    pub id: Option<RequestId>,
    /// The presence entry to join with, where the namespace keeps presence.
    pub join: Option<(&'a Namespace, &'a PresenceEntry)>,
}

/// Subscribes `session` to a durable channel and sends its reply (when `id` is set)
/// followed by the recovered messages. On error the session is not subscribed.
pub async fn subscribe_durable(
    state: &Arc<AppState>,
    session: SessionId,
    outbox: &Outbox,
    req: DurableSubscribe<'_>,
) -> Result<(), OpError> {
    let DurableSubscribe {
        channel,
        durability: d,
        recover,
        id,
        join,
    } = req;
    let (sub, _buffer) =
        Subscriber::buffered(session, outbox.clone(), state.config.limits.outbox_messages);
    state.subscriptions.subscribe(channel, sub).await?;

    let start = match read_start(state, channel, d, recover.as_ref()).await {
        Ok(start) => start,
        Err(e) => {
            state.subscriptions.unsubscribe(channel, session);
            return Err(e.into());
        }
    };

    if let Some((ns, entry)) = join
        && let Err(e) = state.presence.join(state, channel, ns, entry).await
    {
        state.subscriptions.unsubscribe(channel, session);
        return Err(e);
    }
    let Some(has) = send_start(outbox, id, start).await else {
        // The connection is closing: nothing more to send.
        return Ok(());
    };
    go_live(state, outbox, channel, session, has).await
}

/// Where a durable subscription starts: the channel's position, and with `recover`
/// whether history holds everything after the client's offset, and that history.
struct Start {
    position: Position,
    recovered: Option<bool>,
    messages: Vec<StoredMessage>,
}

/// Reads the start of a subscription (step 2), after the barrier.
async fn read_start(
    state: &AppState,
    channel: &str,
    d: Durability,
    recover: Option<&StreamPosition>,
) -> Result<Start, BackplaneError> {
    let Some(pos) = recover else {
        return Ok(Start {
            position: state.backplane.position(channel, d).await?,
            recovered: None,
            messages: Vec::new(),
        });
    };
    let query = HistoryQuery::After {
        offset: pos.offset,
        limit: None,
    };
    let history = state.backplane.history(channel, d, query).await?;
    let current = &history.position;
    let contiguous = match history.messages.first() {
        Some(first) => first.offset == pos.offset + 1,
        None => current.offset == pos.offset,
    };
    let recovered = pos.epoch == current.epoch && pos.offset <= current.offset && contiguous;
    Ok(Start {
        position: history.position,
        recovered: Some(recovered),
        messages: history.messages,
    })
}

/// Sends the reply, then the recovered history (step 3). Returns the epoch and the
/// last offset the client now has, or None when the connection closed meanwhile.
async fn send_start(outbox: &Outbox, id: Option<RequestId>, start: Start) -> Option<(String, u64)> {
    let Start {
        position,
        recovered,
        messages,
    } = start;
    if let Some(id) = id {
        let mut result = json!({"epoch": position.epoch, "offset": position.offset});
        if let Some(recovered) = recovered {
            result["recovered"] = json!(recovered);
        }
        let reply = protocol::reply_ok(id, &result);
        outbox.send(Frame::text(reply)).await.ok()?;
    }
    // Without a successful recovery the client starts from the current offset.
    let mut sent = position.offset;
    if recovered == Some(true) {
        for m in messages {
            sent = m.offset;
            outbox.send(Frame::Text(m.frame)).await.ok()?;
        }
    }
    Some((position.epoch, sent))
}

/// Switches the route to live (step 4), releasing buffered frames after what the
/// client `has` (an epoch and its last offset).
async fn go_live(
    state: &AppState,
    outbox: &Outbox,
    channel: &str,
    session: SessionId,
    has: (String, u64),
) -> Result<(), OpError> {
    let (epoch, sent) = has;
    // The buffer must fit into the queue at once: give the writer time to make room.
    outbox
        .wait_for_room(state.config.limits.outbox_messages / 2)
        .await;
    match state.hub.go_live(channel, session, Some((&epoch, sent))) {
        GoLive::Released(_) | GoLive::Gone => Ok(()),
        GoLive::Overflowed => {
            state.metrics.slow_consumer_closes.increment(1);
            Err(OpError::new(
                ErrorCode::Unavailable,
                "too many messages during recovery; reconnect and recover",
            ))
        }
    }
}
