//! Micro-benchmarks of the per-message hot path, with allocation counts (divan's
//! counting global allocator): encoding a `message` frame, checking a backplane
//! payload, and the hub's fan-out of one frame into N subscriber queues.
//!
//! ```text
//! cargo bench --bench fanout
//! ```
//!
//! The fan-out is measured without the sockets: the queues are drained between
//! iterations (untimed), so each timed call pushes one frame into N empty-enough queues.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use divan::{AllocProfiler, Bencher, black_box};
use herald::hub::{Hub, Subscriber};
use herald::metrics::Metrics;
use herald::protocol::{Sequence, check_payload, message_frame};
use herald::ws::outbox::{Outbox, Outgoing};
use serde_json::value::RawValue;
use tokio::sync::mpsc::Receiver;

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

fn main() {
    divan::main();
}

const DATA: &str = r#"{"s":123456,"t":98765432101234,"p":"xxxxxxxxxxxxxxxx"}"#;

fn data() -> Box<RawValue> {
    RawValue::from_string(DATA.to_string()).expect("valid JSON")
}

/// `protocol::message_frame` for a plain channel (what every publish encodes once).
#[divan::bench]
fn encode_plain(bencher: Bencher) {
    let data = data();
    bencher.bench_local(|| message_frame(black_box("bench:42"), black_box(&data), None));
}

/// The same with the durable `offset` and `epoch`.
#[divan::bench]
fn encode_durable(bencher: Bencher) {
    let data = data();
    bencher.bench_local(|| {
        message_frame(
            black_box("dbench:42"),
            black_box(&data),
            Some(Sequence {
                offset: 123_456,
                epoch: "k3Jx9aQ",
            }),
        )
    });
}

/// `protocol::check_payload`: what a node does once per message off the backplane.
#[divan::bench(args = [false, true])]
fn check_backplane_payload(bencher: Bencher, durable: bool) {
    let data = data();
    let (channel, seq) = if durable {
        (
            "dbench:42",
            Some(Sequence {
                offset: 7,
                epoch: "k3Jx9aQ",
            }),
        )
    } else {
        ("bench:42", None)
    };
    let frame = message_frame(channel, &data, seq);
    let text = std::str::from_utf8(&frame).expect("utf-8").to_string();
    bencher.bench_local(|| check_payload(black_box(channel), black_box(&text)));
}

/// `Hub::dispatch` of one frame to N live subscribers of one channel (one
/// `Outbox::push`, i.e. a bounded mpsc `try_send`, per subscriber).
#[divan::bench(args = [1, 100, 1_000, 10_000], sample_size = 1, sample_count = 200)]
fn hub_dispatch(bencher: Bencher, subscribers: usize) {
    let hub = Hub::new(Arc::new(Metrics::new("bench")));
    let channel: Arc<str> = "bench:0".into();
    let mut receivers: Vec<Receiver<Outgoing>> = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let (outbox, rx, _control) = Outbox::new(64);
        hub.add(&channel, Subscriber::live(i as u64, outbox));
        receivers.push(rx);
    }
    let frame = Utf8Bytes::try_from(message_frame("bench:0", &data(), None)).expect("utf-8");
    let since = Instant::now();
    bencher
        .with_inputs(|| {
            for rx in receivers.iter_mut() {
                while rx.try_recv().is_ok() {}
            }
        })
        .bench_local_values(|()| hub.dispatch(black_box("bench:0"), &frame, None, since));
}

/// The same for N channels with one subscriber each, dispatching to one of them:
/// the map lookup and a single push (the many-channels scenario's shape).
#[divan::bench(args = [10_000], sample_size = 1, sample_count = 2000)]
fn hub_dispatch_one_of_many(bencher: Bencher, channels: usize) {
    let hub = Hub::new(Arc::new(Metrics::new("bench")));
    let mut receivers = Vec::with_capacity(channels);
    let names: Vec<String> = (0..channels).map(|i| format!("bench:{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let (outbox, rx, _control) = Outbox::new(64);
        hub.add(
            &Arc::from(name.as_str()),
            Subscriber::live(i as u64, outbox),
        );
        receivers.push(rx);
    }
    let frame = Utf8Bytes::try_from(message_frame("bench:0", &data(), None)).expect("utf-8");
    let since = Instant::now();
    let mut next = 0usize;
    bencher
        .with_inputs(|| {
            next = (next + 7919) % channels;
            while receivers[next].try_recv().is_ok() {}
            names[next].as_str()
        })
        .bench_local_values(|name| hub.dispatch(name, &frame, None, since));
}
