//! Draining on SIGTERM / SIGINT (PROTOCOL §2, §2.4, §3; CONFIG.md `drain_period`): the
//! node turns not ready at once, refuses new upgrades with 503, closes every socket with
//! 1001 spread over the drain period, and exits 0 in time.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;

const CLIENTS: usize = 20;
const DRAIN: Duration = Duration::from_secs(2);

/// An upgrade attempt while draining: the HTTP status it was refused with (None when it
/// succeeded) and the refusal's body.
async fn try_upgrade(addr: SocketAddr) -> Result<Option<(u16, String)>, String> {
    match tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await {
        Ok(_) => Ok(None),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            let body = r
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Ok(Some((r.status().as_u16(), body)))
        }
        Err(e) => Err(e.to_string()),
    }
}

async fn drains_on(signal: &str) {
    let mut node = NodeProcess::spawn(&["--drain-period", "2s", "--node-id", "drainer"]).await;
    let addr = node.addr;
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let mut c = Client::connect(addr).await;
        c.subscribe(&format!("room-{}", i % 3)).await;
        tasks.push(tokio::spawn(async move {
            let how = c.closed(Duration::from_secs(15)).await;
            (how, Instant::now())
        }));
    }
    assert_eq!(ready_status(addr).await, 200);

    let signalled = Instant::now();
    node.signal(signal);

    // Not ready at once (while the process is still there to say so).
    let mut saw_503 = None;
    while signalled.elapsed() < Duration::from_secs(1) {
        match ready_status(addr).await {
            503 => {
                saw_503 = Some(signalled.elapsed());
                break;
            }
            200 => {}
            other => {
                let exited = node.child.try_wait().ok().flatten();
                panic!("/readyz answered {other} while draining (process exit: {exited:?})");
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let saw_503 = saw_503.expect("/readyz still 200 one second after the signal");
    assert!(
        saw_503 < Duration::from_millis(500),
        "not ready only after {saw_503:?}"
    );

    // New upgrades are refused with 503 while draining.
    match try_upgrade(addr).await {
        Ok(Some((status, body))) => {
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("unavailable"), "{body}");
        }
        Ok(None) => panic!("a new WebSocket upgrade was accepted while draining"),
        Err(e) => panic!("upgrade while draining failed without an HTTP answer: {e}"),
    }
    assert_eq!(ready_status(addr).await, 503);

    let mut closes = Vec::new();
    for t in tasks {
        let (how, at) = t.await.expect("client task");
        assert_eq!(how, Some(Closed::Code(1001)), "a client saw {how:?}");
        closes.push(at.duration_since(signalled));
    }
    closes.sort();
    let (first, last) = (closes[0], closes[CLIENTS - 1]);
    eprintln!("{signal}: ready 503 after {saw_503:?}; closes from {first:?} to {last:?}");
    assert!(
        last - first >= Duration::from_millis(500),
        "the closes were not spread: first {first:?}, last {last:?}"
    );
    assert!(
        last <= DRAIN + Duration::from_millis(500),
        "the last close came {last:?} after the signal, beyond the drain period"
    );

    let deadline = signalled + DRAIN + Duration::from_secs(3);
    let code = node
        .exit_code(deadline.saturating_duration_since(Instant::now()))
        .await;
    let exited_after = signalled.elapsed();
    assert_eq!(
        code,
        Some(Some(0)),
        "the process must exit with 0 within drain period + 3 s (after {exited_after:?})"
    );
    assert!(
        exited_after <= DRAIN + Duration::from_secs(3),
        "{exited_after:?}"
    );
    eprintln!("{signal}: exited 0 after {exited_after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    drains_on("-TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_and_exits_zero() {
    drains_on("-INT").await;
}
