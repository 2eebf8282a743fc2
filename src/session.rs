//! One session, on any transport: the read loop, the ops of PROTOCOL §2.2, liveness
//! pings (keep-alives on the HTTP streaming transports), the message rate limit and
//! the session's end.
//!
//! Frames are handled one at a time, in the order the client sent them, and every
//! reply goes through the connection's [`Outbox`], so replies and messages share one
//! ordered queue. On a WebSocket, client frames are parsed by tungstenite over the
//! shared socket ([`crate::connection::socket::ReadHalf`]) and the session answers
//! pings and closes itself; on an HTTP streaming transport (PROTOCOL §2.5) they come
//! from `POST /emulation` through [`StreamInput`]. How a client gets a session (the
//! upgrade, the streaming response) is the doors' (`ws/`, `transports/`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::auth::{Identity, permits};
use crate::backplane::PresenceEntry;
use crate::config::Namespace;
use crate::connection::frame::Frame;
use crate::connection::outbox::{ControlHandle, Outbox};
use crate::connection::rate::{RateLimiter, Verdict};
use crate::connection::socket::{ReadHalf, Socket};
use crate::error::{CloseReason, ErrorCode, OpError};
use crate::hub::{SessionId, Subscriber};
use crate::presence;
use crate::protocol::{self, ClientFrame, Op, RequestId};
use crate::publish::durability;
use crate::recovery;
use crate::relay::StreamEntry;
use crate::state::AppState;
use crate::ws::handshake::Upgraded;

/// tungstenite reads client frames into a buffer of this size per socket, allocated
/// with the socket; its default (128 KiB) would cost 12 GiB per 100k connections.
/// Client frames are small; a larger one still arrives (the buffer grows for it).
/// Measured in docs/BENCHMARKS.md: 4 KiB of the idle connection's ~12.7 KiB was this
/// buffer at its old size.
const READ_BUFFER: usize = 1024;
/// How long a closed connection waits for the client's close reply (or EOF) before
/// the socket is dropped, so the client reads our close frame rather than a reset.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

type ClientStream = WebSocketStream<ReadHalf>;

/// The timer of a session whose token never expires.
const NO_EXPIRY: Duration = Duration::from_secs(86400 * 365);
/// Longest gap between two writes on an HTTP streaming transport: proxies with a 60 s
/// idle timeout must see traffic well within it (PROTOCOL §2.5).
const STREAM_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Client frames posted to a streaming session and not yet served; a POST that finds
/// the queue full is refused with 429 (the session is behind its client).
pub const STREAM_INPUT: usize = 32;

/// A session's client frames on an HTTP streaming transport, posted to
/// `POST /emulation` on any node and handed over here, and the sign that its
/// response is gone (the client closed it).
pub struct StreamInput {
    pub rx: mpsc::Receiver<String>,
    pub gone: CancellationToken,
}

/// Where a session's client frames come from.
enum Input<'a> {
    WebSocket(&'a mut ClientStream),
    Stream(&'a mut StreamInput),
}

/// One thing a client did, whatever its transport.
enum Event {
    Text(Utf8Bytes),
    Binary,
    Ping(Bytes),
    Pong,
    /// A close frame; false when its code is one no endpoint may send.
    Close(bool),
    /// The client is gone without a close.
    Gone,
    /// The client broke the WebSocket protocol: closed with this reason, or aborted.
    Broken(Option<CloseReason>),
}

impl Input<'_> {
    async fn next(&mut self) -> Event {
        match self {
            Input::Stream(input) => tokio::select! {
                text = input.rx.recv() => match text {
                    Some(text) => Event::Text(text.into()),
                    None => Event::Gone,
                },
                _ = input.gone.cancelled() => Event::Gone,
            },
            Input::WebSocket(stream) => match stream.next().await {
                None => Event::Gone,
                Some(Err(e)) => {
                    let reason = close_for(&e);
                    if reason.is_some() {
                        tracing::debug!(error = %e, "client broke the websocket protocol");
                    }
                    Event::Broken(reason)
                }
                Some(Ok(Message::Text(text))) => Event::Text(text),
                Some(Ok(Message::Binary(_) | Message::Frame(_))) => Event::Binary,
                // RFC 6455 §7.4: a close code no endpoint may send is a protocol error,
                // answered as one. tungstenite hands such a frame over as 1002 already;
                // a client's own 1002 gets the same.
                Some(Ok(Message::Close(frame))) => {
                    Event::Close(frame.is_none_or(|f| f.code != CloseCode::Protocol))
                }
                Some(Ok(Message::Ping(payload))) => Event::Ping(payload),
                Some(Ok(Message::Pong(_))) => Event::Pong,
            },
        }
    }

    /// Whether the client answers pings, so that silence means it is gone. A
    /// streaming client only posts when it has something to say; a vanished one is
    /// found by the write of a keep-alive instead.
    fn answers_pings(&self) -> bool {
        matches!(self, Input::WebSocket(_))
    }
}

/// What an op answers: a result to reply with, or nothing (the op replied itself).
type OpResult = Result<Option<Value>, OpError>;

struct Session {
    state: Arc<AppState>,
    id: SessionId,
    outbox: Outbox,
    control: ControlHandle,
    identity: Identity,
    /// This session's presence entry (from the token it connected with).
    presence: PresenceEntry,
    /// Channels this session is subscribed to (the hub holds the other direction).
    channels: HashSet<Arc<str>>,
    limiter: RateLimiter,
}

/// Runs a WebSocket connection to its end.
pub async fn run(upgraded: Upgraded, state: Arc<AppState>, identity: Identity) {
    let limits = &state.config.limits;
    let (outbox, control) = Outbox::new(upgraded.socket, limits.outbox_messages);
    let max = limits.max_frame_bytes;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let mut stream = WebSocketStream::from_partially_read(
        ReadHalf::new(outbox.clone()),
        upgraded.early_bytes,
        Role::Server,
        Some(config),
    )
    .await;
    let registration = Registration::new(&state, &control);
    let name = session_name(registration.id);
    let welcome = protocol::welcome_frame(
        &name,
        &state.config.node_id,
        state.config.ping_interval.as_millis() as u64,
    );
    outbox.push(Frame::text(welcome));
    serve(
        &registration,
        &name,
        &outbox,
        identity,
        Input::WebSocket(&mut stream),
    )
    .await;
    // Counted until the socket is really done (the close has a deadline).
    if outbox.finish().await {
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(frame)) = stream.next().await {
                if frame.is_close() {
                    break;
                }
            }
        })
        .await;
    }
}

/// Runs a session on an HTTP streaming transport (PROTOCOL §2.5) to its end. `socket`
/// is the response body's sink; `transport` names it in the welcome frame; `gone` is
/// cancelled when the response is dropped (the client went away).
pub async fn run_stream(
    socket: Socket,
    transport: &'static str,
    state: Arc<AppState>,
    identity: Identity,
    gone: CancellationToken,
) {
    let limits = &state.config.limits;
    let (outbox, control) = Outbox::new(socket, limits.outbox_messages);
    let registration = Registration::new(&state, &control);
    let id = registration.id;
    let name = session_name(id);
    let key = session_key();
    let (tx, rx) = mpsc::channel(STREAM_INPUT);
    state.relay.register(
        id,
        StreamEntry {
            name: name.clone(),
            key: key.clone(),
            input: tx,
        },
    );
    let keep_alive = state.config.ping_interval.min(STREAM_KEEP_ALIVE);
    let welcome = protocol::stream_welcome_frame(
        &name,
        &state.config.node_id,
        keep_alive.as_millis() as u64,
        transport,
        &key,
    );
    outbox.push(Frame::text(welcome));
    let mut input = StreamInput { rx, gone };
    serve(
        &registration,
        &name,
        &outbox,
        identity,
        Input::Stream(&mut input),
    )
    .await;
    outbox.finish().await;
}

/// Serves a registered session's frames until it ends, then leaves its channels.
async fn serve(
    registration: &Registration,
    name: &str,
    outbox: &Outbox,
    identity: Identity,
    mut input: Input<'_>,
) {
    let state = &registration.state;
    let presence = presence::entry_for(name, &identity);
    let mut session = Session {
        presence,
        limiter: RateLimiter::new(state.config.limits.messages_per_sec),
        state: state.clone(),
        id: registration.id,
        outbox: outbox.clone(),
        control: registration.control.clone(),
        identity,
        channels: HashSet::new(),
    };
    session.read_loop(&mut input).await;
    session.leave_all().await;
}

/// A session's place in the node's session table (counted in `herald_connections`,
/// closed by a drain). Dropping it gives the place back: at the normal end of the task
/// and also when a panic unwinds it, so no ghost session outlives its connection.
struct Registration {
    state: Arc<AppState>,
    id: SessionId,
    control: ControlHandle,
}

impl Registration {
    /// Registers a session; dropping the result unregisters it.
    fn new(state: &Arc<AppState>, control: &ControlHandle) -> Self {
        Self {
            state: state.clone(),
            id: state.register_session(control.clone()),
            control: control.clone(),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // After a normal end the connection is closed already and this changes
        // nothing; after a panic nobody will write a close frame: end it at once.
        self.control.abort();
        self.state.unregister_session(self.id);
    }
}

/// A session's task ends with its channels left (`leave_all`). Anything else that ends
/// it, a panic in an op or the task dropped, still releases every channel it holds:
/// the hub's entry and the node's backplane interest at once, presence in a task of
/// its own (it talks to the backplane).
impl Drop for Session {
    fn drop(&mut self) {
        if self.channels.is_empty() {
            return;
        }
        let channels: Vec<Arc<str>> = self.channels.drain().collect();
        tracing::warn!(
            session = self.id,
            channels = channels.len(),
            "session ended without leaving its channels; releasing them"
        );
        for ch in &channels {
            self.state.subscriptions.unsubscribe(ch, self.id);
            self.state.metrics.subscriptions.decrement(1.0);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let state = self.state.clone();
        let entry = self.presence.clone();
        runtime.spawn(async move {
            for ch in channels {
                if let Some(ns) = state.config.namespaces.for_channel(&ch).cloned() {
                    state.presence.leave(&state, &ch, &ns, &entry).await;
                }
            }
        });
    }
}

/// A session name unique across the fleet: random, not guessable from the node.
fn session_name(id: SessionId) -> String {
    format!("s-{:016x}{:x}", rand::random::<u64>(), id)
}

/// The secret a streaming session's client sends with every `POST /emulation`: the
/// session name is shown to others (presence), the key only to its own client.
fn session_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Session {
    async fn read_loop(&mut self, input: &mut Input<'_>) {
        let answers_pings = input.answers_pings();
        let every = if answers_pings {
            self.state.config.ping_interval
        } else {
            self.state.config.ping_interval.min(STREAM_KEEP_ALIVE)
        };
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut last_seen = Instant::now();
        let expiry = tokio::time::sleep(NO_EXPIRY);
        tokio::pin!(expiry);
        self.arm_expiry(expiry.as_mut());
        loop {
            tokio::select! {
                biased;
                _ = self.control.closed() => return,
                _ = &mut expiry => {
                    self.control.close(CloseReason::TokenExpired);
                    return;
                }
                _ = ping.tick() => {
                    if answers_pings && last_seen.elapsed() > every * 2 {
                        // No frame, not even a pong, for two intervals: the peer is gone.
                        self.control.abort();
                        return;
                    }
                    self.outbox.push(Frame::Ping);
                }
                event = input.next() => {
                    last_seen = Instant::now();
                    match event {
                        Event::Gone => {
                            self.control.abort();
                            return;
                        }
                        Event::Broken(reason) => {
                            match reason {
                                Some(reason) => self.control.close(reason),
                                None => {
                                    self.control.abort();
                                    true
                                }
                            };
                            return;
                        }
                        Event::Text(text) => {
                            if self.admit(Some(text.as_str())) {
                                // Boxed: the op futures are large and rare; inline they
                                // would sit in every idle connection's task.
                                let refreshed = Box::pin(self.handle_text(text.as_str())).await;
                                if refreshed {
                                    self.arm_expiry(expiry.as_mut());
                                }
                            }
                        }
                        Event::Binary => {
                            if self.admit(None) {
                                self.reply_error(None, ErrorCode::BadRequest, "binary frames are not supported; send JSON text frames");
                            }
                        }
                        Event::Close(valid) => {
                            self.control.close(if valid { CloseReason::Normal } else { CloseReason::ProtocolError });
                            return;
                        }
                        // Control frames count against the rate limit like every frame
                        // (PROTOCOL §2.3); a refused ping gets no pong, a flood ends in 1008.
                        Event::Ping(payload) => {
                            if self.admit_control() {
                                self.outbox.push(Frame::Pong(payload));
                            }
                        }
                        Event::Pong => {
                            self.admit_control();
                        }
                    }
                }
            }
        }
    }

    fn arm_expiry(&self, sleep: std::pin::Pin<&mut tokio::time::Sleep>) {
        if let Some(exp) = self.identity.expires {
            let left = exp
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            // An expiry further away than the clock can count is no expiry at all.
            let now = tokio::time::Instant::now();
            sleep.reset(now.checked_add(left).unwrap_or(now + NO_EXPIRY));
        }
    }

    /// Counts a data frame against the rate limit; false when it must not be served.
    /// A refused text frame is answered with its own id when one can be read
    /// (PROTOCOL §2.2); the op's work is not done.
    fn admit(&mut self, text: Option<&str>) -> bool {
        match self.limiter.take(Instant::now()) {
            Verdict::Allow => true,
            Verdict::Refuse => {
                self.state.metrics.rate_limited.increment(1);
                let id = text.and_then(protocol::peek_id);
                self.reply_error(id, ErrorCode::RateLimited, "too many frames; slow down");
                false
            }
            Verdict::Abuse => self.close_for_abuse(),
        }
    }

    /// Counts a ping or pong frame against the rate limit. A refused one is dropped
    /// without a reply: control frames have no id to answer.
    fn admit_control(&mut self) -> bool {
        match self.limiter.take(Instant::now()) {
            Verdict::Allow => true,
            Verdict::Refuse => {
                self.state.metrics.rate_limited.increment(1);
                false
            }
            Verdict::Abuse => self.close_for_abuse(),
        }
    }

    fn close_for_abuse(&self) -> bool {
        self.state.metrics.rate_limited.increment(1);
        self.control.close(CloseReason::Policy);
        false
    }

    /// Serves one text frame. Returns true when the session's token was refreshed.
    async fn handle_text(&mut self, text: &str) -> bool {
        #[cfg(test)]
        if text == tests::PANIC_FRAME {
            panic!("test-only panic point in a session");
        }
        let frame = match protocol::parse_client_frame(text) {
            Ok(frame) => frame,
            Err(e) => {
                self.reply_error(e.id, e.code, &e.message);
                return false;
            }
        };
        let ClientFrame { id, op } = frame;
        let refresh = matches!(op, Op::Refresh { .. });
        match self.op(op, id).await {
            Ok(Some(result)) => {
                if let Some(id) = id {
                    self.push_text(protocol::reply_ok(id, &result));
                }
                refresh
            }
            Ok(None) => false,
            Err(e) => {
                self.reply_error(id, e.code, &e.message);
                false
            }
        }
    }

    async fn op(&mut self, op: Op<'_>, id: Option<RequestId>) -> OpResult {
        match op {
            Op::Ping => Ok(Some(json!({}))),
            Op::Subscribe { channel, recover } => self.subscribe(&channel, recover, id).await,
            Op::Unsubscribe { channel } => {
                // Removed from the set only once left, so that a panic halfway leaves
                // the channel to the session's drop guard.
                if let Some(ch) = self.channels.get(channel.as_ref()).cloned() {
                    self.leave(&ch).await;
                    self.channels.remove(&ch);
                }
                Ok(Some(json!({})))
            }
            Op::Publish {
                channel,
                data,
                idempotency_key,
            } => {
                let channel: &str = &channel;
                let ns = self.namespace(channel)?;
                if !permits(ns.publish, &self.identity, channel) {
                    return Err(forbidden("publish", channel));
                }
                if ns.upstream {
                    return self.publish_upstream(channel, &ns, data).await.map(Some);
                }
                self.state
                    .publisher()
                    .publish(channel, &ns, data, idempotency_key.as_deref())
                    .await
                    .map(Some)
            }
            Op::History {
                channel,
                since,
                limit,
            } => {
                let channel: &str = &channel;
                let ns = self.namespace(channel)?;
                if !permits(ns.history, &self.identity, channel) {
                    return Err(forbidden("history", channel));
                }
                crate::history::read(&self.state, channel, &ns, since.map(|s| s.offset), limit)
                    .await
                    .map(Some)
            }
            Op::Presence { channel } => {
                let channel: &str = &channel;
                let ns = self.namespace(channel)?;
                if !permits(ns.presence_read, &self.identity, channel) {
                    return Err(forbidden("presence", channel));
                }
                presence::list(&self.state, channel, &ns).await.map(Some)
            }
            Op::PresenceStats { channel } => {
                let channel: &str = &channel;
                let ns = self.namespace(channel)?;
                if !permits(ns.presence_read, &self.identity, channel) {
                    return Err(forbidden("presence", channel));
                }
                presence::stats(&self.state, channel, &ns).await.map(Some)
            }
            Op::Refresh { token } => self.refresh(&token).map(Some),
        }
    }

    /// Replaces the session's token (PROTOCOL §2.2 `refresh`): same user, and every
    /// current subscription still allowed; otherwise the old token stays.
    fn refresh(&mut self, token: &str) -> Result<Value, OpError> {
        if !self.state.tokens.enabled() {
            return Err(OpError::new(
                ErrorCode::BadRequest,
                "this node has no token key; refresh is not available",
            ));
        }
        let new = self
            .state
            .tokens
            .verify(token)
            .map_err(|e| OpError::new(ErrorCode::Unauthorized, e.to_string()))?;
        if new.user != self.identity.user {
            return Err(OpError::new(
                ErrorCode::Forbidden,
                "the new token names another user",
            ));
        }
        for channel in &self.channels {
            let ns = self.namespace(channel)?;
            if !permits(ns.subscribe, &new, channel) {
                return Err(OpError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "the new token does not allow '{channel}', which this session is subscribed to"
                    ),
                ));
            }
        }
        self.identity = new;
        Ok(json!({}))
    }

    async fn subscribe(
        &mut self,
        channel: &str,
        recover: Option<protocol::StreamPosition>,
        id: Option<RequestId>,
    ) -> OpResult {
        let ns = self.namespace(channel)?;
        if !permits(ns.subscribe, &self.identity, channel) {
            return Err(forbidden("subscribe", channel));
        }
        let durable = durability(&ns);
        if self.channels.contains(channel) {
            // Already subscribed: changes nothing, answers as a subscribe would.
            return match durable {
                Some(d) => {
                    let p = self.state.backplane.position(channel, d).await?;
                    Ok(Some(json!({"epoch": p.epoch, "offset": p.offset})))
                }
                None => Ok(Some(json!({}))),
            };
        }
        if self.channels.len() >= self.state.config.limits.max_subscriptions {
            return Err(OpError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "at most {} subscriptions per connection",
                    self.state.config.limits.max_subscriptions
                ),
            ));
        }
        let ch: Arc<str> = channel.into();
        let result = match durable {
            Some(d) => {
                let join = presence::enabled(&ns).then_some((&ns, &self.presence));
                let req = recovery::DurableSubscribe {
                    channel: &ch,
                    durability: d,
                    recover,
                    id,
                    join,
                };
                recovery::subscribe_durable(&self.state, self.id, &self.outbox, req)
                    .await
                    .map(|()| None)
            }
            None => self
                .subscribe_plain(&ch, &ns)
                .await
                .map(|()| Some(json!({}))),
        };
        if result.is_ok() {
            self.channels.insert(ch);
            self.state.metrics.subscriptions.increment(1.0);
        }
        result
    }

    /// A client publish in an upstream namespace goes to the namespace's stream for
    /// backends, not to subscribers (PROTOCOL §5.2).
    async fn publish_upstream(
        &self,
        channel: &str,
        ns: &Namespace,
        data: &serde_json::value::RawValue,
    ) -> Result<Value, OpError> {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
            .to_string();
        let fields = [
            ("channel", channel),
            ("data", data.get()),
            ("session", self.presence.session.as_str()),
            ("user", self.identity.user.as_deref().unwrap_or("")),
            ("node", self.state.config.node_id.as_str()),
            ("ts", ts.as_str()),
        ];
        let id = self
            .state
            .backplane
            .append_upstream(protocol::namespace_of(channel), ns.upstream_maxlen, &fields)
            .await?;
        self.state.metrics.upstream_appended.increment(1);
        Ok(json!({"stream_id": id}))
    }

    /// Subscribes to a plain channel; the presence join (where enabled) is accepted
    /// before the reply.
    async fn subscribe_plain(&mut self, ch: &Arc<str>, ns: &Namespace) -> Result<(), OpError> {
        self.state
            .subscriptions
            .subscribe(ch, Subscriber::live(self.id, self.outbox.clone()))
            .await?;
        if let Err(e) = self
            .state
            .presence
            .join(&self.state, ch, ns, &self.presence)
            .await
        {
            self.state.subscriptions.unsubscribe(ch, self.id);
            return Err(e);
        }
        Ok(())
    }

    fn namespace(&self, channel: &str) -> Result<Namespace, OpError> {
        self.state
            .config
            .namespaces
            .for_channel(channel)
            .cloned()
            .ok_or_else(|| {
                OpError::new(
                    ErrorCode::NotFound,
                    format!("unknown namespace '{}'", protocol::namespace_of(channel)),
                )
            })
    }

    fn push_text(&self, text: String) {
        self.outbox.push(Frame::text(text));
    }

    fn reply_error(&self, id: Option<RequestId>, code: ErrorCode, message: &str) {
        self.push_text(protocol::reply_error(id, code, message));
    }

    /// Leaves one channel: presence first (its leave is accepted before the reply),
    /// then the hub.
    async fn leave(&mut self, channel: &Arc<str>) {
        if let Some(ns) = self.state.config.namespaces.for_channel(channel) {
            let ns = ns.clone();
            self.state
                .presence
                .leave(&self.state, channel, &ns, &self.presence)
                .await;
        }
        self.state.subscriptions.unsubscribe(channel, self.id);
        self.state.metrics.subscriptions.decrement(1.0);
    }

    async fn leave_all(&mut self) {
        let channels: Vec<Arc<str>> = self.channels.iter().cloned().collect();
        for ch in channels {
            self.leave(&ch).await;
            self.channels.remove(&ch);
        }
    }
}

fn forbidden(what: &str, channel: &str) -> OpError {
    OpError::new(
        ErrorCode::Forbidden,
        format!(
            "{what} not allowed in namespace '{}'",
            protocol::namespace_of(channel)
        ),
    )
}

/// The close a failed read earns (RFC 6455 §7.4.1), or None when the peer is gone
/// and nobody would read a close frame (EOF, reset, I/O error).
fn close_for(e: &WsError) -> Option<CloseReason> {
    match e {
        WsError::Capacity(_) => Some(CloseReason::TooBig),
        WsError::Utf8(_) => Some(CloseReason::InvalidData),
        // The peer hung up without a close frame: not a framing error.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) => Some(CloseReason::ProtocolError),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Config;
    use crate::server::Node;
    use futures_util::SinkExt;
    use tokio::net::TcpStream;
    use tokio_tungstenite::{MaybeTlsStream, connect_async};

    /// A text frame that panics the session serving it (test builds only).
    pub(crate) const PANIC_FRAME: &str = r#"{"op":"__test_panic__"}"#;

    type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

    async fn node() -> Node {
        let mut config = Config::from_toml("[namespaces.chat]\npresence = true\n").unwrap();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.unsubscribe_grace = Duration::from_millis(50);
        Node::start(config).await.unwrap()
    }

    async fn connect(node: &Node) -> Ws {
        connect_async(format!("ws://{}/ws", node.addr))
            .await
            .unwrap()
            .0
    }

    /// Sends a request and returns its reply, skipping other frames.
    async fn request(ws: &mut Ws, frame: Value) -> Value {
        let id = frame["id"].clone();
        ws.send(Message::text(frame.to_string())).await.unwrap();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
            let Ok(Some(Ok(Message::Text(text)))) = next else {
                panic!("no reply to {id}: {next:?}");
            };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["type"] == "reply" && v["id"] == id {
                return v;
            }
        }
    }

    fn gauge(node: &Node, name: &str) -> f64 {
        let text = node.state.metrics.render();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    #[tokio::test]
    async fn a_session_that_panics_leaves_nothing_behind() {
        let node = node().await;
        let mut doomed = connect(&node).await;
        let mut other = connect(&node).await;
        for ws in [&mut doomed, &mut other] {
            let r = request(
                ws,
                json!({"id": 1, "op": "subscribe", "channel": "chat:room"}),
            )
            .await;
            assert_eq!(r["result"], json!({}), "{r}");
        }
        assert_eq!(node.state.connection_count(), 2);
        assert_eq!(gauge(&node, "herald_subscriptions"), 2.0);

        doomed.send(Message::text(PANIC_FRAME)).await.unwrap();
        // The connection ends rather than hanging: its task is gone.
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = doomed.next().await {}
        })
        .await;
        assert!(end.is_ok(), "the panicked session's connection stayed open");

        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let listed = request(
                &mut other,
                json!({"id": 2, "op": "presence", "channel": "chat:room"}),
            )
            .await;
            let present = listed["result"]["clients"].as_array().map_or(0, Vec::len);
            let clean = node.state.connection_count() == 1
                && node.state.hub.subscriber_count("chat:room") == 1
                && gauge(&node, "herald_subscriptions") == 1.0
                && gauge(&node, "herald_connections") == 1.0
                && present == 1;
            if clean {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "state left behind: connections {}, hub subscribers {}, presence {present}",
                node.state.connection_count(),
                node.state.hub.subscriber_count("chat:room"),
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The survivor is served as before.
        let r = request(&mut other, json!({"id": 3, "op": "ping"})).await;
        assert_eq!(r["result"], json!({}));
        node.stop().await;
    }
}
