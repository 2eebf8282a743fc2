//! Micro-benchmarks of the per-message hot path, with allocation counts (divan's
//! counting global allocator): encoding a `message` frame, checking a backplane
//! payload, the hub's fan-out of one frame into N subscriber queues, and one tick of
//! write coalescing.
//!
//! ```text
//! cargo bench --bench fanout
//! ```
//!
//! The fan-out is measured into real loopback sockets (their client ends are read
//! by a child process), so it includes the `writev` per delivery that dominates it.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use divan::{AllocProfiler, Bencher, black_box};
use herald::connection::outbox::Outbox;
use herald::connection::socket::Socket;
use herald::hub::coalesce::Coalescer;
use herald::hub::{Hub, Subscriber};
use herald::metrics::Metrics;
use herald::protocol::{Sequence, check_payload, message_frame};
use serde_json::value::RawValue;
use std::io::Read;
use std::process::{Child, Command, Stdio};

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

fn main() {
    if let Ok(spec) = std::env::var(DRAIN_ENV) {
        drain(&spec);
        return;
    }
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

/// N loopback connections whose client ends live in a child process that reads and
/// discards everything (so this process holds N sockets, not 2N: the open-file limit
/// allows 10,000 subscribers), each wrapped in an outbox.
struct Sockets {
    outboxes: Vec<Outbox>,
    drain: Child,
    runtime: tokio::runtime::Runtime,
}

impl Sockets {
    fn new(n: usize) -> Sockets {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let drain = Command::new(std::env::current_exe().expect("bench binary"))
            .env(DRAIN_ENV, format!("{addr} {n}"))
            .stdin(Stdio::null())
            .spawn()
            .expect("drain process");
        let _enter = runtime.enter();
        let outboxes = (0..n)
            .map(|_| {
                let (tcp, _) = listener.accept().expect("accept");
                tcp.set_nonblocking(true).expect("nonblocking");
                let tcp = tokio::net::TcpStream::from_std(tcp).expect("register");
                Outbox::new(Socket::new(tcp), 4096).0
            })
            .collect();
        Sockets {
            outboxes,
            drain,
            runtime,
        }
    }
}

impl Drop for Sockets {
    fn drop(&mut self) {
        self.outboxes.clear();
        let _ = self.drain.kill();
        let _ = self.drain.wait();
    }
}

const DRAIN_ENV: &str = "HERALD_FANOUT_BENCH_DRAIN";

/// The child process of [`Sockets`]: connects N sockets and reads them until EOF.
fn drain(spec: &str) {
    let mut parts = spec.split(' ');
    let (Some(addr), Some(Ok(n))) = (parts.next(), parts.next().map(str::parse::<usize>)) else {
        eprintln!("{DRAIN_ENV}: expected \"ADDR N\"");
        std::process::exit(2);
    };
    let mut socks: Vec<std::net::TcpStream> = (0..n)
        .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
        .collect();
    for s in &socks {
        s.set_nonblocking(true).expect("nonblocking");
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut got = false;
        let mut open = 0;
        for s in socks.iter_mut() {
            match s.read(&mut buf) {
                Ok(0) => {}
                Ok(_) => {
                    got = true;
                    open += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
                Err(_) => {}
            }
        }
        if open == 0 {
            return;
        }
        if !got {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }
}

/// N live subscribers of channel `bench:0` on real sockets, and a message frame for it.
fn one_channel(hub: &Hub, subscribers: usize) -> (Sockets, Utf8Bytes) {
    let channel: Arc<str> = "bench:0".into();
    let sockets = Sockets::new(subscribers);
    for (i, outbox) in sockets.outboxes.iter().enumerate() {
        hub.add(&channel, Subscriber::live(i as u64, outbox.clone()));
    }
    let frame = Utf8Bytes::try_from(message_frame("bench:0", &data(), None)).expect("utf-8");
    (sockets, frame)
}

/// `Hub::dispatch` of one frame to N live subscribers of one channel, all the way
/// into N sockets: under the channel's guard one append per subscriber, then one
/// `writev` per idle connection (the figure to compare with the raw-write ceiling).
#[divan::bench(args = [1, 100, 1_000, 10_000], sample_size = 1, sample_count = 100)]
fn hub_dispatch(bencher: Bencher, subscribers: usize) {
    let hub = Hub::new(Arc::new(Metrics::new("bench")));
    let (sockets, frame) = one_channel(&hub, subscribers);
    let since = Instant::now();
    let _enter = sockets.runtime.enter();
    bencher.bench_local(|| hub.dispatch(black_box("bench:0"), &frame, None, since));
}

/// The same for N channels with one subscriber each, dispatching to one of them:
/// the map lookup, one append and one `writev` (the many-channels scenario's shape).
#[divan::bench(args = [5_000], sample_size = 1, sample_count = 2000)]
fn hub_dispatch_one_of_many(bencher: Bencher, channels: usize) {
    let hub = Hub::new(Arc::new(Metrics::new("bench")));
    let sockets = Sockets::new(channels);
    let names: Vec<String> = (0..channels).map(|i| format!("bench:{i}")).collect();
    for (i, (name, outbox)) in names.iter().zip(&sockets.outboxes).enumerate() {
        hub.add(
            &Arc::from(name.as_str()),
            Subscriber::live(i as u64, outbox.clone()),
        );
    }
    let frame = Utf8Bytes::try_from(message_frame("bench:0", &data(), None)).expect("utf-8");
    let since = Instant::now();
    let _enter = sockets.runtime.enter();
    let mut next = 0usize;
    bencher
        .with_inputs(|| {
            next = (next + 7919) % channels;
            names[next].as_str()
        })
        .bench_local_values(|name| hub.dispatch(name, &frame, None, since));
}

/// Write coalescing: one tick of a channel with N subscribers that got
/// [`TICK_MESSAGES`] messages since the last one: the appends to the channel's batch,
/// then the tick (the batch into N queues, one `write` per socket). Per delivery:
/// the figure divided by N × [`TICK_MESSAGES`].
#[divan::bench(args = [100, 1_000], sample_size = 1, sample_count = 100)]
fn hub_coalesced_tick(bencher: Bencher, subscribers: usize) {
    let coalescer = Arc::new(Coalescer::new(std::time::Duration::from_secs(3600), 4096));
    let hub = Hub::with_coalescer(Arc::new(Metrics::new("bench")), coalescer.clone());
    let (sockets, frame) = one_channel(&hub, subscribers);
    let since = Instant::now();
    let _enter = sockets.runtime.enter();
    bencher.bench_local(|| {
        for _ in 0..TICK_MESSAGES {
            hub.dispatch(black_box("bench:0"), &frame, None, since);
        }
        hub.write_coalesced();
    });
}

/// Messages per tick in [`hub_coalesced_tick`]: what a 5 ms tick gives a channel of
/// 1,000 messages/s.
const TICK_MESSAGES: usize = 5;
