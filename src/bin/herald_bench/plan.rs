//! The scenario every task works from (`Plan`): which nodes, which channels, how to
//! publish and where, read once from the command line; and the payload each publish
//! carries (its sequence number, its send time, padding to the asked frame size).

use std::net::{IpAddr, SocketAddr};

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::args::{Args, Via};
use crate::resp::cluster::RedisTarget;

/// Everything a task needs to know about the scenario.
pub struct Plan {
    pub nodes: Vec<SocketAddr>,
    pub source_ips: Vec<IpAddr>,
    pub prefix: String,
    pub channels: usize,
    pub connections: usize,
    pub durable: bool,
    pub via: Via,
    pub frame_bytes: usize,
    pub api_key: Option<String>,
    pub ws_config: WebSocketConfig,
    /// Where `--via redis` publishes.
    pub redis: Option<RedisTarget>,
    /// `SPUBLISH` instead of `PUBLISH`.
    pub redis_sharded: bool,
    pub redis_prefix: String,
    /// The durable namespace's `history_size`, for the durable script.
    pub history_size: u64,
    /// The durable namespace's `history_ttl` in seconds, for the durable script.
    pub history_ttl_secs: u64,
    /// Publishes per pipeline of a `--via redis` publisher.
    pub redis_pipeline: usize,
}

impl Plan {
    /// The plan of `args`; fails on a `--redis` that is missing, unreadable or not on
    /// loopback.
    pub fn from_args(args: &Args) -> anyhow::Result<Plan> {
        let prefix = args.channel_prefix.clone().unwrap_or_else(|| {
            if args.durable {
                "dbench:".into()
            } else {
                "bench:".into()
            }
        });
        Ok(Plan {
            nodes: args.nodes.clone(),
            source_ips: args.source_ips.clone(),
            prefix,
            channels: args.channels,
            connections: args.connections,
            durable: args.durable,
            via: args.via,
            frame_bytes: args.frame_bytes,
            api_key: args.api_key.clone(),
            redis: redis_target(args)?,
            redis_sharded: args.redis_sharded,
            redis_prefix: args.redis_prefix.clone(),
            history_size: args.history_size,
            history_ttl_secs: args.history_ttl.as_secs().max(1),
            redis_pipeline: usize::from(args.redis_pipeline),
            // Small buffers: tens of thousands of clients share this process.
            ws_config: WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0)
                .max_message_size(Some(1 << 20))
                .max_frame_size(Some(1 << 20)),
        })
    }

    pub fn channel(&self, i: u64) -> String {
        format!("{}{}", self.prefix, i % self.channels as u64)
    }

    /// The Redis pub/sub channel of Herald channel `channel` (PROTOCOL §4).
    pub fn pubsub_channel(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:ch", self.redis_prefix)
    }

    /// Subscribers of channel index `c`.
    pub fn subscribers_of(&self, c: usize) -> u64 {
        let (n, k) = (self.connections, self.channels);
        (n / k + usize::from(c < n % k)) as u64
    }

    /// The publish body's `data`, padded so that the delivered frame is about
    /// `frame_bytes` long.
    pub fn data(&self, channel: &str, seq: u64, t: u64) -> String {
        let mut data = format!("{{\"s\":{seq},\"t\":{t},\"p\":\"");
        // {"type":"message","channel":"…","data":…}  is 32 bytes + channel + data.
        let base = 32 + channel.len() + data.len() + 2;
        let pad = self.frame_bytes.saturating_sub(base);
        data.extend(std::iter::repeat_n('x', pad));
        data.push_str("\"}");
        data
    }
}

/// How many publishes the run makes: `--rate` × `--duration`.
pub fn total_publishes(args: &Args) -> u64 {
    if args.rate > 0.0 {
        (args.rate * args.duration.as_secs_f64()).round() as u64
    } else {
        0
    }
}

/// The Redis of `--redis` (needed by `--via redis`), which must be on loopback.
fn redis_target(args: &Args) -> anyhow::Result<Option<RedisTarget>> {
    anyhow::ensure!(
        !(args.redis_sharded && args.durable),
        "--redis-sharded publishes plain channels only (the durable script publishes classic)"
    );
    match (&args.via, &args.redis) {
        (Via::Redis, None) => anyhow::bail!("--via redis needs --redis redis://127.0.0.1:PORT"),
        (_, Some(url)) => RedisTarget::parse(url)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("--redis {url}: {e}")),
        (_, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscriber::number_after;

    fn plan(n: usize, k: usize) -> Plan {
        Plan {
            nodes: vec!["127.0.0.1:1".parse().unwrap()],
            source_ips: vec![],
            prefix: "bench:".into(),
            channels: k,
            connections: n,
            durable: false,
            via: Via::Http,
            frame_bytes: 100,
            api_key: None,
            redis: None,
            redis_sharded: false,
            redis_prefix: "herald".into(),
            history_size: 100,
            history_ttl_secs: 600,
            redis_pipeline: 1,
            ws_config: WebSocketConfig::default(),
        }
    }

    #[test]
    fn subscribers_per_channel_add_up() {
        let p = plan(10, 3);
        assert_eq!(
            (0..3).map(|c| p.subscribers_of(c)).collect::<Vec<_>>(),
            vec![4, 3, 3]
        );
    }

    #[test]
    fn frames_come_out_near_the_asked_size() {
        let p = plan(1, 1);
        let ch = p.channel(7);
        let data = p.data(&ch, 7, 123_456_789);
        let frame = format!("{{\"type\":\"message\",\"channel\":\"{ch}\",\"data\":{data}}}");
        // Near: the sequence number and timestamp take a varying number of digits.
        assert!((95..=110).contains(&frame.len()), "{} bytes", frame.len());
        assert_eq!(number_after(&frame, "\"s\":"), Some(7));
        assert_eq!(number_after(&frame, "\"t\":"), Some(123_456_789));
    }
}
