//! A seat-reservation microservice that speaks Redis Streams, the way Herald expects
//! backends to (PROTOCOL §5; README "Event streams").
//!
//! - Browsers publish requests in the `seats-req` namespace (an `upstream` namespace):
//!   `{"show":"s1","seat":"A1","action":"hold"|"release"}`. Herald appends them to the
//!   stream `herald:upstream:seats-req`.
//! - Any number of instances of this service read that stream in the consumer group
//!   `seat-service`, each under its own consumer name, and take over what a crashed
//!   instance left pending (`XAUTOCLAIM`).
//! - A hold is atomic in Redis (`HSETNX seats:{show} <seat> <holder>`), so two browsers
//!   racing for one seat cannot both get it.
//! - Each outcome is appended to the service's own event stream `seats.events`, which
//!   Herald ingests into the durable channel `seats:{show}`: every browser watching the
//!   show sees the same map, in the same order, and catches up after a reconnect.
//!
//! Run: `cargo run --example seats -- --redis redis://127.0.0.1:6379 --name seats-1`
//! (see README "Event streams" for the whole demo).

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use serde_json::json;

const REQUESTS: &str = "herald:upstream:seats-req";
const GROUP: &str = "seat-service";
const EVENTS: &str = "seats.events";
/// A request pending this long on a consumer is presumed abandoned and claimed.
const CLAIM_IDLE: Duration = Duration::from_secs(5);

#[derive(Parser)]
struct Args {
    /// Redis URL.
    #[arg(
        long,
        env = "SEATS_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis: String,
    /// This instance's consumer name (unique per running instance).
    #[arg(long, env = "SEATS_NAME", default_value = "seats-1")]
    name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::from_url(&args.redis).context("redis url")?;
    let client = Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build()?;
    client.init().await.context("connect to redis")?;
    let blocking = client.clone_new();
    blocking.init().await?;

    // The group starts at 0, so requests sent before the first instance ran count too.
    let created: Result<Value, _> = client
        .custom(
            cmd("XGROUP"),
            vec!["CREATE", REQUESTS, GROUP, "0", "MKSTREAM"],
        )
        .await;
    if let Err(e) = created
        && !e.details().starts_with("BUSYGROUP")
    {
        return Err(e.into());
    }
    eprintln!("seats: {} reading {REQUESTS} as group {GROUP}", args.name);

    let mut last_claim = std::time::Instant::now() - CLAIM_IDLE;
    loop {
        // First what this instance left pending (a restart under the same name), and
        // now and then what crashed instances left.
        let mut batch = read(&client, &args.name, "0", None).await?;
        if last_claim.elapsed() >= CLAIM_IDLE {
            batch.extend(claim(&client, &args.name).await?);
            last_claim = std::time::Instant::now();
        }
        if batch.is_empty() {
            batch = read(&blocking, &args.name, ">", Some(1000)).await?;
        }
        for (id, fields) in batch {
            handle(&client, &id, &fields).await?;
            let _: Value = client
                .custom(cmd("XACK"), vec![REQUESTS, GROUP, &id])
                .await?;
        }
    }
}

/// A stream command routed to the slot of the requests stream. fred routes a custom
/// command by a fixed slot only (`ClusterHash::Offset` is not followed), and every
/// command here names that one stream, so on a Redis Cluster each goes to its shard.
fn cmd(name: &'static str) -> CustomCommand {
    CustomCommand::new_static(name, requests_slot(), false)
}

fn requests_slot() -> ClusterHash {
    ClusterHash::Custom(fred::util::redis_keyslot(REQUESTS.as_bytes()))
}

type Fields = Vec<(String, String)>;

async fn read(
    client: &Client,
    me: &str,
    from: &str,
    block_ms: Option<u64>,
) -> anyhow::Result<Vec<(String, Fields)>> {
    let mut args = vec![
        "GROUP".to_string(),
        GROUP.into(),
        me.into(),
        "COUNT".into(),
        "50".into(),
    ];
    if let Some(ms) = block_ms {
        args.extend(["BLOCK".to_string(), ms.to_string()]);
    }
    args.extend(["STREAMS".to_string(), REQUESTS.into(), from.into()]);
    let reply: Value = client
        .custom(
            CustomCommand::new_static("XREADGROUP", requests_slot(), block_ms.is_some()),
            args,
        )
        .await?;
    let mut out = Vec::new();
    if let Value::Array(streams) = reply {
        for s in streams {
            if let Value::Array(pair) = s
                && let Some(entries) = pair.get(1)
            {
                out.extend(entries_of(entries));
            }
        }
    }
    Ok(out)
}

async fn claim(client: &Client, me: &str) -> anyhow::Result<Vec<(String, Fields)>> {
    let mut out = Vec::new();
    let mut cursor = "0-0".to_string();
    loop {
        let reply: Value = client
            .custom(
                cmd("XAUTOCLAIM"),
                vec![
                    REQUESTS,
                    GROUP,
                    me,
                    &CLAIM_IDLE.as_millis().to_string(),
                    &cursor,
                    "COUNT",
                    "50",
                ],
            )
            .await?;
        let Value::Array(parts) = reply else { break };
        out.extend(parts.get(1).map(entries_of).unwrap_or_default());
        cursor = parts
            .first()
            .and_then(|v| v.as_string())
            .unwrap_or_else(|| "0-0".into());
        if cursor == "0-0" {
            break;
        }
    }
    if !out.is_empty() {
        eprintln!("seats: {me} claimed {} abandoned requests", out.len());
    }
    Ok(out)
}

fn entries_of(v: &Value) -> Vec<(String, Fields)> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let id = pair.first()?.as_string()?;
            let fields = match pair.get(1) {
                Some(Value::Array(kv)) => kv
                    .chunks_exact(2)
                    .filter_map(|c| Some((c[0].as_string()?, c[1].as_string()?)))
                    .collect(),
                _ => Vec::new(),
            };
            Some((id, fields))
        })
        .collect()
}

/// Holds or releases one seat and appends the outcome to `seats.events`.
async fn handle(client: &Client, id: &str, fields: &Fields) -> anyhow::Result<()> {
    let get = |k: &str| {
        fields
            .iter()
            .find(|(f, _)| f == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let request: serde_json::Value = serde_json::from_str(get("data")).unwrap_or_default();
    let show = request["show"].as_str().unwrap_or("");
    let seat = request["seat"].as_str().unwrap_or("");
    let valid = |s: &str| {
        !s.is_empty() && s.len() <= 32 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if !valid(show) || !valid(seat) {
        // Nothing to do for a malformed request; the browser sees no outcome for it.
        eprintln!("seats: ignoring malformed request {id}");
        return Ok(());
    }
    // The holder is the authenticated user where there is one, else the session.
    let holder = if get("user").is_empty() {
        get("session")
    } else {
        get("user")
    };
    let key = format!("seats:{{{show}}}");
    let (ok, holder_now) = match request["action"].as_str() {
        Some("release") => {
            let current: Option<String> = client.hget(&key, seat).await?;
            if current.as_deref() == Some(holder) {
                let _: i64 = client.hdel(&key, seat).await?;
                (true, None)
            } else {
                (false, current)
            }
        }
        _ => {
            // Atomic: exactly one of two racing holds wins. A retried request of the
            // same holder (after a crash) finds its own hold and succeeds again.
            let won: bool = client.hsetnx(&key, seat, holder).await?;
            let current: Option<String> = if won {
                Some(holder.to_string())
            } else {
                client.hget(&key, seat).await?
            };
            (current.as_deref() == Some(holder), current)
        }
    };
    let outcome = json!({
        "seat": seat,
        "action": request["action"].as_str().unwrap_or("hold"),
        "ok": ok,
        "holder": holder_now,
        "by": holder,
        "request": id,
    });
    let _: Value = client
        .custom(
            cmd("XADD"),
            vec![
                EVENTS.to_string(),
                "*".into(),
                "show".into(),
                show.into(),
                "data".into(),
                outcome.to_string(),
            ],
        )
        .await?;
    Ok(())
}
