#!/usr/bin/env python3
"""SSE (and HTTP streaming) against WebSocket on one node, in the same run (issue 21
item 6): what an idle connection costs the node in memory, and what a broadcast
delivery costs it in CPU, on each transport.

Usage:
    bench/sse-vs-ws.py [--idle-n 5000] [--subs 2000] [--broadcasts 50] [--rate 10]
                       [--repeat 3] [--kinds ws,sse] [--out DIR] [--no-build]

Self-contained: Python 3.11 standard library only (asyncio). The clients are written
here on raw asyncio sockets, no package from PyPI:
  - WebSocket: the RFC 6455 handshake on `GET /ws`, then the node's unmasked frames are
    read; the client's own frames (subscribe, pongs) are masked, as the RFC requires.
  - SSE: `GET /sse`, an HTTP/1.1 response with a chunked body of `data: <frame>` events.
  - NDJSON (`--kinds ws,sse,ndjson`): `POST /stream`, one frame per line.
  Ops of a streaming session are posted to `POST /emulation` (PROTOCOL §2.5).

It runs `cargo build --release --bin herald` (unless --no-build), then for each run
(the order of the kinds alternates from one run to the next) and each kind, on a fresh
node every time (target/release/herald, in-memory backplane, 127.0.0.1 on a free port,
a small configuration written next to the results):

  idle       VmRSS of the node (/proc/PID/status) after it settled with 0 connections,
             then with --idle-n connections of that kind open and idle (each has its
             welcome frame; no subscription), settled again: (after - before) / N.
  broadcast  --subs subscribers of that kind on one channel (WebSocket: the subscribe
             op; SSE: POST /emulation, at most --posts-in-flight at a time; both wait
             for every reply: subscribe is a barrier), then --broadcasts publishes
             through `POST /api/publish {"channel","data"}` at --rate per second, one
             request in flight. Node CPU (utime + stime of /proc/PID/stat) from just
             before the first publish until every subscriber holds every message (or
             the drain gives up), divided by the deliveries counted. Every subscriber
             counts each sequence number it receives: lost, duplicates and
             slow-consumer closes are reported, and a run with any is marked.

At the end: one table per run and the medians with the SSE / WebSocket ratios, against
issue 21's target (each within 1.5x). Everything goes to --out (default
target/bench/sse-vs-ws-<time>/): results.json, results.md, the node logs.

Load goes to 127.0.0.1 only, from a fresh 127.0.x.y source address per phase (so
TIME_WAIT ports of one phase never run short in the next). Every wait has a timeout,
the whole script has a deadline (--deadline), and the node is killed on any exit.
The node and this script share the machine's cores: the script reports its own CPU
over each broadcast window and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Each process may open 20,000 files here; the node and this script each hold one
# descriptor per connection, so stay well under.
MAX_CONNECTIONS = 15_000

CONFIG = """# written by bench/sse-vs-ws.py: limits raised so that the script measures the node,
# not its abuse protection (as bench/bench.toml).
[server]
ping_interval = "{ping}"
drain_period = "1s"

[limits]
max_connections = 100000
new_connections_per_sec = 100000
messages_per_sec = 1000000
outbox_messages = 4096
max_subscriptions = 1024

[default_namespace]
publish = "anyone"

[namespaces.bench]
publish = "anyone"
"""

MESSAGE_PREFIX = b'{"type":"message"'
SEQ = re.compile(rb'"s":(\d+)')


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- node


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def proc_cpu_s(pid: int | str) -> float:
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of stat(5), counted after the command name's ')'.
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


LIVE_NODES: set = set()


class Node:
    def __init__(self, binary: str, config: str, log_path: str, name: str):
        self.binary, self.config, self.log_path, self.name = binary, config, log_path, name
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> None:
        self.port = free_port()
        self.logf = open(self.log_path, "ab")
        env = dict(os.environ, RUST_LOG=os.environ.get("NODE_LOG", "warn"))
        self.proc = subprocess.Popen(
            [self.binary, "--listen", f"127.0.0.1:{self.port}", "--config", self.config,
             "--node-id", self.name],
            stdout=self.logf, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        LIVE_NODES.add(self)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}; see {self.log_path}")
            if http_status_sync(self.port, "/readyz") == 200:
                return
            time.sleep(0.1)
        raise RuntimeError("node not ready within 20 s")

    @property
    def pid(self) -> int:
        assert self.proc
        return self.proc.pid

    def rss_kib(self) -> int:
        return proc_rss_kib(self.pid)

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.logf.close()
        LIVE_NODES.discard(self)

    def kill(self) -> None:
        """The last resort on any exit: only the process this script started."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        LIVE_NODES.discard(self)


def http_status_sync(port: int, path: str) -> int:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            line = s.recv(64).split(b"\r\n", 1)[0].split()
            return int(line[1]) if len(line) > 1 else 0
    except OSError:
        return 0


async def settled_rss(node: Node, first_wait: float, max_wait: float = 12.0) -> int:
    """VmRSS once it stopped moving: three samples 0.5 s apart within 64 KiB."""
    await asyncio.sleep(first_wait)
    samples = [node.rss_kib()]
    end = time.monotonic() + max_wait
    while time.monotonic() < end:
        await asyncio.sleep(0.5)
        samples.append(node.rss_kib())
        last = samples[-3:]
        if len(last) == 3 and max(last) - min(last) <= 64:
            break
    return samples[-1]


# --------------------------------------------------------------------------- clients


class Tally:
    """What every subscriber of a broadcast received."""

    def __init__(self) -> None:
        self.expected = 0
        self.complete = 0
        self.subscribers = 0
        self.all_in = asyncio.Event()
        self.last_progress = time.monotonic()

    def arm(self, expected: int, subscribers: int) -> None:
        self.expected, self.subscribers, self.complete = expected, subscribers, 0
        self.all_in.clear()


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame: FIN, opcode, masked payload (RFC 6455 §5.3)."""
    n = len(payload)
    mask = os.urandom(4)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    if n:
        m = (mask * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big")
    return head + mask + payload


class Client(asyncio.Protocol):
    """One connection of one kind: 'ws', 'sse' or 'ndjson'."""

    def __init__(self, kind: str, port: int, tally: Tally):
        self.kind, self.port, self.tally = kind, port, tally
        loop = asyncio.get_running_loop()
        self.welcome: asyncio.Future = loop.create_future()
        self.replies: dict[int, asyncio.Future] = {}
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()  # bytes not parsed yet (head, WebSocket frames)
        self.body = bytearray()  # de-chunked body not split yet (sse, ndjson)
        self.head_done = False
        self.chunked = False
        self.chunk_left = -1  # -1: reading a chunk-size line; else bytes (+2 for CRLF) due
        self.info: dict = {}
        self.got: bytearray | None = None
        self.count = 0
        self.dups = 0
        self.keep_alives = 0
        self.close_frame: dict | None = None
        self.lost_connection = False
        self.message_bytes = 0

    # -- connection
    def connection_made(self, transport) -> None:
        self.transport = transport
        host = f"127.0.0.1:{self.port}"
        if self.kind == "ws":
            key = base64.b64encode(os.urandom(16)).decode()
            req = (f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n")
        elif self.kind == "sse":
            req = f"GET /sse HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
        else:
            req = (f"POST /stream HTTP/1.1\r\nHost: {host}\r\nAccept: application/x-ndjson\r\n"
                   "Content-Length: 0\r\n\r\n")
        transport.write(req.encode())

    def connection_lost(self, exc) -> None:
        self.lost_connection = True
        if not self.welcome.done():
            self.welcome.set_exception(ConnectionError(f"closed before the welcome: {exc}"))
        for f in self.replies.values():
            if not f.done():
                f.set_exception(ConnectionError("closed before the reply"))

    def close(self) -> None:
        if self.transport:
            self.transport.abort()

    # -- reading
    def data_received(self, data: bytes) -> None:
        if not self.head_done:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            rest = bytes(self.buf[end + 4:])
            self.buf.clear()
            status = head.split(" ", 2)[1]
            want = "101" if self.kind == "ws" else "200"
            if status != want:
                if not self.welcome.done():
                    self.welcome.set_exception(ConnectionError(f"{head.splitlines()[0]}"))
                self.transport.close()
                return
            self.chunked = "transfer-encoding: chunked" in head.lower()
            self.head_done = True
            data = rest
            if not data:
                return
        if self.kind == "ws":
            self.buf += data
            self.read_ws()
        else:
            if self.chunked:
                self.dechunk(data)
            else:
                self.body += data
            self.read_lines()

    def read_ws(self) -> None:
        buf = self.buf
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            ln = b1 & 0x7F
            hl = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = int.from_bytes(buf[pos + 2:pos + 4], "big")
                hl = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2:pos + 10], "big")
                hl = 10
            if n - pos < hl + ln:
                break
            payload = bytes(buf[pos + hl:pos + hl + ln])
            pos += hl + ln
            op = b0 & 0x0F
            if op == 1:
                self.on_frame(payload)
            elif op == 9:
                self.keep_alives += 1
                self.transport.write(ws_frame(0xA, payload))
            elif op == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.close_frame = {"code": code, "reason": payload[2:].decode(errors="replace")}
        del buf[:pos]

    def dechunk(self, data: bytes) -> None:
        self.buf += data
        buf = self.buf
        pos = 0
        while True:
            if self.chunk_left < 0:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
                pos = eol + 2
                self.chunk_left = size + 2  # data and its CRLF
                if size == 0:
                    self.chunk_left = -1
                    break  # end of body
            else:
                take = min(self.chunk_left, len(buf) - pos)
                if take <= 0:
                    break
                self.chunk_left -= take
                chunk = buf[pos:pos + take]
                pos += take
                if self.chunk_left < 2:  # some of the CRLF is in `chunk`
                    cut = 2 - self.chunk_left
                    chunk = chunk[:len(chunk) - cut] if cut <= len(chunk) else b""
                self.body += chunk
                if self.chunk_left == 0:
                    self.chunk_left = -1
        del buf[:pos]

    def read_lines(self) -> None:
        body = self.body
        sep = b"\n\n" if self.kind == "sse" else b"\n"
        pos = 0
        while True:
            end = body.find(sep, pos)
            if end < 0:
                break
            item = bytes(body[pos:end])
            pos = end + len(sep)
            if self.kind == "sse":
                if item.startswith(b"data: "):
                    self.on_frame(item[6:])
                elif item.startswith(b":"):
                    self.keep_alives += 1
            else:
                if item:
                    self.on_frame(item)
                else:
                    self.keep_alives += 1
        del body[:pos]

    def on_frame(self, payload: bytes) -> None:
        if payload.startswith(MESSAGE_PREFIX):
            m = SEQ.search(payload)
            got = self.got
            if m is None or got is None:
                return
            s = int(m.group(1))
            if s >= len(got):
                return
            self.message_bytes = len(payload)
            if got[s]:
                self.dups += 1
                return
            got[s] = 1
            self.count += 1
            t = self.tally
            t.last_progress = time.monotonic()
            if self.count == t.expected:
                t.complete += 1
                if t.complete == t.subscribers:
                    t.all_in.set()
            return
        frame = json.loads(payload)
        typ = frame.get("type")
        if typ == "welcome":
            self.info = frame
            if not self.welcome.done():
                self.welcome.set_result(frame)
        elif typ == "reply":
            f = self.replies.get(frame.get("id"))
            if f and not f.done():
                f.set_result(frame)
        elif typ == "close":
            self.close_frame = frame

    # -- ops
    def expect_reply(self, rid: int) -> asyncio.Future:
        f = asyncio.get_running_loop().create_future()
        self.replies[rid] = f
        return f

    def send_ws_op(self, op: dict) -> None:
        self.transport.write(ws_frame(0x1, json.dumps(op, separators=(",", ":")).encode()))


async def open_clients(kind: str, port: int, n: int, src: str, tally: Tally,
                       in_flight: int = 256, timeout: float = 120) -> list[Client]:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(in_flight)
    clients: list[Client] = []

    async def one() -> None:
        async with sem:
            _, c = await loop.create_connection(lambda: Client(kind, port, tally),
                                                "127.0.0.1", port, local_addr=(src, 0))
            clients.append(c)
            await asyncio.wait_for(c.welcome, 20)

    try:
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), timeout)
    except BaseException:
        for c in clients:
            c.close()
        raise
    return clients


# --------------------------------------------------------------------------- HTTP posts


class HttpConn:
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self, port: int, src: str):
        self.port, self.src = port, src
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes, timeout: float = 10) -> tuple[int, bytes]:
        for attempt in (0, 1):
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(
                        "127.0.0.1", self.port, local_addr=(self.src, 0))
                return await asyncio.wait_for(self._request(method, path, body), timeout)
            except (ConnectionError, asyncio.IncompleteReadError):
                # A keep-alive connection the node closed (header_read_timeout): once more.
                self.close()
                if attempt:
                    raise
        raise AssertionError

    async def _request(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        status = int(head.split(" ", 2)[1])
        m = re.search(r"content-length:\s*(\d+)", head)
        if m:
            data = await self.reader.readexactly(int(m.group(1)))
        elif "transfer-encoding: chunked" in head:
            data = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data += (await self.reader.readexactly(size + 2))[:size]
                if size == 0:
                    break
        else:
            data = b""
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def subscribe_all(kind: str, clients: list[Client], channel_of, port: int, src: str,
                        posts_in_flight: int, timeout: float = 120) -> None:
    """Subscribes every client and waits for every reply (the barrier)."""
    pool: asyncio.Queue[HttpConn] = asyncio.Queue()
    conns = [HttpConn(port, src) for _ in range(posts_in_flight)]
    for c in conns:
        pool.put_nowait(c)
    ws_sem = asyncio.Semaphore(512)

    async def one(i: int, c: Client) -> None:
        op = {"op": "subscribe", "channel": channel_of(i), "id": 1}
        reply = c.expect_reply(1)
        if kind == "ws":
            async with ws_sem:
                c.send_ws_op(op)
                r = await asyncio.wait_for(reply, 30)
        else:
            w = c.info
            body = json.dumps({"node": w["node"], "session": w["session"], "key": w["key"],
                               "frame": op}, separators=(",", ":")).encode()
            hc = await pool.get()
            try:
                status, text = await hc.request("POST", "/emulation", body)
            finally:
                pool.put_nowait(hc)
            if status != 202:
                raise RuntimeError(f"/emulation answered {status}: {text[:200]!r}")
            r = await asyncio.wait_for(reply, 30)
        if "error" in r:
            raise RuntimeError(f"subscribe refused: {r}")

    try:
        await asyncio.wait_for(asyncio.gather(*(one(i, c) for i, c in enumerate(clients))), timeout)
    finally:
        for hc in conns:
            hc.close()


# --------------------------------------------------------------------------- phases


@dataclass
class Ctx:
    args: argparse.Namespace
    binary: str
    config: str
    out: str
    phase_no: int = 0
    results: list = field(default_factory=list)

    def next_src(self) -> str:
        self.phase_no += 1
        # 127.0.x.y with x in 100..199: a fresh source address per phase.
        n = self.phase_no + (os.getpid() % 50) * 200
        return f"127.0.{100 + (n // 250) % 100}.{1 + n % 250}"

    def node(self, label: str) -> Node:
        return Node(self.binary, self.config, os.path.join(self.out, f"node-{label}.log"), label)


async def idle_phase(ctx: Ctx, kind: str, run: int) -> dict:
    n = ctx.args.idle_n
    node = ctx.node(f"idle-{kind}-{run}")
    node.start()
    clients: list[Client] = []
    try:
        before = await settled_rss(node, 1.0)
        fds_before = node.fds()
        t0 = time.monotonic()
        clients = await open_clients(kind, node.port, n, ctx.next_src(), Tally())
        open_s = time.monotonic() - t0
        after = await settled_rss(node, ctx.args.settle)
        fds_after = node.fds()
        closed = sum(1 for c in clients if c.lost_connection or c.close_frame)
        r = {
            "phase": "idle", "kind": kind, "run": run, "connections": n,
            "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_conn": round((after - before) / n, 3),
            "fds_added": fds_after - fds_before, "closed_by_node": closed,
            "open_s": round(open_s, 2), "load_avg": loadavg(),
        }
        log(f"idle {kind} run {run}: {r['kib_per_conn']} KiB/conn "
            f"({before} -> {after} KiB, {fds_after - fds_before} fds, opened in {open_s:.1f} s)")
        return r
    finally:
        for c in clients:
            c.close()
        await asyncio.sleep(0.2)
        node.stop()


async def broadcast_phase(ctx: Ctx, kind: str, run: int) -> dict:
    a = ctx.args
    s, m = a.subs, a.broadcasts
    channel = "bench:sse-vs-ws"
    node = ctx.node(f"bcast-{kind}-{run}")
    node.start()
    tally = Tally()
    clients: list[Client] = []
    pub = None
    try:
        src = ctx.next_src()
        clients = await open_clients(kind, node.port, s, src, tally)
        await subscribe_all(kind, clients, lambda i: channel, node.port, src, a.posts_in_flight)
        opened = time.monotonic()
        for c in clients:
            c.got = bytearray(m)
        tally.arm(m, s)
        # The payload pads the delivered WebSocket frame to ~100 bytes, as herald-bench does.
        pad = max(0, 98 - len(f'{{"type":"message","channel":"{channel}","data":{{"s":{m},"p":""}}}}'))
        pub = HttpConn(node.port, src)
        await pub.request("GET", "/readyz", b"")  # the publisher's connection, opened before
        await asyncio.sleep(a.quiet)
        ka0 = sum(c.keep_alives for c in clients)
        load0 = loadavg()
        cpu0, self0, t0 = node.cpu_s(), proc_cpu_s("self"), time.monotonic()
        late = 0.0
        for i in range(m):
            due = t0 + i / a.rate
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                late = max(late, now - due)
            body = json.dumps({"channel": channel, "data": {"s": i, "p": "x" * pad}},
                              separators=(",", ":")).encode()
            status, text = await pub.request("POST", "/api/publish", body)
            if status != 200:
                raise RuntimeError(f"/api/publish answered {status}: {text[:200]!r}")
        published = time.monotonic()
        # Drain: until everything arrived, nothing new for --drain s, or --drain-max s.
        end = published + a.drain_max
        while not tally.all_in.is_set() and time.monotonic() < end:
            if time.monotonic() - max(tally.last_progress, published) > a.drain:
                break
            try:
                await asyncio.wait_for(tally.all_in.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
        cpu1, self1, t1 = node.cpu_s(), proc_cpu_s("self"), time.monotonic()
        delivered = sum(c.count for c in clients)
        dups = sum(c.dups for c in clients)
        closes = sum(1 for c in clients if c.close_frame or c.lost_connection)
        expected = s * m
        wall = t1 - t0
        r = {
            "phase": "broadcast", "kind": kind, "run": run, "subscribers": s,
            "broadcasts": m, "rate": a.rate, "expected": expected, "delivered": delivered,
            "lost": expected - delivered, "duplicates": dups, "closes": closes,
            "node_cpu_s": round(cpu1 - cpu0, 3),
            "us_per_delivery": round((cpu1 - cpu0) / max(delivered, 1) * 1e6, 3),
            "node_cores": round((cpu1 - cpu0) / wall, 3),
            "script_cores": round((self1 - self0) / wall, 3),
            "window_s": round(wall, 2), "publish_s": round(published - t0, 2),
            "publish_late_max_ms": round(late * 1000, 1),
            "keep_alives_in_window": sum(c.keep_alives for c in clients) - ka0,
            "message_bytes": max(c.message_bytes for c in clients),
            "since_subscribed_s": round(t1 - opened, 1),
            "load_avg": max(load0, loadavg()),
            "complete": delivered == expected and dups == 0 and closes == 0,
        }
        log(f"bcast {kind} run {run}: {r['us_per_delivery']} us/delivery, "
            f"{delivered}/{expected} delivered, {dups} dup, {closes} closes, "
            f"node {r['node_cores']} cores, script {r['script_cores']} cores, "
            f"{r['keep_alives_in_window']} keep-alives in window")
        return r
    finally:
        if pub:
            pub.close()
        for c in clients:
            c.close()
        await asyncio.sleep(0.2)
        node.stop()


# --------------------------------------------------------------------------- report


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def summarize(ctx: Ctx) -> str:
    a = ctx.args
    res = ctx.results
    kinds = a.kinds
    lines = []
    lines.append(f"Command: `bench/sse-vs-ws.py --idle-n {a.idle_n} --subs {a.subs} "
                 f"--broadcasts {a.broadcasts} --rate {a.rate} --repeat {a.repeat} "
                 f"--kinds {','.join(kinds)}`")
    lines.append(f"Node at commit {getattr(a, 'commit', '?')}; results in `{ctx.out}`.")
    lines.append("")
    lines.append("| run | kind | idle KiB/conn | idle RSS before → after (KiB) | bcast µs/delivery "
                 "| delivered / expected | dup | closes | node cores | script cores | keep-alives in window | load avg |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for run in range(a.repeat):
        for kind in kinds:
            i = next((r for r in res if r["phase"] == "idle" and r["kind"] == kind and r["run"] == run), None)
            b = next((r for r in res if r["phase"] == "broadcast" and r["kind"] == kind and r["run"] == run), None)
            lines.append(
                f"| {run + 1} | {kind} | {i['kib_per_conn']:.2f} | {i['rss_before_kib']:,} → {i['rss_after_kib']:,} | "
                f"{b['us_per_delivery']:.2f} | {b['delivered']:,} / {b['expected']:,} | {b['duplicates']} | "
                f"{b['closes']} | {b['node_cores']:.2f} | {b['script_cores']:.2f} | "
                f"{b['keep_alives_in_window']} | {max(i['load_avg'], b['load_avg']):.1f} |"
                if i and b else f"| {run + 1} | {kind} | (missing) |")
    lines.append("")
    med = {}
    for kind in kinds:
        med[kind] = (
            median([r["kib_per_conn"] for r in res if r["phase"] == "idle" and r["kind"] == kind]),
            median([r["us_per_delivery"] for r in res if r["phase"] == "broadcast" and r["kind"] == kind]),
        )
    lines.append("| kind | idle KiB/conn (median) | broadcast node µs/delivery (median) | "
                 "idle × WebSocket | broadcast × WebSocket |")
    lines.append("|---|---|---|---|---|")
    ws = med.get("ws")
    for kind in kinds:
        ki, kb = med[kind]
        ri = f"{ki / ws[0]:.2f}" if ws else "–"
        rb = f"{kb / ws[1]:.2f}" if ws else "–"
        lines.append(f"| {kind} | {ki:.2f} | {kb:.2f} | {ri} | {rb} |")
    lines.append("")
    if ws:
        for kind in kinds:
            if kind == "ws":
                continue
            per_i, per_b = [], []
            for run in range(a.repeat):
                def get(phase, k, key):
                    r = next((r for r in res if r["phase"] == phase and r["kind"] == k and r["run"] == run), None)
                    return r[key] if r else None
                xi, wi = get("idle", kind, "kib_per_conn"), get("idle", "ws", "kib_per_conn")
                xb, wb = get("broadcast", kind, "us_per_delivery"), get("broadcast", "ws", "us_per_delivery")
                if xi is not None and wi:
                    per_i.append(xi / wi)
                if xb is not None and wb:
                    per_b.append(xb / wb)
            ri, rb = med[kind][0] / ws[0], med[kind][1] / ws[1]
            lines.append(
                f"- {kind} / ws, ratio of medians: idle memory **{ri:.2f}×** "
                f"({'met' if ri <= 1.5 else 'NOT met'}, target ≤ 1.5×), broadcast CPU **{rb:.2f}×** "
                f"({'met' if rb <= 1.5 else 'NOT met'}); per-run ratios: idle "
                f"{', '.join(f'{x:.2f}' for x in per_i)}, broadcast {', '.join(f'{x:.2f}' for x in per_b)}.")
    incomplete = [r for r in res if r["phase"] == "broadcast" and not r["complete"]]
    lines.append(f"- Broadcast runs with loss, duplicates or closes: {len(incomplete)} of "
                 f"{sum(1 for r in res if r['phase'] == 'broadcast')}.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


async def main_async(ctx: Ctx) -> None:
    a = ctx.args
    for run in range(a.repeat):
        order = a.kinds if run % 2 == 0 else list(reversed(a.kinds))
        log(f"run {run + 1} of {a.repeat}: {' then '.join(order)}")
        for kind in order:
            ctx.results.append(await asyncio.wait_for(idle_phase(ctx, kind, run), a.phase_timeout))
        for kind in order:
            ctx.results.append(await asyncio.wait_for(broadcast_phase(ctx, kind, run), a.phase_timeout))
        with open(os.path.join(ctx.out, "results.json"), "w") as f:
            json.dump({"args": vars(a), "results": ctx.results}, f, indent=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--idle-n", type=int, default=5000, help="idle connections per kind (5000)")
    p.add_argument("--subs", type=int, default=2000, help="broadcast subscribers (2000)")
    p.add_argument("--broadcasts", type=int, default=50, help="publishes per broadcast run (50)")
    p.add_argument("--rate", type=float, default=10, help="publishes per second (10)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--kinds", default="ws,sse", help="comma-separated: ws, sse, ndjson")
    p.add_argument("--posts-in-flight", type=int, default=64,
                   help="concurrent POST /emulation subscribes (64 keep-alive connections)")
    p.add_argument("--settle", type=float, default=3.0, help="seconds before the RSS samples")
    p.add_argument("--quiet", type=float, default=1.0,
                   help="seconds between the last subscribe reply and the first publish")
    p.add_argument("--drain", type=float, default=5.0)
    p.add_argument("--drain-max", type=float, default=60.0)
    p.add_argument("--ping-interval", default="25s",
                   help="server.ping_interval (streaming sessions keep alive every min(it, 15 s))")
    p.add_argument("--phase-timeout", type=float, default=300.0)
    p.add_argument("--deadline", type=float, default=3600.0, help="seconds for the whole script")
    p.add_argument("--out", default=None)
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--herald", default=os.path.join(ROOT, "target", "release", "herald"))
    a = p.parse_args()
    a.kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    for k in a.kinds:
        if k not in ("ws", "sse", "ndjson"):
            p.error(f"unknown kind {k}")
    if max(a.idle_n, a.subs) > MAX_CONNECTIONS:
        p.error(f"at most {MAX_CONNECTIONS} connections (20,000 open files per process)")

    out = a.out or os.path.join(ROOT, "target", "bench", time.strftime("sse-vs-ws-%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    config = os.path.join(out, "node.toml")
    with open(config, "w") as f:
        f.write(CONFIG.format(ping=a.ping_interval))
    if not a.no_build:
        log("cargo build --release --bin herald")
        subprocess.run(["cargo", "build", "--release", "--bin", "herald"], cwd=ROOT, check=True,
                       timeout=1800)
    ctx = Ctx(a, a.herald, config, out)
    a.commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip()

    def on_deadline(*_):
        raise TimeoutError(f"--deadline of {a.deadline:.0f} s passed")

    signal.signal(signal.SIGALRM, on_deadline)
    signal.alarm(int(a.deadline))
    log(f"results in {out}")
    try:
        asyncio.run(main_async(ctx))
    finally:
        signal.alarm(0)
        for node in list(LIVE_NODES):
            node.kill()
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump({"args": vars(a), "results": ctx.results}, f, indent=1)
    md = summarize(ctx)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
