//! The seat-reservation example end to end: browsers' requests go upstream, the
//! `seats` service (examples/seats.rs) holds seats atomically and appends outcomes to
//! its event stream, and Herald ingests that stream into `seats:{show}`.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use support::*;

/// How long building the example from inside a test may take. A whole run (`bash
/// .ci/test`, `cargo nextest run`, `cargo test`) builds it before any test starts;
/// only a run filtered to this file finds it missing or stale.
const BUILD_LIMIT: Duration = Duration::from_secs(90);

/// The seats example next to this test binary (`<target>/<profile>/deps/seats-…`), so
/// `CARGO_TARGET_DIR` and the profile are those of this run. Built, within
/// [`BUILD_LIMIT`], when it is missing or older than its source.
fn seats_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in <target>/<profile>/deps");
    let path = profile_dir.join("examples/seats");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/seats.rs");
    let modified = |p: &std::path::Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    if !path.exists() || modified(&path) < modified(source.as_ref()) {
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--example", "seats"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        eprintln!(
            "seats: {} is missing or stale; running `{}` (bounded by {BUILD_LIMIT:?})",
            path.display(),
            describe(&build)
        );
        let out = run_bounded(&mut build, BUILD_LIMIT);
        assert!(
            out.status.success() && path.exists(),
            "`{}` failed ({}); build it before the test: cargo build --example seats\n{}",
            describe(&build),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    path
}

struct Service(Child);

impl Service {
    fn start(redis: &Redis, name: &str) -> Service {
        Service(
            Command::new(seats_binary())
                .args(["--redis", &redis.url(), "--name", name])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("seats example"),
        )
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn demo_config(redis: &Redis, id: &str) -> herald::config::Config {
    let toml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/seats.toml"))
        .unwrap();
    config_from_toml(Some(redis), id, &toml)
}

/// Reads outcome messages until `n` arrived.
async fn outcomes(c: &mut Client, n: usize) -> Vec<Value> {
    c.messages(n, Duration::from_secs(15))
        .await
        .into_iter()
        .map(|m| m["data"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_race_for_one_seat() {
    let redis = Redis::start();
    let a = start(demo_config(&redis, "a")).await;
    let b = start(demo_config(&redis, "b")).await;
    let _s1 = Service::start(&redis, "seats-1");
    let _s2 = Service::start(&redis, "seats-2");
    let mut alice = Client::connect(a.addr).await;
    let mut bob = Client::connect(b.addr).await;
    alice.subscribe("seats:s1").await;
    bob.subscribe("seats:s1").await;
    let hold = json!({"show": "s1", "seat": "A1", "action": "hold"});
    let (ra, rb) = tokio::join!(
        alice.publish("seats-req:s1", hold.clone()),
        bob.publish("seats-req:s1", hold)
    );
    assert!(ra["result"]["stream_id"].is_string(), "{ra}");
    assert!(rb["result"]["stream_id"].is_string(), "{rb}");
    let seen_a = outcomes(&mut alice, 2).await;
    let seen_b = outcomes(&mut bob, 2).await;
    assert_eq!(
        seen_a, seen_b,
        "both browsers see the same map, in the same order"
    );
    let winners: Vec<&Value> = seen_a.iter().filter(|o| o["ok"] == true).collect();
    assert_eq!(winners.len(), 1, "exactly one holds the seat: {seen_a:?}");
    let holder = winners[0]["by"].as_str().unwrap();
    assert!(seen_a.iter().all(|o| o["holder"] == holder));
    let sessions = [
        alice.welcome["session"].as_str().unwrap(),
        bob.welcome["session"].as_str().unwrap(),
    ];
    assert!(sessions.contains(&holder));
    assert_eq!(redis.cli(&["HGET", "seats:{s1}", "A1"]).trim(), holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_left_by_a_crashed_instance_is_completed_by_another() {
    let redis = Redis::start();
    let a = start(demo_config(&redis, "a")).await;
    let mut watcher = Client::connect(a.addr).await;
    watcher.subscribe("seats:s2").await;
    // The group exists before the request; a consumer that then "crashes" reads it.
    redis.cli(&[
        "XGROUP",
        "CREATE",
        "herald:upstream:seats-req",
        "seat-service",
        "0",
        "MKSTREAM",
    ]);
    let mut browser = Client::connect(a.addr).await;
    let r = browser
        .publish(
            "seats-req:s2",
            json!({"show": "s2", "seat": "B7", "action": "hold"}),
        )
        .await;
    assert!(r["result"]["stream_id"].is_string(), "{r}");
    let taken = redis.cli(&[
        "XREADGROUP",
        "GROUP",
        "seat-service",
        "crashed",
        "COUNT",
        "1",
        "STREAMS",
        "herald:upstream:seats-req",
        ">",
    ]);
    assert!(taken.contains("B7"), "{taken}");
    // A live instance claims the abandoned request (after its claim idle time) and
    // completes it.
    let _live = Service::start(&redis, "seats-live");
    let done = outcomes(&mut watcher, 1).await;
    assert_eq!(done[0]["seat"], "B7");
    assert_eq!(done[0]["ok"], true);
    assert!(
        eventually(Duration::from_secs(5), || async {
            redis
                .cli(&["XPENDING", "herald:upstream:seats-req", "seat-service"])
                .lines()
                .next()
                == Some("0")
        })
        .await,
        "the claimed request was acknowledged"
    );
}
