//! The outgoing side of one connection: a bounded, ordered queue of frames and the
//! rule for who writes it into the socket (docs/ARCHITECTURE.md decision 4).
//!
//! Fan-out never awaits a socket. The push that finds a connection idle (empty queue,
//! nobody writing) takes the right to write, a [`Flush`], and writes the frame itself
//! with one `send` as soon as it has released whatever guard it holds: no task
//! wake-up, no copy. Pushes that find someone writing append to the queue, and the
//! holder of the flush writes them after what came before, so every connection sees
//! one order. When the kernel's send buffer is full, the flush passes to a small task
//! that waits until the socket is writable and ends when the queue is empty again;
//! an idle connection has no writer task and no queue allocation.
//!
//! The queue holds `limits.outbox_messages` messages (a coalesced batch counts each of
//! its messages). A full queue means the client is not reading: the connection is
//! closed with 4008 and its queue discarded, so it recovers by reconnecting while
//! nobody else waits.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::connection::frame::Frame;
use crate::connection::socket::Socket;
use crate::error::CloseReason;

/// How long a closing connection gets to take its close frame (and, when draining,
/// what was queued before it) before the TCP connection is dropped (PROTOCOL §2.4:
/// "a few seconds").
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a session waits for room in its own queue before it gives up on the
/// client as a slow consumer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// A queue that grew past this many slots gives its memory back once it is empty;
/// smaller ones keep theirs for the next burst.
const KEEP_SLOTS: usize = 64;
/// Fan-outs to at least this many idle connections are written by several tasks.
const PARALLEL_FLUSHES: usize = 256;

/// How a connection is asked to end. Shared by the session, the writer, the hub (slow
/// consumers) and the drain.
#[derive(Debug, Default)]
pub struct Control {
    token: CancellationToken,
    /// 0: no close frame (the peer is gone); else 1 + index of the [`CloseReason`].
    reason: AtomicU8,
    /// Set before `token` is cancelled: the check on every delivery is one load,
    /// where the token's own check takes a lock.
    closing: AtomicBool,
}

const REASONS: [CloseReason; 9] = CloseReason::ALL;

impl Control {
    /// Asks the connection to close with `reason`. The first reason wins.
    pub fn close(&self, reason: CloseReason) -> bool {
        let idx = REASONS.iter().position(|r| *r == reason).unwrap_or(0) as u8 + 1;
        let won = self
            .reason
            .compare_exchange(0, idx, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && !self.closing.swap(true, Ordering::AcqRel);
        self.token.cancel();
        won
    }

    /// Ends the connection without a close frame (the peer vanished or the write failed).
    pub fn abort(&self) {
        self.closing.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub fn reason(&self) -> Option<CloseReason> {
        match self.reason.load(Ordering::Acquire) {
            0 => None,
            i => REASONS.get(i as usize - 1).copied(),
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Whether this close still delivers what the connection was given before its
    /// queue is sealed (a drain, a normal close, an expired token): the client is
    /// healthy and reads on until the close frame. Other closes drop it as stale.
    pub fn delivers_queue(&self) -> bool {
        matches!(
            self.reason(),
            Some(CloseReason::Draining | CloseReason::Normal | CloseReason::TokenExpired)
        )
    }

    pub async fn closed(&self) {
        self.token.cancelled().await
    }
}

/// A connection's [`Control`], for those who close it (the session, the drain): it
/// lives in the connection's shared state, so a handle is that state's `Arc`, and
/// keeps the socket open while it lives (the session drops its own when it ends).
#[derive(Clone)]
pub struct ControlHandle(Outbox);

impl std::ops::Deref for ControlHandle {
    type Target = Control;

    fn deref(&self) -> &Control {
        self.0.control()
    }
}

/// What happened to a frame handed to [`Outbox::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Written, or queued behind frames that will be.
    Queued,
    /// The queue was full and this push closed the connection with 4008.
    Overflowed,
    /// Not queued: the connection is closing (or its queue is full).
    Dropped,
    /// Not queued: the connection no longer takes frames.
    Gone,
}

struct Queue {
    /// Frames not yet (completely) written, oldest first.
    frames: VecDeque<Frame>,
    /// The messages those frames hold (a batch holds several), plus the frame the
    /// [`Flush`] holds until it is written: what the bound counts.
    messages: usize,
    /// Bytes of the front frame already written by a partial write.
    head_written: usize,
    /// Someone holds the [`Flush`]: only it writes; everybody else appends.
    /// When false, `frames` is empty, except after a close, when the writer task hands
    /// what is left to [`Outbox::finish`] (no push is accepted by then).
    flushing: bool,
    /// The connection is closing: nothing is accepted any more.
    sealed: bool,
    /// Tasks waiting in [`Outbox::send`], [`Outbox::wait_for_room`] or
    /// [`Outbox::finish`] for the queue to shrink or the flush to be free.
    waiters: usize,
}

impl Queue {
    fn push_back(&mut self, frame: Frame) {
        self.messages += frame.messages();
        self.frames.push_back(frame);
    }

    /// Puts back the frame that took the flush: it was counted when it took it.
    fn put_back_first(&mut self, frame: Frame) {
        self.frames.push_front(frame);
    }

    fn pop_front(&mut self) {
        if let Some(frame) = self.frames.pop_front() {
            self.messages -= frame.messages();
        }
    }

    fn truncate(&mut self, keep: usize) {
        self.frames.truncate(keep);
        self.messages = self.frames.iter().map(Frame::messages).sum();
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.messages = 0;
    }
}

/// Everything of one connection that a delivery touches, in one allocation: the
/// queue's lock, the close flag and the socket's descriptor are read on every
/// delivery of a fan-out, and each separate allocation was one more cache miss per
/// delivery. `repr(C)` keeps them in this order, next to each other.
#[repr(C)]
struct Shared {
    queue: Mutex<Queue>,
    control: Control,
    socket: Socket,
    capacity: usize,
    /// Signalled when frames leave the queue or the flush is released (only while
    /// `waiters > 0`).
    room: Notify,
    /// Test-only panic point of the writer task.
    #[cfg(test)]
    panic_in_writer: AtomicBool,
}

/// A connection's queue; cheap to clone (the hub keeps one per subscription).
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The right to write a connection's queue, handed out by the push that found the
/// connection idle. Run it (after releasing any guard): it writes, and passes itself
/// to a writer task if the socket is full.
#[must_use = "a flush not run leaves the connection's frames unwritten"]
pub struct Flush {
    outbox: Outbox,
    /// The frame that took the flush; it goes first, before anything queued since.
    first: Option<Frame>,
}

impl Outbox {
    /// The queue of a new connection on `socket`.
    pub fn new(socket: Socket, capacity: usize) -> (Self, ControlHandle) {
        let shared = Arc::new(Shared {
            socket,
            queue: Mutex::new(Queue {
                frames: VecDeque::new(),
                messages: 0,
                head_written: 0,
                flushing: false,
                sealed: false,
                waiters: 0,
            }),
            capacity: capacity.max(1),
            control: Control::default(),
            room: Notify::new(),
            #[cfg(test)]
            panic_in_writer: Default::default(),
        });
        let outbox = Self { shared };
        (outbox.clone(), ControlHandle(outbox))
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic elsewhere must not wedge every later delivery to this connection.
        self.shared.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame without waiting and without writing. When this push found the
    /// connection idle it returns the [`Flush`], which the caller must run once it
    /// holds no guard (the hub runs them after leaving the channel's entry).
    pub fn enqueue(&self, frame: Frame) -> (Pushed, Option<Flush>) {
        let mut q = self.lock();
        let (mut pushed, flush) = self.enqueue_locked(&mut q, frame);
        drop(q);
        if pushed == Pushed::Overflowed && !self.shared.control.close(CloseReason::SlowConsumer) {
            // Another push closed it first: only one overflow is counted.
            pushed = Pushed::Dropped;
        }
        (pushed, flush)
    }

    /// Messages queued (including the one being written) and the queue's bound: what
    /// a slow-consumer close logs, so that a 4008 can be told from a gap close.
    pub fn depth(&self) -> (usize, usize) {
        (self.lock().messages, self.shared.capacity)
    }

    fn enqueue_locked(&self, q: &mut Queue, frame: Frame) -> (Pushed, Option<Flush>) {
        if q.sealed {
            return (Pushed::Gone, None);
        }
        if self.shared.control.is_closing() && !self.shared.control.delivers_queue() {
            return (Pushed::Dropped, None);
        }
        if !q.flushing {
            q.flushing = true;
            // Counted until written: with coalescing a flush waits a tick, and its
            // frame may be a batch, so it must not be slack beyond the bound.
            q.messages += frame.messages();
            let flush = Flush {
                outbox: self.clone(),
                first: Some(frame),
            };
            return (Pushed::Queued, Some(flush));
        }
        if q.messages + frame.messages() > self.shared.capacity {
            // Bounded: a full queue is a slow consumer. The caller closes it with 4008
            // (outside this lock); what is queued is dropped by `finish`.
            return (Pushed::Overflowed, None);
        }
        q.push_back(frame);
        (Pushed::Queued, None)
    }

    /// Queues a frame and, if the connection was idle, writes it now. Never waits.
    pub fn push(&self, frame: Frame) -> Pushed {
        let (pushed, flush) = self.enqueue(frame);
        if let Some(flush) = flush {
            flush.run();
        }
        if pushed == Pushed::Overflowed {
            // The session's own frames (welcome, pong, replies); the hub logs the
            // fan-out's overflows itself, with the channel and the session.
            let (queued, capacity) = self.depth();
            tracing::info!(
                queued,
                capacity,
                "slow consumer: queue full for the session's own frame; closing with 4008"
            );
        }
        pushed
    }

    /// Queues a frame of the session's own (a reply, history), waiting for room: the
    /// session may wait on its own socket, but not forever.
    pub async fn send(&self, frame: Frame) -> Result<(), Pushed> {
        let need = frame.messages();
        let mut frame = Some(frame);
        let mut outcome = None;
        let deadline = Instant::now() + SEND_TIMEOUT;
        let ready = self
            .wait_until(Some(deadline), |q| {
                if q.sealed || self.shared.control.is_closing() {
                    return true;
                }
                if q.flushing && q.messages + need > self.shared.capacity {
                    return false;
                }
                outcome = frame.take().map(|f| self.enqueue_locked(q, f));
                true
            })
            .await;
        if !ready {
            if self.shared.control.close(CloseReason::SlowConsumer) {
                let (queued, capacity) = self.depth();
                tracing::info!(
                    queued,
                    capacity,
                    need,
                    waited_ms = SEND_TIMEOUT.as_millis() as u64,
                    "slow consumer: no room for a reply or history frame in time; closing with 4008"
                );
            }
            return Err(Pushed::Dropped);
        }
        match outcome {
            Some((Pushed::Queued, flush)) => {
                if let Some(flush) = flush {
                    flush.run();
                }
                Ok(())
            }
            Some((pushed, _)) => Err(pushed),
            None => Err(Pushed::Gone),
        }
    }

    /// Waits (briefly) until at least `room` more frames fit into the queue.
    pub async fn wait_for_room(&self, room: usize) {
        let capacity = self.shared.capacity;
        let deadline = Instant::now() + SEND_TIMEOUT;
        self.wait_until(Some(deadline), |q| {
            capacity.saturating_sub(q.messages) >= room
                || q.sealed
                || self.shared.control.is_closing()
        })
        .await;
    }

    /// Waits until `ready`, run under the queue's lock, says yes (true), or until
    /// `deadline` (false). The room signal is armed before each check, so a change
    /// between the check and the wait is never missed.
    async fn wait_until(
        &self,
        deadline: Option<Instant>,
        mut ready: impl FnMut(&mut Queue) -> bool,
    ) -> bool {
        loop {
            let notified = self.shared.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut q = self.lock();
                if ready(&mut q) {
                    return true;
                }
                q.waiters += 1;
            }
            let woke = match deadline {
                Some(at) => tokio::time::timeout_at(at, notified).await.is_ok(),
                None => {
                    notified.await;
                    true
                }
            };
            self.lock().waiters -= 1;
            if !woke {
                return false;
            }
        }
    }

    pub fn control(&self) -> &Control {
        &self.shared.control
    }

    /// The connection's socket (the session reads through it, see
    /// [`crate::connection::socket::ReadHalf`]).
    pub fn socket(&self) -> &Socket {
        &self.shared.socket
    }

    /// Ends the outgoing side once the session is over: nothing more is accepted; a
    /// slow consumer's queue is dropped, a draining or normal close first delivers
    /// what was accepted; then the close frame [`Control`] asks for, within
    /// `CLOSE_WRITE_TIMEOUT` (5 s), and FIN. Returns whether a close frame went out.
    pub async fn finish(&self) -> bool {
        let reason = self.shared.control.reason();
        {
            let mut q = self.lock();
            q.sealed = true;
            if !self.shared.control.delivers_queue() {
                // Stale for a client that will recover anyway; a frame already half
                // written must still be completed, or the stream would be corrupt.
                let keep = usize::from(q.head_written > 0);
                q.truncate(keep);
            }
        }
        let Some(reason) = reason else {
            return false;
        };
        let closed = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
            self.take_flush().await;
            self.lock().push_back(Frame::close(reason));
            loop {
                let written = write_queued(&self.shared, &mut self.lock());
                match written {
                    Ok(true) => return true,
                    Ok(false) => {
                        if self.shared.socket.writable().await.is_err() {
                            return false;
                        }
                    }
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        self.shared.socket.shutdown_write();
        closed
    }

    /// Waits until nobody holds the flush, then holds it (for [`Outbox::finish`]).
    async fn take_flush(&self) {
        self.wait_until(None, |q| !std::mem::replace(&mut q.flushing, true))
            .await;
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.lock().messages
    }
}

impl Flush {
    /// Runs every flush of one fan-out. A large fan-out is split over the runtime's
    /// workers, so one broadcast uses every core; each connection's order is kept by
    /// its own flush, whichever thread runs it.
    pub fn run_all(mut flushes: Vec<Flush>) {
        let handle = match tokio::runtime::Handle::try_current() {
            Ok(h) if flushes.len() >= PARALLEL_FLUSHES => h,
            _ => {
                for flush in flushes {
                    flush.run();
                }
                return;
            }
        };
        let workers = handle.metrics().num_workers().max(1);
        let chunk = flushes.len().div_ceil(workers);
        while flushes.len() > chunk {
            let part = flushes.split_off(flushes.len() - chunk);
            handle.spawn(async move {
                for flush in part {
                    flush.run();
                }
            });
        }
        for flush in flushes {
            flush.run();
        }
    }

    /// Writes the frame that took the flush and everything queued behind it, as far
    /// as the socket takes it now; the rest goes to a writer task.
    pub fn run(mut self) {
        let shared = &self.outbox.shared;
        let mut q = self.outbox.lock();
        if let Some(first) = self.first.take() {
            if q.frames.is_empty() {
                // The common case, an idle connection: one `send`, nothing queued.
                match shared.socket.try_write_frame(&first) {
                    Ok(n) if n == first.wire_len() => q.messages -= first.messages(),
                    Ok(n) => {
                        q.put_back_first(first);
                        q.head_written = n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        q.put_back_first(first);
                        q.head_written = 0;
                    }
                    Err(_) => return fail(shared, q),
                }
            } else {
                q.put_back_first(first);
            }
        }
        // Holding the connection's own lock across the write keeps its frames in
        // order; only pushes to this same connection ever wait for it.
        match write_queued(shared, &mut q) {
            Ok(true) => release(shared, q),
            Ok(false) => {
                drop(q);
                tokio::spawn(write_when_writable(self.outbox.clone()));
            }
            Err(_) => fail(shared, q),
        }
    }
}

/// Writes queued frames until the queue is empty (`true`) or the socket is full
/// (`false`). The caller holds the flush and the lock.
fn write_queued(shared: &Shared, q: &mut Queue) -> io::Result<bool> {
    let mut popped = false;
    let result = loop {
        if q.frames.is_empty() {
            break Ok(true);
        }
        match shared.socket.try_write_frames(&q.frames, q.head_written) {
            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                advance(q, n);
                popped = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
            Err(e) => break Err(e),
        }
    };
    if popped && q.waiters > 0 {
        shared.room.notify_waiters();
    }
    result
}

/// Drops the `n` bytes just written from the front of the queue.
fn advance(q: &mut Queue, mut n: usize) {
    while n > 0 {
        let Some(front) = q.frames.front() else {
            return;
        };
        let left = front.wire_len() - q.head_written;
        if n >= left {
            n -= left;
            q.pop_front();
            q.head_written = 0;
        } else {
            q.head_written += n;
            return;
        }
    }
}

/// Gives the flush back (the queue is empty).
fn release(shared: &Shared, mut q: MutexGuard<'_, Queue>) {
    q.flushing = false;
    if q.frames.capacity() > KEEP_SLOTS {
        q.frames = VecDeque::new();
    }
    let wake = q.waiters > 0;
    drop(q);
    if wake {
        shared.room.notify_waiters();
    }
}

/// The socket failed: nothing more can be written; the session ends without a close
/// frame.
fn fail(shared: &Shared, mut q: MutexGuard<'_, Queue>) {
    q.clear();
    q.head_written = 0;
    q.sealed = true;
    release(shared, q);
    shared.control.abort();
}

/// Holds the flush of a connection whose socket was full: waits until the kernel
/// takes more, writes, and ends when the queue is empty. A close hands the flush to
/// [`Outbox::finish`], which bounds how long a close may wait for a full socket.
async fn write_when_writable(outbox: Outbox) {
    let mut guard = AbortUnlessDone {
        control: &outbox.shared.control,
        done: false,
    };
    write_until_empty(&outbox).await;
    guard.done = true;
}

/// Ends the connection when the writer task ends any other way than through its own
/// end (a panic unwinds it, or the runtime drops it): the flush it holds would never be
/// given back, and the connection would sit with a queue nobody writes. The abort
/// wakes the session, which then leaves its channels and unregisters.
struct AbortUnlessDone<'a> {
    control: &'a Control,
    done: bool,
}

impl Drop for AbortUnlessDone<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.control.abort();
        }
    }
}

async fn write_until_empty(outbox: &Outbox) {
    let shared = &outbox.shared;
    loop {
        #[cfg(test)]
        if shared.panic_in_writer.load(Ordering::Relaxed) {
            panic!("test-only panic point in a writer task");
        }
        tokio::select! {
            biased;
            _ = shared.control.closed() => break,
            ready = shared.socket.writable() => {
                if ready.is_err() {
                    return fail(shared, outbox.lock());
                }
            }
        }
        let mut q = outbox.lock();
        match write_queued(shared, &mut q) {
            Ok(true) => return release(shared, q),
            Ok(false) => continue,
            Err(_) => return fail(shared, q),
        }
    }
    let mut q = outbox.lock();
    q.flushing = false;
    let wake = q.waiters > 0;
    drop(q);
    if wake {
        shared.room.notify_waiters();
    }
}

/// Real loopback connections for the unit tests of the outbox and the hub.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use futures_util::StreamExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// The client end of a test connection.
    pub struct Peer {
        pub ws: WebSocketStream<TcpStream>,
    }

    impl Peer {
        /// The next text frame (waiting up to 5 s, for a loaded machine).
        pub async fn text(&mut self) -> Option<String> {
            self.text_within(Duration::from_secs(5)).await
        }

        /// True when no frame arrives within 200 ms.
        pub async fn silent(&mut self) -> bool {
            self.text_within(Duration::from_millis(200)).await.is_none()
        }

        async fn text_within(&mut self, limit: Duration) -> Option<String> {
            match tokio::time::timeout(limit, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => Some(t.as_str().to_owned()),
                Ok(other) => panic!("expected a text frame, got {other:?}"),
                Err(_) => None,
            }
        }
    }

    /// A server-side outbox and the client end of its socket, unread until the
    /// test reads it.
    pub async fn connection(capacity: usize) -> (Outbox, ControlHandle, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (outbox, control) = Outbox::new(Socket::new(server), capacity);
        (outbox, control, client)
    }

    pub async fn peer(tcp: TcpStream) -> Peer {
        Peer {
            ws: WebSocketStream::from_raw_socket(tcp, Role::Client, None).await,
        }
    }

    /// Pushes large frames until the socket is full and `n` frames wait in the
    /// queue; returns how many were pushed.
    pub fn fill(outbox: &Outbox, n: usize) -> usize {
        let big = "x".repeat(256 * 1024);
        let mut pushed = 0;
        while outbox.queued() < n {
            assert_eq!(
                outbox.push(Frame::text(format!("{pushed}:{big}"))),
                Pushed::Queued
            );
            pushed += 1;
            assert!(pushed < 10_000, "the socket never filled");
        }
        pushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::net::TcpStream;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;

    async fn pair(capacity: usize) -> (Outbox, ControlHandle, TcpStream) {
        testing::connection(capacity).await
    }

    async fn client(tcp: TcpStream) -> WebSocketStream<TcpStream> {
        testing::peer(tcp).await.ws
    }

    use testing::fill;

    #[tokio::test]
    async fn frames_arrive_in_order_then_the_close_frame_of_the_reason() {
        let (outbox, control, tcp) = pair(16).await;
        for i in 0..5 {
            assert_eq!(outbox.push(Frame::text(i.to_string())), Pushed::Queued);
        }
        control.close(CloseReason::Draining);
        assert!(outbox.finish().await);
        let mut ws = client(tcp).await;
        for i in 0..5 {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), i.to_string()),
                other => panic!("{other:?}"),
            }
        }
        match ws.next().await {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1001),
            other => panic!("{other:?}"),
        }
        assert_eq!(outbox.push(Frame::text("late")), Pushed::Gone);
    }

    #[tokio::test]
    async fn a_full_socket_queues_and_a_writer_task_drains_it_in_order() {
        let (outbox, _control, tcp) = pair(1024).await;
        let pushed = fill(&outbox, 3);
        let mut ws = client(tcp).await;
        for i in 0..pushed {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    assert!(
                        t.as_str().starts_with(&format!("{i}:")),
                        "frame {i} out of order"
                    )
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(outbox.queued(), 0);
    }

    #[tokio::test]
    async fn a_writer_task_that_panics_ends_its_connection() {
        let (outbox, control, tcp) = pair(1024).await;
        outbox.shared.panic_in_writer.store(true, Ordering::Relaxed);
        // A full socket hands the flush to a writer task, which hits the panic point.
        fill(&outbox, 3);
        tokio::time::timeout(Duration::from_secs(5), control.closed())
            .await
            .expect("the connection ends when its writer task dies");
        assert!(control.is_closing());
        drop(tcp);
    }

    #[tokio::test]
    async fn a_full_queue_closes_with_4008_and_drops_what_waits() {
        let (outbox, control, tcp) = pair(2).await;
        let pushed = fill(&outbox, 2);
        assert_eq!(outbox.push(Frame::text("over")), Pushed::Overflowed);
        assert_eq!(outbox.push(Frame::text("after")), Pushed::Dropped);
        assert_eq!(control.reason(), Some(CloseReason::SlowConsumer));
        let reader = tokio::spawn(async move {
            let mut ws = client(tcp).await;
            let mut texts = 0;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(_))) => texts += 1,
                    Some(Ok(Message::Close(Some(f)))) => return (texts, u16::from(f.code)),
                    other => panic!("{other:?}"),
                }
            }
        });
        assert!(outbox.finish().await);
        let (texts, code) = reader.await.unwrap();
        assert_eq!(code, 4008);
        assert!(
            texts < pushed,
            "the queued frames were dropped ({texts} of {pushed} arrived)"
        );
    }

    #[tokio::test]
    async fn a_batch_counts_each_of_its_messages_against_the_bound() {
        let batch = |n: usize| {
            let mut wire = bytes::BytesMut::new();
            for i in 0..n {
                Frame::append_framed_text(&mut wire, &i.to_string().into());
            }
            Frame::Batch {
                wire: wire.freeze(),
                messages: n,
            }
        };
        let (outbox, control, _tcp) = pair(4).await;
        fill(&outbox, 1);
        assert_eq!(outbox.push(batch(3)), Pushed::Queued);
        assert_eq!(outbox.queued(), 4);
        assert_eq!(control.reason(), None);
        assert_eq!(outbox.push(batch(1)), Pushed::Overflowed);
        assert_eq!(control.reason(), Some(CloseReason::SlowConsumer));

        let (outbox, control, _tcp) = pair(4).await;
        fill(&outbox, 1);
        assert_eq!(outbox.push(batch(4)), Pushed::Overflowed, "1 + 4 > 4");
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
    async fn send_waits_for_room() {
        let (outbox, _control, tcp) = pair(2).await;
        fill(&outbox, 2);
        let sender = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.send(Frame::text("mine")).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !sender.is_finished(),
            "send must wait while the queue is full"
        );
        let mut ws = client(tcp).await;
        tokio::spawn(async move { while ws.next().await.is_some() {} });
        assert_eq!(sender.await.unwrap(), Ok(()));
    }
}
