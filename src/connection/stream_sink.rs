//! The outgoing side of a session on an HTTP streaming transport (PROTOCOL §2.5):
//! Server-Sent Events (`GET /sse`) or newline-delimited JSON (`POST /stream`). The
//! outbox writes the same [`Frame`]s as for a WebSocket; this file encodes them for the
//! response body and hands each write to hyper through a small bounded channel.
//!
//! A frame the hub framed once for WebSocket subscribers (`Framed`, `Batch`) is read
//! back into its text payloads here, so the fan-out never needs to know which
//! transport a subscriber uses. A text payload is written as it is, except that a raw
//! CR or LF (only ever JSON whitespace in a valid frame) becomes a space, since both
//! encodings end a frame with a newline. Pings become keep-alive lines; a close
//! becomes a last `close` frame; pongs are not sent.
//!
//! The channel holds [`CHUNKS`] writes. When it is full the sink answers `WouldBlock`
//! like a full socket, and the outbox's bound (`limits.outbox_messages`) decides, as
//! on a WebSocket, when the client is a slow consumer (4008).

use std::io;
use std::sync::Mutex;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::connection::frame::Frame;

/// Writes in flight between the outbox and hyper, per session.
pub const CHUNKS: usize = 16;

/// How frames are written into the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `text/event-stream`: `data: <frame>` and a blank line; keep-alive is a comment.
    Sse,
    /// `application/x-ndjson`: one frame per line; keep-alive is an empty line.
    Ndjson,
}

impl Encoding {
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Sse => "text/event-stream; charset=utf-8",
            Encoding::Ndjson => "application/x-ndjson; charset=utf-8",
        }
    }

    fn keep_alive(self) -> &'static [u8] {
        match self {
            Encoding::Sse => b":\n\n",
            Encoding::Ndjson => b"\n",
        }
    }

    fn put_frame(self, out: &mut BytesMut, text: &[u8]) {
        if self == Encoding::Sse {
            out.put_slice(b"data: ");
        }
        let start = out.len();
        out.put_slice(text);
        for b in &mut out[start..] {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
        out.put_slice(if self == Encoding::Sse {
            b"\n\n"
        } else {
            b"\n"
        });
    }
}

pub struct StreamSink {
    encoding: Encoding,
    /// None once the stream is ended (the body then ends after what was sent).
    tx: Mutex<Option<mpsc::Sender<Bytes>>>,
}

impl StreamSink {
    /// A sink and the receiving end that becomes the response body.
    pub fn new(encoding: Encoding) -> (Self, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(CHUNKS);
        let sink = Self {
            encoding,
            tx: Mutex::new(Some(tx)),
        };
        (sink, rx)
    }

    fn sender(&self) -> Option<mpsc::Sender<Bytes>> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Encodes whole frames and hands them over in one write. Returns the frames'
    /// WebSocket wire length (what the outbox counts), less `skip`: a sink never
    /// writes part of a frame, so `skip` is 0 unless a caller mixes up sockets.
    pub fn try_write_frames<'a>(
        &self,
        frames: impl IntoIterator<Item = &'a Frame>,
        skip: usize,
    ) -> io::Result<usize> {
        let mut out = BytesMut::new();
        let mut counted = 0usize;
        for frame in frames {
            counted += frame.wire_len();
            self.encode(frame, &mut out)?;
        }
        let counted = counted.saturating_sub(skip);
        if out.is_empty() {
            return Ok(counted);
        }
        let Some(tx) = self.sender() else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        match tx.try_send(out.freeze()) {
            Ok(()) => Ok(counted),
            Err(mpsc::error::TrySendError::Full(_)) => Err(io::ErrorKind::WouldBlock.into()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// Waits until a write fits; an error once the client is gone.
    pub async fn writable(&self) -> io::Result<()> {
        let Some(tx) = self.sender() else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        // The permit is given back at once: the outbox's flush holder is the only
        // writer, so the room is still there when it writes.
        tx.reserve()
            .await
            .map(drop)
            .map_err(|_| io::ErrorKind::BrokenPipe.into())
    }

    /// Ends the stream after what was written.
    pub fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn encode(&self, frame: &Frame, out: &mut BytesMut) -> io::Result<()> {
        match frame {
            Frame::Text(t) => self.encoding.put_frame(out, t.as_str().as_bytes()),
            Frame::Framed(wire) | Frame::Batch { wire, .. } => {
                let mut rest: &[u8] = wire;
                while !rest.is_empty() {
                    let (payload, next) = split_frame(rest)?;
                    self.encoding.put_frame(out, payload);
                    rest = next;
                }
            }
            Frame::Ping => out.put_slice(self.encoding.keep_alive()),
            Frame::Pong(_) => {}
            Frame::Close(payload) => {
                let frame = close_frame(payload);
                self.encoding.put_frame(out, frame.as_bytes());
            }
        }
        Ok(())
    }
}

/// The payload of the first unmasked frame in `wire` and what follows it. The wire is
/// the node's own framing (`Frame::framed_text`), so an error here is a bug, reported
/// as an I/O error that ends the connection rather than a panic.
fn split_frame(wire: &[u8]) -> io::Result<(&[u8], &[u8])> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed framed text");
    let len_byte = *wire.get(1).ok_or_else(bad)? & 0x7f;
    let (len, header): (usize, usize) = match len_byte {
        126 => {
            let b = wire.get(2..4).ok_or_else(bad)?;
            (u16::from_be_bytes([b[0], b[1]]) as usize, 4)
        }
        127 => {
            let b = wire.get(2..10).ok_or_else(bad)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            (
                usize::try_from(u64::from_be_bytes(a)).map_err(|_| bad())?,
                10,
            )
        }
        n => (n as usize, 2),
    };
    let end = header.checked_add(len).ok_or_else(bad)?;
    let payload = wire.get(header..end).ok_or_else(bad)?;
    Ok((payload, &wire[end..]))
}

/// The `close` frame of PROTOCOL §2.5 for a WebSocket close payload (code, reason).
fn close_frame(payload: &[u8]) -> String {
    let code = match payload {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 1000,
    };
    let reason = payload
        .get(2..)
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    serde_json::json!({"type": "close", "code": code, "reason": reason}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CloseReason;
    use axum::extract::ws::Utf8Bytes;

    fn written(sink: &StreamSink, rx: &mut mpsc::Receiver<Bytes>, frames: &[Frame]) -> String {
        let n = sink.try_write_frames(frames, 0).unwrap();
        assert_eq!(n, frames.iter().map(Frame::wire_len).sum::<usize>());
        match rx.try_recv() {
            Ok(b) => String::from_utf8(b.to_vec()).unwrap(),
            Err(_) => String::new(),
        }
    }

    #[test]
    fn sse_writes_data_lines_and_comments() {
        let (sink, mut rx) = StreamSink::new(Encoding::Sse);
        let text: Utf8Bytes = r#"{"type":"message","data":1}"#.into();
        let framed = Frame::framed_text(&text);
        let out = written(
            &sink,
            &mut rx,
            &[Frame::text("{\"a\":\n1}"), framed, Frame::Ping],
        );
        assert_eq!(
            out,
            "data: {\"a\": 1}\n\ndata: {\"type\":\"message\",\"data\":1}\n\n:\n\n"
        );
        assert_eq!(written(&sink, &mut rx, &[Frame::Pong(Bytes::new())]), "");
    }

    #[test]
    fn ndjson_reads_batches_back_into_lines() {
        let (sink, mut rx) = StreamSink::new(Encoding::Ndjson);
        let mut wire = BytesMut::new();
        let long = format!("{{\"d\":\"{}\"}}", "x".repeat(70_000));
        for t in ["{\"n\":1}", "{\"n\":2}", long.as_str()] {
            Frame::append_framed_text(&mut wire, &Utf8Bytes::from(t));
        }
        let batch = Frame::Batch {
            wire: wire.freeze(),
            messages: 3,
        };
        let out = written(&sink, &mut rx, &[batch, Frame::Ping]);
        assert_eq!(out, format!("{{\"n\":1}}\n{{\"n\":2}}\n{long}\n\n"));
    }

    #[test]
    fn a_close_becomes_a_close_frame() {
        let (sink, mut rx) = StreamSink::new(Encoding::Ndjson);
        let out = written(&sink, &mut rx, &[Frame::close(CloseReason::Draining)]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["type"], "close");
        assert_eq!(v["code"], 1001);
    }

    #[tokio::test]
    async fn a_full_channel_is_a_full_socket_and_a_gone_client_a_broken_pipe() {
        let (sink, mut rx) = StreamSink::new(Encoding::Sse);
        for _ in 0..CHUNKS {
            sink.try_write_frames(&[Frame::Ping], 0).unwrap();
        }
        let e = sink.try_write_frames(&[Frame::Ping], 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        rx.recv().await.unwrap();
        sink.writable().await.unwrap();
        sink.try_write_frames(&[Frame::Ping], 0).unwrap();
        drop(rx);
        let e = sink.try_write_frames(&[Frame::Ping], 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert!(sink.writable().await.is_err());
    }

    #[test]
    fn malformed_framing_is_an_error_not_a_panic() {
        for wire in [
            &[0x81u8][..],
            &[0x81, 126, 0],
            &[0x81, 5, b'a'],
            &[0x81, 127, 0, 0],
        ] {
            assert!(split_frame(wire).is_err(), "{wire:?}");
        }
    }

    #[test]
    fn shutdown_ends_the_stream() {
        let (sink, mut rx) = StreamSink::new(Encoding::Sse);
        sink.shutdown();
        assert!(matches!(
            rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        assert!(sink.try_write_frames(&[Frame::Ping], 0).is_err());
    }
}
