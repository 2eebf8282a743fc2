//! The outgoing side of one connection: a bounded queue and the writer task that
//! drains it into the socket.
//!
//! Fan-out never awaits a socket: it `try_send`s into the queue ([`Outbox::push`]).
//! The queue holds `limits.outbox_messages` frames. A full queue means the client is
//! not reading fast enough: the connection is marked slow, its queue is discarded and
//! it is closed with 4008, so it recovers by reconnecting while nobody else waits.
//!
//! The writer feeds every frame already queued into the socket and flushes once, so a
//! burst costs one `write()` instead of one per frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{Sink, SinkExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::CloseReason;
use crate::metrics::Metrics;

/// How long a closing connection gets to take its close frame before the TCP
/// connection is dropped (PROTOCOL §2.4: "a few seconds").
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a session waits for room in its own queue before it gives up on the
/// client as a slow consumer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Most frames fed before one flush; bounds the time between flushes under load.
const MAX_FRAMES_PER_FLUSH: usize = 256;

/// One queued frame, with the time the node took it off the backplane (for latency).
pub struct Outgoing {
    pub msg: Message,
    pub since: Option<Instant>,
}

impl Outgoing {
    pub fn now(msg: Message) -> Self {
        Self { msg, since: None }
    }
}

/// How a connection is asked to end. Shared by the session, the writer, the hub (slow
/// consumers) and the drain.
#[derive(Debug, Default)]
pub struct Control {
    token: CancellationToken,
    /// 0: no close frame (the peer is gone); else 1 + index of the [`CloseReason`].
    reason: AtomicU8,
}

const REASONS: [CloseReason; 7] = [
    CloseReason::Normal,
    CloseReason::Draining,
    CloseReason::Policy,
    CloseReason::TooBig,
    CloseReason::Internal,
    CloseReason::TokenExpired,
    CloseReason::SlowConsumer,
];

impl Control {
    /// Asks the connection to close with `reason`. The first reason wins.
    pub fn close(&self, reason: CloseReason) -> bool {
        let idx = REASONS.iter().position(|r| *r == reason).unwrap_or(0) as u8 + 1;
        let won = self
            .reason
            .compare_exchange(0, idx, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && !self.token.is_cancelled();
        self.token.cancel();
        won
    }

    /// Ends the connection without a close frame (the peer vanished or the write failed).
    pub fn abort(&self) {
        self.token.cancel();
    }

    pub fn reason(&self) -> Option<CloseReason> {
        match self.reason.load(Ordering::Acquire) {
            0 => None,
            i => REASONS.get(i as usize - 1).copied(),
        }
    }

    pub fn is_closing(&self) -> bool {
        self.token.is_cancelled()
    }

    pub async fn closed(&self) {
        self.token.cancelled().await
    }
}

/// What happened to a frame handed to [`Outbox::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue was full and this push closed the connection with 4008.
    Overflowed,
    /// Not queued: the connection is already closing (or its queue is full).
    Dropped,
    /// The connection is already gone.
    Gone,
}

/// The sending half of a connection's queue; cheap to clone (one per subscription).
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    control: Arc<Control>,
}

impl Outbox {
    /// Creates the queue; the receiver goes to [`run_writer`].
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Outgoing>, Arc<Control>) {
        // Bounded: a full queue is a slow consumer, closed with 4008 (see `push`).
        let (tx, rx) = mpsc::channel(capacity);
        let control = Arc::new(Control::default());
        (
            Self {
                tx,
                control: control.clone(),
            },
            rx,
            control,
        )
    }

    /// Queues a frame without waiting. Never blocks the caller.
    pub fn push(&self, out: Outgoing) -> Pushed {
        match self.tx.try_send(out) {
            Ok(()) => Pushed::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.control.close(CloseReason::SlowConsumer) {
                    Pushed::Overflowed
                } else {
                    Pushed::Dropped
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Pushed::Gone,
        }
    }

    /// Queues a frame of the session's own (a reply, history), waiting for room: the
    /// session may wait on its own socket, but not forever.
    pub async fn send(&self, out: Outgoing) -> Result<(), Pushed> {
        match tokio::time::timeout(SEND_TIMEOUT, self.tx.send(out)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Pushed::Gone),
            Err(_) => {
                self.control.close(CloseReason::SlowConsumer);
                Err(Pushed::Dropped)
            }
        }
    }

    /// Waits (briefly) until at least `room` frames fit into the queue.
    pub async fn wait_for_room(&self, room: usize) {
        let deadline = tokio::time::Instant::now() + SEND_TIMEOUT;
        while self.tx.capacity() < room
            && !self.control.is_closing()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }
}

/// Feeds `first` and whatever else is queued (up to a bound), then flushes once.
async fn write_batch<S>(
    sink: &mut S,
    first: Message,
    rx: &mut mpsc::Receiver<Outgoing>,
) -> Result<(), ()>
where
    S: Sink<Message> + Unpin,
{
    sink.feed(first).await.map_err(|_| ())?;
    let mut fed = 1;
    while fed < MAX_FRAMES_PER_FLUSH {
        match rx.try_recv() {
            Ok(out) => {
                sink.feed(out.msg).await.map_err(|_| ())?;
                fed += 1;
            }
            Err(_) => break,
        }
    }
    sink.flush().await.map_err(|_| ())
}

/// Drains the queue into the socket until the connection closes, then sends the close
/// frame that [`Control`] asks for.
pub async fn run_writer<S>(
    mut sink: S,
    mut rx: mpsc::Receiver<Outgoing>,
    control: Arc<Control>,
    coalesce: Duration,
    metrics: Arc<Metrics>,
) where
    S: Sink<Message> + Unpin,
{
    loop {
        let first = tokio::select! {
            biased;
            _ = control.closed() => break,
            next = rx.recv() => match next {
                Some(out) => out,
                None => break,
            },
        };
        if !coalesce.is_zero() {
            // Lets more frames for this socket arrive so that they share one write.
            tokio::time::sleep(coalesce).await;
        }
        if let Some(since) = first.since {
            metrics
                .delivery_latency
                .record(since.elapsed().as_secs_f64());
        }
        // A client that stopped reading blocks the write; a close request must still
        // get through, so the write races it (the close then gets its own deadline).
        let written = tokio::select! {
            r = write_batch(&mut sink, first.msg, &mut rx) => r,
            _ = control.closed() => Ok(()),
        };
        if written.is_err() {
            control.abort();
            return;
        }
    }

    let Some(reason) = control.reason() else {
        return;
    };
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
        if reason == CloseReason::SlowConsumer {
            // What is queued is stale for a client that will recover anyway.
            rx.close();
            while rx.try_recv().is_ok() {}
        } else {
            // A draining or normal close still delivers what was already accepted.
            rx.close();
            while let Ok(out) = rx.try_recv() {
                if sink.feed(out.msg).await.is_err() {
                    return;
                }
            }
        }
        let frame = CloseFrame {
            code: reason.code(),
            reason: reason.text().into(),
        };
        let _ = sink.send(Message::Close(Some(frame))).await;
        let _ = sink.close().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn text(s: &str) -> Outgoing {
        Outgoing::now(Message::Text(s.into()))
    }

    #[tokio::test]
    async fn full_queue_closes_with_4008() {
        let (outbox, _rx, control) = Outbox::new(2);
        assert_eq!(outbox.push(text("a")), Pushed::Queued);
        assert_eq!(outbox.push(text("b")), Pushed::Queued);
        assert_eq!(outbox.push(text("c")), Pushed::Overflowed);
        assert_eq!(outbox.push(text("d")), Pushed::Dropped);
        assert!(control.is_closing());
        assert_eq!(control.reason(), Some(CloseReason::SlowConsumer));
    }

    #[tokio::test]
    async fn first_close_reason_wins() {
        let c = Control::default();
        assert!(c.close(CloseReason::Draining));
        assert!(!c.close(CloseReason::SlowConsumer));
        assert_eq!(c.reason(), Some(CloseReason::Draining));
    }

    #[tokio::test]
    async fn writer_delivers_in_order_then_closes_with_the_reason() {
        let (outbox, rx, control) = Outbox::new(16);
        let (sink, mut seen) = futures_channel_pair();
        for i in 0..5 {
            outbox.push(text(&i.to_string()));
        }
        let metrics = Arc::new(Metrics::new("t"));
        let writer = tokio::spawn(run_writer(
            sink,
            rx,
            control.clone(),
            Duration::ZERO,
            metrics,
        ));
        for i in 0..5 {
            match seen.next().await {
                Some(Message::Text(t)) => assert_eq!(t.as_str(), i.to_string()),
                other => panic!("{other:?}"),
            }
        }
        control.close(CloseReason::Draining);
        writer.await.unwrap();
        match seen.next().await {
            Some(Message::Close(Some(f))) => assert_eq!(f.code, 1001),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn slow_consumer_discards_the_queue() {
        let (outbox, rx, control) = Outbox::new(4);
        for i in 0..5 {
            outbox.push(text(&i.to_string()));
        }
        let (sink, mut seen) = futures_channel_pair();
        let metrics = Arc::new(Metrics::new("t"));
        run_writer(sink, rx, control, Duration::ZERO, metrics).await;
        match seen.next().await {
            Some(Message::Close(Some(f))) => assert_eq!(f.code, 4008),
            other => panic!("expected only the close frame, got {other:?}"),
        }
    }

    /// A sink that forwards into a channel the test reads.
    fn futures_channel_pair() -> (
        impl Sink<Message, Error = ()> + Unpin,
        impl futures_util::Stream<Item = Message> + Unpin,
    ) {
        let (tx, rx) = mpsc::unbounded_channel::<Message>();
        let sink = futures_util::sink::unfold(tx, |tx, m: Message| async move {
            tx.send(m).map_err(|_| ())?;
            Ok::<_, ()>(tx)
        });
        (Box::pin(sink), tokio_stream_from(rx))
    }

    fn tokio_stream_from(
        rx: mpsc::UnboundedReceiver<Message>,
    ) -> impl futures_util::Stream<Item = Message> + Unpin {
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        }))
    }
}
