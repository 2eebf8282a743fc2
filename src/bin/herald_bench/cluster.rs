//! Where a `--via redis` publisher sends its commands: one Redis, or on Redis Cluster
//! (`--redis redis-cluster://…`) the primary that owns each channel's slot, read with
//! `CLUSTER SLOTS` from the first seed that answers, as a cluster client library does.
//! A redirection (`MOVED`, `ASK`) or a broken connection makes the next batch read the
//! slot map again.

use std::io;
use std::net::{IpAddr, SocketAddr};

use fred::util::redis_keyslot;

use crate::resp::{Reply, RespConn};

/// Slots of Redis Cluster.
const SLOTS: usize = 16384;

/// The Redis of `--redis`: one server, or a cluster given by its seeds.
#[derive(Debug, Clone, PartialEq)]
pub enum RedisTarget {
    One(SocketAddr),
    Cluster(Vec<SocketAddr>),
}

impl RedisTarget {
    /// `redis://IP:PORT` or `redis-cluster://IP:PORT?node=IP:PORT&node=…`, every
    /// address on loopback.
    pub fn parse(url: &str) -> Result<RedisTarget, String> {
        let addr = |hostport: &str| -> Result<SocketAddr, String> {
            let addr: SocketAddr = hostport
                .trim_end_matches('/')
                .parse()
                .map_err(|e| format!("{hostport}: {e} (expected IP:PORT)"))?;
            if !addr.ip().is_loopback() {
                return Err(format!("{addr} is not on loopback"));
            }
            Ok(addr)
        };
        if let Some(rest) = url.strip_prefix("redis-cluster://") {
            let (first, query) = rest.split_once('?').unwrap_or((rest, ""));
            let mut seeds = vec![addr(first)?];
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("node", hostport)) => seeds.push(addr(hostport)?),
                    _ => return Err(format!("{pair}: only node=IP:PORT is understood")),
                }
            }
            return Ok(RedisTarget::Cluster(seeds));
        }
        Ok(RedisTarget::One(addr(
            url.strip_prefix("redis://").unwrap_or(url),
        )?))
    }
}

/// A cluster's primaries and which of them owns each slot.
#[derive(Debug)]
pub struct Shards {
    pub primaries: Vec<SocketAddr>,
    /// Index into `primaries` per slot (`u16::MAX`: no owner in the map).
    owner: Vec<u16>,
}

impl Shards {
    /// Reads the slot map from the first of `seeds` that answers `CLUSTER SLOTS`.
    pub async fn discover(seeds: &[SocketAddr]) -> io::Result<Shards> {
        let mut last = io::Error::other("no seed");
        for &seed in seeds {
            let reply = async {
                let mut c = RespConn::connect(seed).await?;
                c.command(&[b"CLUSTER", b"SLOTS"]).await
            }
            .await;
            match reply.and_then(|r| Shards::from_reply(r, seed.ip()).map_err(io::Error::other)) {
                Ok(shards) => return Ok(shards),
                Err(e) => last = io::Error::new(e.kind(), format!("{seed}: {e}")),
            }
        }
        Err(last)
    }

    /// The map of a `CLUSTER SLOTS` reply: `[start, end, [ip, port, …], replicas…]` per
    /// range. An empty ip means the server asked (`seed`).
    fn from_reply(reply: Reply, seed: IpAddr) -> Result<Shards, String> {
        let Reply::Array(ranges) = reply else {
            return Err(format!("CLUSTER SLOTS answered {reply:?}"));
        };
        let mut shards = Shards {
            primaries: Vec::new(),
            owner: vec![u16::MAX; SLOTS],
        };
        for range in ranges {
            let (start, end, ip, port) = match &range {
                Reply::Array(items) => match items.as_slice() {
                    [
                        Reply::Int(start),
                        Reply::Int(end),
                        Reply::Array(primary),
                        ..,
                    ] => match primary.as_slice() {
                        [Reply::Bulk(Some(ip)), Reply::Int(port), ..] => {
                            (*start, *end, ip.as_slice(), *port)
                        }
                        _ => return Err(format!("a slot range's primary: {primary:?}")),
                    },
                    _ => return Err(format!("a slot range: {range:?}")),
                },
                _ => return Err(format!("a slot range: {range:?}")),
            };
            let ip = if ip.is_empty() {
                seed
            } else {
                std::str::from_utf8(ip)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("primary address {:?}", String::from_utf8_lossy(ip)))?
            };
            let port = u16::try_from(port).map_err(|_| format!("primary port {port}"))?;
            let addr = SocketAddr::new(ip, port);
            if !addr.ip().is_loopback() {
                return Err(format!("primary {addr} is not on loopback"));
            }
            let index = match shards.primaries.iter().position(|p| *p == addr) {
                Some(i) => i,
                None => {
                    shards.primaries.push(addr);
                    shards.primaries.len() - 1
                }
            };
            let (Ok(start), Ok(end)) = (usize::try_from(start), usize::try_from(end)) else {
                return Err(format!("slot range {start}-{end}"));
            };
            if start > end || end >= SLOTS {
                return Err(format!("slot range {start}-{end}"));
            }
            let index = u16::try_from(index).map_err(|_| "too many primaries".to_string())?;
            shards.owner[start..=end].fill(index);
        }
        if shards.primaries.is_empty() {
            return Err("CLUSTER SLOTS named no primary".into());
        }
        Ok(shards)
    }

    /// Index into `primaries` of the primary owning `key`'s slot (the first one for a
    /// slot the map left without owner: it answers `MOVED`, which reads the map again).
    pub fn owner_of(&self, key: &str) -> usize {
        let slot = usize::from(redis_keyslot(key.as_bytes())) % SLOTS;
        match self.owner[slot] {
            u16::MAX => 0,
            i => usize::from(i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary(ip: &str, port: i64) -> Reply {
        Reply::Array(vec![
            Reply::Bulk(Some(ip.as_bytes().to_vec())),
            Reply::Int(port),
            Reply::Bulk(Some(b"id".to_vec())),
        ])
    }

    #[test]
    fn cluster_urls_name_every_seed() {
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:7000"),
            Ok(RedisTarget::One("127.0.0.1:7000".parse().unwrap()))
        );
        assert_eq!(
            RedisTarget::parse(
                "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001&node=127.0.0.1:7002"
            ),
            Ok(RedisTarget::Cluster(vec![
                "127.0.0.1:7000".parse().unwrap(),
                "127.0.0.1:7001".parse().unwrap(),
                "127.0.0.1:7002".parse().unwrap(),
            ]))
        );
        assert!(RedisTarget::parse("redis-cluster://127.0.0.1:7000?node=10.0.0.1:7001").is_err());
        assert!(RedisTarget::parse("redis-cluster://127.0.0.1:7000?seed=127.0.0.1:1").is_err());
        assert!(RedisTarget::parse("redis://localhost").is_err());
    }

    #[test]
    fn each_slot_goes_to_its_primary() {
        let range = |start, end, ip, port| {
            Reply::Array(vec![
                Reply::Int(start),
                Reply::Int(end),
                primary(ip, port),
                primary("127.0.0.1", 9999),
            ])
        };
        let reply = Reply::Array(vec![
            range(0, 5460, "127.0.0.1", 7000),
            range(5461, 10922, "", 7001),
            range(10923, 16383, "127.0.0.1", 7002),
        ]);
        let shards = Shards::from_reply(reply, "127.0.0.1".parse().unwrap()).unwrap();
        let ports: Vec<u16> = shards.primaries.iter().map(|a| a.port()).collect();
        assert_eq!(ports, vec![7000, 7001, 7002]);
        // Known slots: "foo" 12182, "bar" 5061, and a hash tag counts alone.
        assert_eq!(shards.owner_of("foo"), 2);
        assert_eq!(shards.owner_of("bar"), 0);
        assert_eq!(shards.owner_of("herald:{foo}:ch"), 2);
    }

    #[test]
    fn odd_slot_maps_are_refused() {
        let ip = "127.0.0.1".parse().unwrap();
        assert!(Shards::from_reply(Reply::Array(vec![]), ip).is_err());
        assert!(Shards::from_reply(Reply::Error("ERR".into()), ip).is_err());
        let outside = Reply::Array(vec![Reply::Array(vec![
            Reply::Int(0),
            Reply::Int(16384),
            primary("127.0.0.1", 7000),
        ])]);
        assert!(Shards::from_reply(outside, ip).is_err());
        let remote = Reply::Array(vec![Reply::Array(vec![
            Reply::Int(0),
            Reply::Int(16383),
            primary("10.1.2.3", 7000),
        ])]);
        assert!(Shards::from_reply(remote, ip).is_err());
    }
}
