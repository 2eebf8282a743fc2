//! A minimal Redis client for `--via redis`: `PUBLISH` of a ready `message` frame
//! straight into the backplane (PROTOCOL §4), the way a backend publishes without
//! calling a node. One command in flight per connection, like the HTTP publishers.

use std::io;
use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct RespConn {
    stream: TcpStream,
    buf: BytesMut,
    cmd: Vec<u8>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl RespConn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: BytesMut::with_capacity(256),
            cmd: Vec::with_capacity(512),
        })
    }

    /// `PUBLISH channel payload`; returns how many subscribers Redis reached.
    pub async fn publish(&mut self, channel: &str, payload: &[u8]) -> io::Result<i64> {
        self.cmd.clear();
        self.cmd.extend_from_slice(b"*3\r\n$7\r\nPUBLISH\r\n");
        for arg in [channel.as_bytes(), payload] {
            self.cmd
                .extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            self.cmd.extend_from_slice(arg);
            self.cmd.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&self.cmd).await?;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.advance(end + 2);
                return match line.strip_prefix(':') {
                    Some(n) => n
                        .parse()
                        .map_err(|_| invalid(format!("bad integer reply {line:?}"))),
                    None => Err(invalid(format!("redis: {line}"))),
                };
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}
