//! The two fred clients of the Redis engine, built from the URL with the engine's
//! timeouts, reconnection policy and queue capacities: a command client (publishes,
//! scripts, history) and a subscriber client (pub/sub only, so a slow command never
//! delays a message), both with the TLS settings of `tls.rs` on a `rediss://` URL.
//! Connecting them and watching their events is `redis.rs`'s and
//! `link.rs`'s.

use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::{
    ClusterDiscoveryPolicy, ReconnectPolicy, ServerConfig, UnresponsiveConfig,
};

use super::tls::RedisTls;
use crate::error::BackplaneError;

/// A command that takes longer than this fails with `Unavailable`; the publisher may
/// retry (the message may or may not have been taken).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// Capacity of fred's pub/sub broadcast channel, the one bounded queue between the
/// subscriber connection and the hub. When it is full the oldest messages are
/// overwritten and the reader gets `Lagged`: counted, and on durable channels filled
/// from history or closed with 4008 (gaps.rs); on plain channels those messages are
/// lost. Measured on the heaviest overload (docs/BENCHMARKS.md, Settings: 500
/// subscribers at 1,000 publishes/s, nodes seconds behind): none lagged at this
/// capacity, 9,750 did at 1,024. fred preallocates this many slots for each of the
/// subscriber's nine event channels, ~80 bytes each: ~12 MB (65,536 cost ~48 MB).
const PUBSUB_CAPACITY: usize = 16_384;
/// Capacity of the command client's event channels (errors, reconnections, …), which
/// carry a handful of events a minute: fred's own default.
const EVENT_CAPACITY: usize = 32;

/// Builds the command client and the subscriber client of `url`, not yet connected.
pub(super) fn build(
    url: &str,
    tls: Option<&RedisTls>,
) -> Result<(Client, SubscriberClient), BackplaneError> {
    let mut builder = builder(url, tls)?;
    // fred preallocates every slot of each of a client's nine event channels; only
    // the subscriber's message channel needs depth, so only the subscriber gets it.
    let client = builder
        .build()
        .map_err(|e| BackplaneError::Unavailable(e.to_string()))?;
    builder.with_performance_config(|p| p.broadcast_channel_capacity = PUBSUB_CAPACITY);
    let subscriber = builder
        .build_subscriber_client()
        .map_err(|e| BackplaneError::Unavailable(e.to_string()))?;
    Ok((client, subscriber))
}

/// The settings both clients share.
fn builder(url: &str, tls: Option<&RedisTls>) -> Result<Builder, BackplaneError> {
    let mut config = Config::from_url(url)
        .map_err(|e| BackplaneError::Unavailable(format!("redis url: {e}")))?;
    if let Some(tls) = tls {
        tls.apply(&mut config);
    }
    // A first connection that fails (Redis not up yet, a TLS handshake refused, a
    // wrong password) is retried under the reconnection policy like any later one,
    // instead of stopping the client for good: the node stays unready (503) and
    // becomes ready once Redis accepts it.
    config.fail_fast = false;
    // On a cluster, reconnect through every server the last slot map named, not only
    // the ones in the URL: a URL that names one server would otherwise leave the node
    // unready for as long as that server is down, even after its replica took over.
    if let ServerConfig::Clustered { policy, .. } = &mut config.server {
        *policy = ClusterDiscoveryPolicy::UseCache;
    }
    let mut builder = Builder::from_config(config);
    builder
        // fred's default is to never reconnect: retry forever, 100 ms to 5 s apart.
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(3);
            c.internal_command_timeout = Duration::from_secs(3);
            c.max_command_attempts = 1;
            // A connection that stops answering is closed and reconnected.
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(Duration::from_secs(5)),
                interval: Duration::from_secs(1),
            };
            c.tcp.nodelay = Some(true);
        })
        .with_performance_config(|p| {
            p.default_command_timeout = COMMAND_TIMEOUT;
            p.broadcast_channel_capacity = EVENT_CAPACITY;
        });
    Ok(builder)
}
