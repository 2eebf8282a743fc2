//! The progress line on stderr, every second: the phase, subscriptions, publishes and
//! deliveries so far with their rates, and the last second's delivery p99.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::shared::{Shared, new_hist};

/// The phase the run is in, as the progress line names it.
#[derive(Clone)]
pub struct Phase(Arc<Mutex<&'static str>>);

impl Phase {
    pub fn new(name: &'static str) -> Self {
        Self(Arc::new(Mutex::new(name)))
    }

    pub fn set(&self, name: &'static str) {
        *self.0.lock().unwrap() = name;
    }

    fn get(&self) -> &'static str {
        *self.0.lock().unwrap()
    }
}

/// Prints a progress line every second until aborted; `connections` is the number of
/// clients asked for.
pub fn spawn(sh: Arc<Shared>, phase: Phase, connections: usize) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let (mut last_pub, mut last_recv) = (0, 0);
        // This second's latency: the merged histogram minus the last second's.
        let mut last_hist = new_hist();
        tick.tick().await;
        loop {
            tick.tick().await;
            let p = sh.published.load(Ordering::Relaxed);
            let r = sh.received.load(Ordering::Relaxed);
            let now_hist = sh.merged().delivery;
            let mut second = now_hist.clone();
            let p99_ms = match second.subtract(&last_hist) {
                Ok(()) if !second.is_empty() => {
                    format!("{:.2}", second.value_at_quantile(0.99) as f64 / 1000.0)
                }
                _ => "–".into(),
            };
            last_hist = now_hist;
            eprintln!(
                "[herald-bench {:>6.1}s {:>8}] subscribed {}/{} (failed {}), published {} (+{}/s, failed {}), received {} (+{}/s, p99 {p99_ms} ms), closes {:?}",
                sh.origin.elapsed().as_secs_f64(),
                phase.get(),
                sh.subscribed.load(Ordering::Relaxed),
                connections,
                sh.connect_failed.load(Ordering::Relaxed),
                p,
                p - last_pub,
                sh.pub_failed.load(Ordering::Relaxed),
                r,
                r - last_recv,
                sh.closes.lock().unwrap(),
            );
            (last_pub, last_recv) = (p, r);
        }
    })
}
