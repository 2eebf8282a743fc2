//! raw_ceiling: what writing WebSocket frames to loopback TCP sockets costs with
//! nothing else in the way (the "raw-write ceiling" of docs/BENCHMARKS.md).
//!
//! M sockets on 127.0.0.1; a pre-framed text frame of `--frame-bytes` (default 100,
//! header included) is written to every socket in turn, with `B` frames per `write()`
//! for each B of `--batches` (default 1 and 16). A child process (this program with
//! `--reader`) drains the sockets, so its CPU is counted apart; only the writer thread's
//! CPU (utime + stime of that thread, from /proc/thread-self) is divided by deliveries.
//!
//! The reader either polls every socket in turn (`--reader-mode poll`, the default:
//! nobody ever sleeps on a socket, so a write wakes no one: the lowest cost a write can
//! have) or waits in epoll like any real client (`--reader-mode epoll`: a tokio task
//! per socket, so each write that finds its reader asleep also pays the wake-up).
//! `--rounds-per-sec R` paces the writer like a broadcast at R messages/s (one frame per
//! socket per round) instead of writing as fast as it can.
//!
//! ```text
//! cargo run --release --example raw_ceiling -- --sockets 1000 --secs 3
//! ```
//!
//! Prints one JSON object on stdout and a short table on stderr.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Args {
    sockets: usize,
    secs: f64,
    batches: Vec<usize>,
    frame_bytes: usize,
    nodelay: bool,
    epoll_reader: bool,
    rounds_per_sec: f64,
    /// Where the readers connect from (127.0.0.1 when not given). A run after many
    /// others needs a fresh address: ephemeral ports that a load tool took with
    /// `bind()` stay unusable for `connect()` while in TIME_WAIT.
    source_ip: Option<std::net::IpAddr>,
}

fn parse_args() -> Result<(Args, Option<(String, usize)>), String> {
    let mut args = Args {
        sockets: 1000,
        secs: 3.0,
        batches: vec![1, 16],
        frame_bytes: 100,
        nodelay: true,
        epoll_reader: false,
        rounds_per_sec: 0.0,
        source_ip: None,
    };
    let mut reader = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--sockets" => args.sockets = val("--sockets")?.parse().map_err(|e| format!("{e}"))?,
            "--secs" => args.secs = val("--secs")?.parse().map_err(|e| format!("{e}"))?,
            "--frame-bytes" => {
                args.frame_bytes = val("--frame-bytes")?.parse().map_err(|e| format!("{e}"))?
            }
            "--batches" => {
                args.batches = val("--batches")?
                    .split(',')
                    .map(|b| b.trim().parse().map_err(|e| format!("{e}")))
                    .collect::<Result<_, _>>()?
            }
            "--no-nodelay" => args.nodelay = false,
            "--reader-mode" => match val("--reader-mode")?.as_str() {
                "poll" => args.epoll_reader = false,
                "epoll" => args.epoll_reader = true,
                other => return Err(format!("--reader-mode poll|epoll, not {other}")),
            },
            "--rounds-per-sec" => {
                args.rounds_per_sec = val("--rounds-per-sec")?
                    .parse()
                    .map_err(|e| format!("{e}"))?
            }
            "--source-ip" => {
                args.source_ip = Some(val("--source-ip")?.parse().map_err(|e| format!("{e}"))?)
            }
            "--reader" => {
                let addr = val("--reader")?;
                let n = val("--reader")?.parse().map_err(|e| format!("{e}"))?;
                args.epoll_reader = val("--reader")? == "epoll";
                reader = Some((addr, n));
            }
            "-h" | "--help" => {
                return Err(
                    "usage: raw_ceiling [--sockets M] [--secs S] [--batches 1,16] \
                            [--frame-bytes 100] [--no-nodelay] [--reader-mode poll|epoll] \
                            [--rounds-per-sec R] [--source-ip 127.0.x.y]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.frame_bytes < 2 || args.frame_bytes > 127 {
        return Err("--frame-bytes must be 2..=127 (a one-byte length header)".into());
    }
    Ok((args, reader))
}

fn main() {
    let (args, reader) = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("raw_ceiling: {e}");
            std::process::exit(2);
        }
    };
    if let Some((addr, n)) = reader {
        if args.epoll_reader {
            run_epoll_reader(&addr, n, args.source_ip);
        } else {
            run_reader(&addr, n, args.source_ip);
        }
        return;
    }
    if let Err(e) = run_writer(&args) {
        eprintln!("raw_ceiling: {e}");
        std::process::exit(1);
    }
}

/// The draining side: M connections, one thread, poll(2)-free: each socket is
/// non-blocking and read in turn until everything is empty, with a short sleep when
/// nothing came.
fn run_reader(addr: &str, n: usize, source: Option<std::net::IpAddr>) {
    let mut socks: Vec<TcpStream> = (0..n)
        .map(|_| connect_from(addr, source).expect("reader connect"))
        .collect();
    for s in &socks {
        s.set_nonblocking(true).expect("nonblocking");
    }
    let mut buf = vec![0u8; 256 * 1024];
    let mut open = n;
    while open > 0 {
        let mut got = false;
        open = 0;
        for s in socks.iter_mut() {
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {
                        got = true;
                        open += 1;
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        open += 1;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        if !got {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// The epoll-waiting side: one tokio task per connection on a current-thread runtime,
/// each asleep in `read().await` until data arrives (how client libraries read).
fn run_epoll_reader(addr: &str, n: usize, source: Option<std::net::IpAddr>) {
    use tokio::io::AsyncReadExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let std = connect_from(addr, source).expect("reader connect");
            std.set_nonblocking(true).expect("nonblocking");
            let mut s = tokio::net::TcpStream::from_std(std).expect("reader socket");
            tasks.spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(1..) = s.read(&mut buf).await {}
            });
        }
        while tasks.join_next().await.is_some() {}
    });
}

/// A blocking connection to `addr`, bound first to `source` when given.
fn connect_from(addr: &str, source: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let Some(ip) = source else {
        return TcpStream::connect(addr);
    };
    let to: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        None,
    )?;
    sock.bind(&std::net::SocketAddr::new(ip, 0).into())?;
    sock.connect(&to.into())?;
    Ok(sock.into())
}

/// CPU seconds of the calling thread (utime + stime).
fn thread_cpu() -> f64 {
    proc_cpu("/proc/thread-self/stat")
}

fn proc_cpu(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let rest = stat.rfind(')').map(|i| &stat[i + 1..]).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / clk_tck()
}

/// Run time of the calling thread on a CPU, in seconds (ns resolution).
fn thread_runtime() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 / 1e9)
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn frame(bytes: usize) -> Vec<u8> {
    // FIN + text opcode; unmasked (server to client); 7-bit length.
    let payload = bytes - 2;
    let mut f = vec![0x81, payload as u8];
    f.extend(std::iter::repeat_n(b'x', payload));
    f
}

fn run_writer(args: &Args) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mode = if args.epoll_reader { "epoll" } else { "poll" };
    let mut command = Command::new(std::env::current_exe()?);
    if let Some(ip) = args.source_ip {
        command.args(["--source-ip", &ip.to_string()]);
    }
    let mut child: Child = command
        .args([
            "--reader",
            &addr.to_string(),
            &args.sockets.to_string(),
            mode,
        ])
        .stdin(Stdio::null())
        .spawn()?;
    let mut socks = Vec::with_capacity(args.sockets);
    for _ in 0..args.sockets {
        let (s, _) = listener.accept()?;
        s.set_nodelay(args.nodelay)?;
        socks.push(s);
    }
    let child_stat = format!("/proc/{}/stat", child.id());
    let one = frame(args.frame_bytes);
    let mut results = Vec::new();
    for &batch in &args.batches {
        let buf: Vec<u8> = one.repeat(batch.max(1));
        // Warm up: one round.
        for s in socks.iter_mut() {
            s.write_all(&buf)?;
        }
        let reader_before = proc_cpu(&child_stat);
        let (cpu0, run0) = (thread_cpu(), thread_runtime());
        let start = Instant::now();
        let mut writes: u64 = 0;
        let mut rounds = 0u64;
        while start.elapsed().as_secs_f64() < args.secs {
            for s in socks.iter_mut() {
                s.write_all(&buf)?;
            }
            writes += socks.len() as u64;
            rounds += 1;
            if args.rounds_per_sec > 0.0 {
                let due = Duration::from_secs_f64(rounds as f64 / args.rounds_per_sec);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        let wall = start.elapsed().as_secs_f64();
        let cpu = thread_cpu() - cpu0;
        let run = thread_runtime().zip(run0).map(|(a, b)| a - b);
        let reader_cpu = proc_cpu(&child_stat) - reader_before;
        let deliveries = writes * batch as u64;
        let precise = run.unwrap_or(cpu);
        let r = serde_json::json!({
            "frames_per_write": batch,
            "sockets": args.sockets,
            "frame_bytes": args.frame_bytes,
            "reader_mode": mode,
            "rounds_per_sec": args.rounds_per_sec,
            "writes": writes,
            "deliveries": deliveries,
            "wall_s": wall,
            "writer_cpu_s": cpu,
            "writer_runtime_s": run,
            "writer_cpu_us_per_delivery": precise * 1e6 / deliveries as f64,
            "writer_cpu_us_per_write": precise * 1e6 / writes as f64,
            "reader_cpu_s": reader_cpu,
            "reader_cpu_us_per_delivery": reader_cpu * 1e6 / deliveries as f64,
            "deliveries_per_s": deliveries as f64 / wall,
        });
        eprintln!(
            "raw_ceiling: {} sockets, {} frame(s) of {} B per write(): {:.3} µs writer CPU per delivery ({:.2} µs per write), reader {:.3} µs, {:.0} deliveries/s",
            args.sockets,
            batch,
            args.frame_bytes,
            r["writer_cpu_us_per_delivery"].as_f64().unwrap_or(0.0),
            r["writer_cpu_us_per_write"].as_f64().unwrap_or(0.0),
            r["reader_cpu_us_per_delivery"].as_f64().unwrap_or(0.0),
            r["deliveries_per_s"].as_f64().unwrap_or(0.0),
        );
        results.push(r);
    }
    drop(socks);
    let _ = child.wait();
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({ "raw_ceiling": results }))?
    );
    Ok(())
}
