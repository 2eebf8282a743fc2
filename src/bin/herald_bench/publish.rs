//! The publish phase: a pool of publishers per node and way of publishing, the paced
//! hand-out of sequence numbers to them (round-robin over nodes, then ways), and the
//! drain that waits for outstanding acknowledgements and deliveries.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::Sender;
use tokio::task::JoinHandle;

use crate::args::{Args, Via};
use crate::plan::Plan;
use crate::progress::Phase;
use crate::publishers::{JobQueue, http_publisher, ws_publisher};
use crate::redis_publisher::redis_publisher;
use crate::shared::{PUB_OK, PUB_SENT, Shared};

/// How long publishing and then draining took, in seconds.
pub struct PublishTimes {
    pub publish_secs: f64,
    pub drain_secs: f64,
}

/// Publishes `total_pubs` at `--rate`, then drains; the publishers are gone after.
pub async fn publish_and_drain(
    args: &Args,
    plan: &Arc<Plan>,
    sh: &Arc<Shared>,
    phase: &Phase,
    total_pubs: u64,
) -> PublishTimes {
    phase.set("publish");
    let ways = ways_of(plan.via);
    let (senders, workers) = spawn_publishers(args, plan, sh, ways);
    let start = Instant::now();
    sh.pace_start_ns.store(sh.now_ns(), Ordering::Relaxed);
    pace(senders, ways.len(), args.rate, total_pubs, start).await;
    let publish_secs = start.elapsed().as_secs_f64();
    phase.set("drain");
    wait_for_drain(args, plan, sh, total_pubs).await;
    let drain_secs = start.elapsed().as_secs_f64() - publish_secs;
    for w in workers {
        w.abort();
    }
    PublishTimes {
        publish_secs,
        drain_secs,
    }
}

/// The ways of publishing `--via` takes turns over.
fn ways_of(via: Via) -> &'static [Via] {
    match via {
        Via::Http => &[Via::Http],
        Via::Ws => &[Via::Ws],
        Via::Both => &[Via::Http, Via::Ws],
        Via::Redis => &[Via::Redis],
    }
}

/// Starts `--publishers` publishers per node and way, each pool fed by one queue.
/// Returns the queues' senders, `[node][way]`, and the publishers' tasks.
fn spawn_publishers(
    args: &Args,
    plan: &Arc<Plan>,
    sh: &Arc<Shared>,
    ways: &[Via],
) -> (Vec<Vec<Sender<u64>>>, Vec<JoinHandle<()>>) {
    // Room for about 10 ms of publishes (at least 64) per queue.
    let cap = ((args.rate / 100.0) as usize).clamp(64, 8192);
    let mut senders = Vec::new();
    let mut workers = Vec::new();
    for (ni, node) in plan.nodes.iter().enumerate() {
        let mut per_way = Vec::new();
        for way in ways {
            let (tx, rx) = tokio::sync::mpsc::channel::<u64>(cap);
            let rx: JobQueue = Arc::new(tokio::sync::Mutex::new(rx));
            for w in 0..args.publishers.max(1) {
                let (plan, sh, rx, node) = (plan.clone(), sh.clone(), rx.clone(), *node);
                workers.push(match way {
                    Via::Http => tokio::spawn(http_publisher(node, plan, sh, rx)),
                    Via::Redis => tokio::spawn(redis_publisher(plan, sh, rx)),
                    // A WebSocket publisher's index picks its source address, after
                    // the subscribers' ones.
                    _ => tokio::spawn(ws_publisher(
                        args.connections + ni * 1000 + w,
                        node,
                        plan,
                        sh,
                        rx,
                    )),
                });
            }
            per_way.push(tx);
        }
        senders.push(per_way);
    }
    (senders, workers)
}

/// Paced: every millisecond, hands out what is due by now (publish `seq` is due at
/// `start + seq / rate`), until all `total_pubs` are out. Dropping the senders at the
/// end closes the queues, so that the publishers stop once they are empty.
async fn pace(
    senders: Vec<Vec<Sender<u64>>>,
    n_ways: usize,
    rate: f64,
    total_pubs: u64,
    start: Instant,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next: u64 = 0;
    let n_nodes = senders.len() as u64;
    loop {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(total_pubs);
        while next < due {
            let node = (next % n_nodes) as usize;
            let way = ((next / n_nodes) % n_ways as u64) as usize;
            if senders[node][way].send(next).await.is_err() {
                return;
            }
            next += 1;
        }
        if next >= total_pubs {
            return;
        }
    }
}

/// Waits for acknowledgements and deliveries while they still make progress: stops
/// when everything arrived, when nothing new came for `--drain`, or at `--drain-max`.
/// Late deliveries are not losses; what never comes is.
async fn wait_for_drain(args: &Args, plan: &Plan, sh: &Shared, total_pubs: u64) {
    let hard_deadline = Instant::now() + args.drain_max;
    let mut last_progress = Instant::now();
    let mut last_seen = (0, 0);
    loop {
        let acked = sh.pub_ok.load(Ordering::Relaxed) + sh.pub_failed.load(Ordering::Relaxed);
        let received = sh.received.load(Ordering::Relaxed);
        if acked >= total_pubs && received >= expected_now(sh, plan) {
            break;
        }
        if (acked, received) != last_seen {
            last_seen = (acked, received);
            last_progress = Instant::now();
        }
        if last_progress.elapsed() >= args.drain || Instant::now() >= hard_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deliveries expected for what has been acknowledged (or sent) so far.
fn expected_now(sh: &Shared, plan: &Plan) -> u64 {
    let mut expected = 0;
    for (seq, state) in sh.pub_state.iter().enumerate() {
        match state.load(Ordering::Relaxed) {
            PUB_OK | PUB_SENT => expected += plan.subscribers_of(seq % plan.channels),
            _ => {}
        }
    }
    expected
}
