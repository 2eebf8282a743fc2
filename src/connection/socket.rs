//! One client's TCP connection after the WebSocket handshake, or the body of a
//! session's HTTP streaming response ([`StreamSink`], PROTOCOL §2.5). It lives in the
//! connection's outbox (one allocation per connection) and has two users: the session
//! reads client frames through tungstenite ([`ReadHalf`], WebSocket only), and the
//! outbox writes server frames straight into the kernel ([`Socket::try_write_frames`]).
//!
//! Writes bypass tungstenite on purpose: a server frame is a header plus the shared
//! payload (see [`crate::connection::frame`]), so a delivery is one `send` from whichever
//! thread fans out, with no task wake-up, no per-socket write buffer and no copy. What
//! tungstenite would write itself (automatic pongs, close replies) is discarded by
//! [`ReadHalf`]: the session answers pings and closes through the outbox, so every
//! byte on the wire goes through one ordered queue.

use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::connection::frame::{Frame, MAX_HEADER};
use crate::connection::outbox::Outbox;
use crate::connection::stream_sink::StreamSink;

/// Flags of the fan-out's sends: a vanished peer is an `EPIPE` error, never a
/// SIGPIPE, whatever the process does with signals (std's own `send` does the same).
/// Where the flag does not exist (macOS), Rust's runtime ignores SIGPIPE.
#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd"
))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd"
)))]
const SEND_FLAGS: libc::c_int = 0;

/// Most frames handed to one `sendmsg` (two slices each: header and payload).
pub const FRAMES_PER_WRITE: usize = 16;

pub struct Socket {
    kind: Kind,
}

enum Kind {
    Tcp(TcpStream),
    Stream(StreamSink),
}

impl Socket {
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            kind: Kind::Tcp(tcp),
        }
    }

    /// The socket of a session on an HTTP streaming transport.
    pub fn stream(sink: StreamSink) -> Self {
        Self {
            kind: Kind::Stream(sink),
        }
    }

    fn tcp(&self) -> io::Result<&TcpStream> {
        match &self.kind {
            Kind::Tcp(tcp) => Ok(tcp),
            Kind::Stream(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    /// Writes one frame (header and payload) as far as the kernel takes it now: the
    /// fan-out's common case, without the batch path's slice arrays.
    pub fn try_write_frame(&self, frame: &Frame) -> io::Result<usize> {
        if let Kind::Stream(sink) = &self.kind {
            return sink.try_write_frames([frame], 0);
        }
        let (header, len) = frame.header();
        if len == 0 {
            return self.send_now(&[IoSlice::new(frame.payload())]);
        }
        let slices = [IoSlice::new(&header[..len]), IoSlice::new(frame.payload())];
        self.send_now(&slices)
    }

    /// Writes as much of `frames` as the kernel takes without blocking, starting `skip`
    /// bytes into the first frame (the rest of a partial write). Returns the bytes
    /// written; `WouldBlock` when the socket's send buffer is full.
    pub fn try_write_frames<'a>(
        &self,
        frames: impl IntoIterator<Item = &'a Frame>,
        skip: usize,
    ) -> io::Result<usize> {
        if let Kind::Stream(sink) = &self.kind {
            return sink.try_write_frames(frames.into_iter().take(FRAMES_PER_WRITE), skip);
        }
        let mut headers = [([0u8; MAX_HEADER], 0usize); FRAMES_PER_WRITE];
        let mut payloads: [&[u8]; FRAMES_PER_WRITE] = [&[]; FRAMES_PER_WRITE];
        let mut n = 0;
        for frame in frames.into_iter().take(FRAMES_PER_WRITE) {
            headers[n] = frame.header();
            payloads[n] = frame.payload();
            n += 1;
        }
        let mut slices = [IoSlice::new(&[]); 2 * FRAMES_PER_WRITE];
        let mut used = 0;
        let mut skip = skip;
        for i in 0..n {
            let (header, len) = &headers[i];
            let mut header = &header[..*len];
            let mut payload = payloads[i];
            if skip > 0 {
                let h = skip.min(header.len());
                header = &header[h..];
                payload = &payload[(skip - h).min(payload.len())..];
                skip = 0;
            }
            if !header.is_empty() {
                slices[used] = IoSlice::new(header);
                used += 1;
            }
            if !payload.is_empty() {
                slices[used] = IoSlice::new(payload);
                used += 1;
            }
        }
        if used == 0 {
            return Ok(0);
        }
        self.send_now(&slices[..used])
    }

    /// Sends `slices` straight to the kernel. Tokio's `try_write` first reads the
    /// socket's readiness word, a cache line of its own that is cold on every
    /// delivery of a large fan-out (the biggest user-space cost of a broadcast); a
    /// socket that has room needs no such check, and one that has none answers
    /// `WouldBlock` either way. Only then is tokio told (its readiness cleared, so
    /// that [`Socket::writable`] waits for the next edge), and the send is tried once
    /// more: room freed between the first try and the clearing would otherwise never
    /// be announced again.
    fn send_now(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        match self.send_once(slices) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let _ = self.tcp()?.try_io(Interest::WRITABLE, || {
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                });
                self.send_once(slices)
            }
            done => done,
        }
    }

    fn send_once(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        let sock = socket2::SockRef::from(self.tcp()?);
        loop {
            let sent = match slices {
                [one] => sock.send_with_flags(one, SEND_FLAGS),
                _ => sock.send_vectored_with_flags(slices, SEND_FLAGS),
            };
            match sent {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                done => return done,
            }
        }
    }

    /// Waits until the kernel takes more bytes.
    pub async fn writable(&self) -> io::Result<()> {
        match &self.kind {
            Kind::Tcp(tcp) => tcp.writable().await,
            Kind::Stream(sink) => sink.writable().await,
        }
    }

    /// Sends FIN after what was written (the close handshake's end on our side); a
    /// streaming response ends its body.
    pub fn shutdown_write(&self) {
        match &self.kind {
            Kind::Tcp(tcp) => {
                let _ = socket2::SockRef::from(tcp).shutdown(Shutdown::Write);
            }
            Kind::Stream(sink) => sink.shutdown(),
        }
    }
}

/// The reading side given to tungstenite: bytes come from the shared socket; bytes
/// tungstenite writes (its automatic pong and close replies) are dropped, since the
/// session sends its own through the outbox.
pub struct ReadHalf {
    /// The socket lives in the connection's outbox (one allocation per connection).
    outbox: Outbox,
}

impl ReadHalf {
    pub fn new(outbox: Outbox) -> Self {
        Self { outbox }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let tcp = match self.outbox.socket().tcp() {
            Ok(tcp) => tcp,
            Err(e) => return Poll::Ready(Err(e)),
        };
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            match tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale; polling again registers for the next event.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for ReadHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    async fn pair() -> (Socket, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Socket::new(server), client)
    }

    /// The direct send must leave tokio knowing that the socket is full: otherwise
    /// the writer task's `writable()` returns at once, forever (a busy loop), or, if
    /// room freed in between were lost, never.
    #[tokio::test]
    async fn a_full_socket_waits_for_room_and_wakes_when_the_peer_reads() {
        let (socket, mut client) = pair().await;
        // Tokio has seen the socket writable (its readiness word is set) before the
        // sends below fill it without asking tokio.
        socket.writable().await.unwrap();
        let frame = Frame::text("x".repeat(64 * 1024));
        let mut written = 0usize;
        loop {
            match socket.try_write_frame(&frame) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
            assert!(written < 1 << 30, "the socket never filled");
        }
        let early = tokio::time::timeout(Duration::from_millis(200), socket.writable()).await;
        assert!(
            early.is_err(),
            "writable() returned while the socket was full"
        );
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0;
            while total < written {
                let n = client.read(&mut buf).await.unwrap();
                assert!(n > 0);
                total += n;
            }
        });
        tokio::time::timeout(Duration::from_secs(5), socket.writable())
            .await
            .expect("no wake-up after the peer read")
            .unwrap();
        assert!(socket.try_write_frame(&frame).unwrap() > 0);
        reader.abort();
    }

    #[tokio::test]
    async fn writing_resumes_exactly_where_a_partial_write_stopped() {
        let frames = [Frame::text("hello"), Frame::text("world")];
        let mut whole = Vec::new();
        for f in &frames {
            let (h, n) = f.header();
            whole.extend_from_slice(&h[..n]);
            whole.extend_from_slice(f.payload());
        }
        // Inside the first header, inside its payload, its last byte, its end.
        for skip in [0, 1, 4, 6, 7] {
            let (socket, mut client) = pair().await;
            let n = socket.try_write_frames(&frames, skip).unwrap();
            assert_eq!(n, whole.len() - skip);
            let mut got = vec![0u8; n];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, whole[skip..], "skip {skip}");
        }
        let (socket, mut client) = pair().await;
        assert_eq!(socket.try_write_frame(&frames[0]).unwrap(), 7);
        let mut got = [0u8; 7];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, whole[..7]);
    }
}
