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

use crate::backplane::{Durability, HistoryQuery, PresenceEntry};
use crate::config::Namespace;
use crate::connection::frame::Frame;
use crate::connection::outbox::Outbox;
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

    let read = async {
        match &recover {
            Some(pos) => {
                let history = state
                    .backplane
                    .history(
                        channel,
                        d,
                        HistoryQuery::After {
                            offset: pos.offset,
                            limit: None,
                        },
                    )
                    .await?;
                let current = &history.position;
                let contiguous = match history.messages.first() {
                    Some(first) => first.offset == pos.offset + 1,
                    None => current.offset == pos.offset,
                };
                let recovered =
                    pos.epoch == current.epoch && pos.offset <= current.offset && contiguous;
                Ok::<_, crate::error::BackplaneError>((
                    history.position.clone(),
                    Some(recovered),
                    history.messages,
                ))
            }
            None => Ok((
                state.backplane.position(channel, d).await?,
                None,
                Vec::new(),
            )),
        }
    };
    let (position, recovered, messages) = match read.await {
        Ok(r) => r,
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
    if let Some(id) = id {
        let mut result = json!({"epoch": position.epoch, "offset": position.offset});
        if let Some(recovered) = recovered {
            result["recovered"] = json!(recovered);
        }
        let reply = protocol::reply_ok(id, &result);
        if outbox.send(Frame::text(reply)).await.is_err() {
            return Ok(());
        }
    }
    // Without a successful recovery the client starts from the current offset.
    let mut sent = position.offset;
    if recovered == Some(true) {
        for m in messages {
            sent = m.offset;
            if outbox.send(Frame::Text(m.frame)).await.is_err() {
                return Ok(());
            }
        }
    }
    // The buffer must fit into the queue at once: give the writer time to make room.
    outbox
        .wait_for_room(state.config.limits.outbox_messages / 2)
        .await;
    match state
        .hub
        .go_live(channel, session, Some((&position.epoch, sent)))
    {
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
