//! What every task of the load tool counts into (`Shared`): connect results, the state
//! of each publish, deliveries per publish, order and offset checks, and the latency
//! histograms, kept per thread so that recording takes no shared lock.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hdrhistogram::Histogram;

/// Publish state of one sequence number.
pub const PUB_NONE: u8 = 0;
pub const PUB_SENT: u8 = 1;
pub const PUB_OK: u8 = 2;
pub const PUB_FAILED: u8 = 3;

pub type Hist = Histogram<u64>;

pub fn new_hist() -> Hist {
    // Microseconds, 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

pub struct Shared {
    /// The process-wide clock origin: timestamps in payloads are ns since this.
    pub origin: Instant,
    pub subscribed: AtomicUsize,
    pub connect_failed: AtomicUsize,
    pub connect_retries: AtomicU64,
    pub connect_errors: Mutex<BTreeMap<String, u64>>,
    pub received: AtomicU64,
    /// Message frames whose payload could not be read, or with a seq never published.
    pub unknown: AtomicU64,
    /// A client saw a seq not above the previous one on its channel (duplicate or
    /// reordering). Publishes in flight at the same time on different connections
    /// have no order between them, so this counts those too.
    pub out_of_order: AtomicU64,
    /// A client saw a seq after a later one although the earlier publish was
    /// acknowledged before the later one was sent: a break of the channel's order.
    pub order_violations: AtomicU64,
    /// A durable client saw offsets that do not follow each other.
    pub offset_gaps: AtomicU64,
    /// Error replies and other frames that are neither messages nor replies.
    pub other_frames: AtomicU64,
    pub read_errors: AtomicU64,
    pub closes: Mutex<BTreeMap<u16, u64>>,
    /// Deliveries per seq.
    pub per_seq: Vec<AtomicU32>,
    /// PUB_* per seq.
    pub pub_state: Vec<AtomicU8>,
    /// When each seq was sent, ns since `origin` (for the publish acknowledgement time).
    pub sent_at: Vec<AtomicU64>,
    /// When each seq's publish was acknowledged, ns since `origin` (0: not yet).
    pub acked_at: Vec<AtomicU64>,
    pub published: AtomicU64,
    pub pub_ok: AtomicU64,
    pub pub_failed: AtomicU64,
    /// Pipelines (writes) the `--via redis` publishers sent.
    pub redis_writes: AtomicU64,
    pub pub_errors: Mutex<BTreeMap<String, u64>>,
    pub last_delivery_ns: AtomicU64,
    /// Per-thread histograms.
    hists: Mutex<Vec<SharedHists>>,
    pub stop_clients: AtomicBool,
    /// When the paced publishing began, ns since `origin` (u64::MAX before), and its
    /// rate: publish `seq` is due at `start + seq / rate`.
    pub pace_start_ns: AtomicU64,
    pub rate: f64,
}

/// What the load tool measures in µs, one set per thread.
pub struct Hists {
    /// Publish (send) to delivery.
    pub delivery: Hist,
    /// Publish (send) to the publisher's acknowledgement.
    pub ack: Hist,
    /// Due time to send: how long a publish waited in the load tool for a free
    /// publisher (the delivery latency does not include it).
    pub send_lag: Hist,
}

impl Hists {
    fn new() -> Self {
        Self {
            delivery: new_hist(),
            ack: new_hist(),
            send_lag: new_hist(),
        }
    }
}

type SharedHists = Arc<Mutex<Hists>>;

thread_local! {
    static LOCAL_HIST: RefCell<Option<SharedHists>> = const { RefCell::new(None) };
}

impl Shared {
    /// Counters for a run of `total_pubs` publishes at `rate` per second, its clock
    /// starting now.
    pub fn new(total_pubs: u64, rate: f64) -> Self {
        Self {
            origin: Instant::now(),
            subscribed: AtomicUsize::new(0),
            connect_failed: AtomicUsize::new(0),
            connect_retries: AtomicU64::new(0),
            connect_errors: Mutex::default(),
            received: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            order_violations: AtomicU64::new(0),
            offset_gaps: AtomicU64::new(0),
            other_frames: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
            closes: Mutex::default(),
            per_seq: (0..total_pubs).map(|_| AtomicU32::new(0)).collect(),
            pub_state: (0..total_pubs).map(|_| AtomicU8::new(PUB_NONE)).collect(),
            sent_at: (0..total_pubs).map(|_| AtomicU64::new(0)).collect(),
            acked_at: (0..total_pubs).map(|_| AtomicU64::new(0)).collect(),
            published: AtomicU64::new(0),
            pub_ok: AtomicU64::new(0),
            pub_failed: AtomicU64::new(0),
            redis_writes: AtomicU64::new(0),
            pub_errors: Mutex::default(),
            last_delivery_ns: AtomicU64::new(0),
            hists: Mutex::default(),
            stop_clients: AtomicBool::new(false),
            pace_start_ns: AtomicU64::new(u64::MAX),
            rate,
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    pub fn with_hist(&self, f: impl FnOnce(&mut Hists)) {
        LOCAL_HIST.with(|l| {
            let mut l = l.borrow_mut();
            let h = l.get_or_insert_with(|| {
                let h = Arc::new(Mutex::new(Hists::new()));
                self.hists.lock().unwrap().push(h.clone());
                h
            });
            f(&mut h.lock().unwrap());
        });
    }

    pub fn merged(&self) -> Hists {
        let mut all = Hists::new();
        for h in self.hists.lock().unwrap().iter() {
            let h = h.lock().unwrap();
            let _ = all.delivery.add(&h.delivery);
            let _ = all.ack.add(&h.ack);
            let _ = all.send_lag.add(&h.send_lag);
        }
        all
    }

    pub fn count_error(map: &Mutex<BTreeMap<String, u64>>, e: impl ToString) {
        let mut text = e.to_string();
        text.truncate(120);
        *map.lock().unwrap().entry(text).or_default() += 1;
    }
}

/// Whether publish `first` was acknowledged before publish `then` was sent: then every
/// subscriber must see `first` before `then`.
/// (`acked_at` and `sent_at` as in `Shared`, ns, 0 for not yet.)
pub fn acked_before_sent(
    acked_at: &[AtomicU64],
    sent_at: &[AtomicU64],
    first: u64,
    then: u64,
) -> bool {
    let acked = acked_at
        .get(first as usize)
        .map_or(0, |a| a.load(Ordering::Relaxed));
    let sent = sent_at
        .get(then as usize)
        .map_or(0, |s| s.load(Ordering::Relaxed));
    acked != 0 && acked < sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_acknowledged_publish_overtaken_by_a_later_send_breaks_order() {
        let at = |v: &[u64]| v.iter().map(|&x| AtomicU64::new(x)).collect::<Vec<_>>();
        // Publish 0 acknowledged at 100; publish 1 sent at 200 (after), 2 at 50 (before).
        let acked = at(&[100, 0, 0]);
        let sent = at(&[10, 200, 50]);
        assert!(acked_before_sent(&acked, &sent, 0, 1));
        assert!(
            !acked_before_sent(&acked, &sent, 0, 2),
            "in flight together"
        );
        assert!(
            !acked_before_sent(&acked, &sent, 1, 2),
            "never acknowledged"
        );
        assert!(!acked_before_sent(&acked, &sent, 0, 9), "unknown seq");
    }
}
