//! A minimal Redis client for `--via redis`: publishes straight into the backplane
//! (PROTOCOL §4), the way a backend publishes without calling a node. A plain channel
//! gets `PUBLISH` (`SPUBLISH` with `--redis-sharded`) of a ready `message` frame; a
//! durable one gets Herald's own publish script (`EVALSHA`), which PROTOCOL §4 names
//! as the backends' way into durable channels. A publisher sends its due publishes as
//! one pipeline (`--redis-pipeline` at most) and reads their replies in order; on
//! Redis Cluster, one pipeline per primary (`cluster`).

use std::io;
use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// On Redis Cluster: the slot map, and which primary each publish goes to.
#[path = "cluster.rs"]
pub mod cluster;

/// The script nodes run for a durable publish, byte for byte.
const DURABLE_SCRIPT: &str = include_str!("../../backplane/publish.lua");

/// Nesting deeper than this in a reply is not Redis talking; refuse it.
const MAX_DEPTH: usize = 8;

pub struct RespConn {
    stream: TcpStream,
    buf: BytesMut,
    cmd: Vec<u8>,
    /// The durable script's SHA1 once `SCRIPT LOAD` answered it.
    script_sha: Option<String>,
}

/// One RESP2 reply.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

/// What a durable publish is given besides the channel's keys.
pub struct DurableArgs<'a> {
    /// The `message` frame without its closing brace: the script appends the offset.
    pub frame_open: &'a [u8],
    pub history_size: u64,
    pub history_ttl_secs: u64,
    /// Used only where the channel has no epoch yet.
    pub fresh_epoch: &'a str,
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
            script_sha: None,
        })
    }

    /// Queues `PUBLISH channel payload`, or `SPUBLISH` when `sharded` (sent by the
    /// next `send`).
    pub fn push_publish(&mut self, channel: &str, payload: &[u8], sharded: bool) {
        let command: &[u8] = if sharded { b"SPUBLISH" } else { b"PUBLISH" };
        self.push(&[command, channel.as_bytes(), payload]);
    }

    /// Sends one command alone and reads its reply.
    pub async fn command(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        self.push(args);
        self.send().await?;
        self.read_reply().await
    }

    /// Queues Herald's durable publish of `channel` under `prefix`. Call
    /// `ensure_script` first in each batch.
    pub fn push_durable(&mut self, prefix: &str, channel: &str, args: &DurableArgs<'_>) {
        let meta = format!("{prefix}:{{{channel}}}:meta");
        let stream = format!("{prefix}:{{{channel}}}:stream");
        let pubsub = format!("{prefix}:{{{channel}}}:ch");
        let size = args.history_size.to_string();
        let ttl = args.history_ttl_secs.to_string();
        let sha = self.script_sha.clone().unwrap_or_default();
        self.push(&[
            b"EVALSHA",
            sha.as_bytes(),
            b"3",
            meta.as_bytes(),
            stream.as_bytes(),
            pubsub.as_bytes(),
            args.frame_open,
            size.as_bytes(),
            ttl.as_bytes(),
            args.fresh_epoch.as_bytes(),
        ]);
    }

    /// Loads the durable script unless this connection already did. A Redis that
    /// restarted or ran SCRIPT FLUSH forgets it: a `NOSCRIPT` answer (see
    /// `durable_result`) makes the next batch load it again.
    pub async fn ensure_script(&mut self) -> io::Result<()> {
        if self.script_sha.is_some() {
            return Ok(());
        }
        self.push(&[b"SCRIPT", b"LOAD", DURABLE_SCRIPT.as_bytes()]);
        self.send().await?;
        match self.read_reply().await? {
            Reply::Bulk(Some(sha)) => {
                let sha = String::from_utf8(sha).map_err(|e| invalid(e.to_string()))?;
                self.script_sha = Some(sha);
                Ok(())
            }
            other => Err(invalid(format!("SCRIPT LOAD answered {other:?}"))),
        }
    }

    /// Writes every queued command at once (one pipeline).
    pub async fn send(&mut self) -> io::Result<()> {
        let result = self.stream.write_all(&self.cmd).await;
        self.cmd.clear();
        result
    }

    /// The next reply, in the order the commands were sent.
    pub async fn read_reply(&mut self) -> io::Result<Reply> {
        loop {
            if let Some((reply, used)) = parse(&self.buf, 0)? {
                self.buf.advance(used);
                return Ok(reply);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// What a `PUBLISH` (or `SPUBLISH`) reply says: how many subscribers Redis reached.
    pub fn publish_result(reply: Reply) -> Result<i64, String> {
        match reply {
            Reply::Int(n) => Ok(n),
            Reply::Error(e) => Err(e),
            other => Err(format!("PUBLISH answered {other:?}")),
        }
    }

    /// What a durable publish's reply says: the offset the message got.
    pub fn durable_result(&mut self, reply: Reply) -> Result<u64, String> {
        match reply {
            Reply::Array(items) => offset_of(&items).map_err(|e| e.to_string()),
            Reply::Error(e) => {
                if e.starts_with("NOSCRIPT") {
                    self.script_sha = None;
                }
                Err(e)
            }
            other => Err(format!("publish script answered {other:?}")),
        }
    }

    fn push(&mut self, args: &[&[u8]]) {
        self.cmd
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            self.cmd
                .extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            self.cmd.extend_from_slice(arg);
            self.cmd.extend_from_slice(b"\r\n");
        }
    }
}

/// The offset out of the script's `{"ok", epoch, offset}`.
fn offset_of(items: &[Reply]) -> io::Result<u64> {
    match items {
        [Reply::Bulk(Some(status)), _, Reply::Int(offset)] if status == b"ok" => {
            u64::try_from(*offset).map_err(|_| invalid(format!("negative offset {offset}")))
        }
        other => Err(invalid(format!("publish script answered {other:?}"))),
    }
}

/// One reply from the front of `buf`, with the bytes it took; `None` if it is not all
/// there yet.
fn parse(buf: &[u8], depth: usize) -> io::Result<Option<(Reply, usize)>> {
    if depth > MAX_DEPTH {
        return Err(invalid("reply nested too deep".into()));
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, rest)) = buf[..end].split_first() else {
        return Err(invalid("empty reply line".into()));
    };
    let line = std::str::from_utf8(rest).map_err(|e| invalid(e.to_string()))?;
    let number = || -> io::Result<i64> {
        line.parse()
            .map_err(|_| invalid(format!("bad number {line:?}")))
    };
    let after = end + 2;
    Ok(match kind {
        b'+' => Some((Reply::Status(line.to_owned()), after)),
        b'-' => Some((Reply::Error(line.to_owned()), after)),
        b':' => Some((Reply::Int(number()?), after)),
        b'$' => match number()? {
            -1 => Some((Reply::Bulk(None), after)),
            n => {
                let n = usize::try_from(n).map_err(|_| invalid(format!("bulk length {n}")))?;
                if buf.len() < after + n + 2 {
                    None
                } else {
                    Some((
                        Reply::Bulk(Some(buf[after..after + n].to_vec())),
                        after + n + 2,
                    ))
                }
            }
        },
        b'*' => match number()? {
            -1 => Some((Reply::Array(Vec::new()), after)),
            n => {
                let n = usize::try_from(n).map_err(|_| invalid(format!("array length {n}")))?;
                let mut items = Vec::with_capacity(n.min(64));
                let mut at = after;
                for _ in 0..n {
                    match parse(&buf[at..], depth + 1)? {
                        Some((item, used)) => {
                            items.push(item);
                            at += used;
                        }
                        None => return Ok(None),
                    }
                }
                Some((Reply::Array(items), at))
            }
        },
        other => return Err(invalid(format!("unknown reply type {:?}", other as char))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_reply_parses_whole_or_not_at_all() {
        let full = b"*3\r\n$2\r\nok\r\n$3\r\nabc\r\n:42\r\n";
        let (reply, used) = parse(full, 0).unwrap().unwrap();
        assert_eq!(used, full.len());
        let Reply::Array(items) = reply else {
            panic!("not an array: {reply:?}");
        };
        assert_eq!(offset_of(&items).unwrap(), 42);
        for cut in 0..full.len() {
            assert!(parse(&full[..cut], 0).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn error_and_conflict_replies_are_not_offsets() {
        let (reply, _) = parse(b"-NOSCRIPT No matching script\r\n", 0)
            .unwrap()
            .unwrap();
        assert_eq!(reply, Reply::Error("NOSCRIPT No matching script".into()));
        let (Reply::Array(items), _) = parse(b"*1\r\n$8\r\nconflict\r\n", 0).unwrap().unwrap()
        else {
            panic!("not an array");
        };
        assert!(offset_of(&items).is_err());
        assert!(parse(b"?what\r\n", 0).is_err());
    }
}
