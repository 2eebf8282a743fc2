"""Idle and slow-loris HTTP connections against one node, on loopback only: what they
cost the node (RSS, open descriptors) while open and after they close.

Usage: http-idle.py PORT PID N [--partial] [--hold SECONDS] [--waves W]

Opens N TCP connections to 127.0.0.1:PORT (N at most 15,000, so that this process
stays under a 20,000 descriptor limit), sends nothing on them (or, with --partial, the
first line and one header of a request that never ends: slow loris), holds them for
--hold seconds (default 5), closes the ones still open, and does that --waves times
(default 2: a second wave shows whether the memory of the first is reused). Prints one
JSON line per sample: the phase, the node's VmRSS in MB and descriptor count (from
/proc/PID), and how many of the connections the node had already closed.
"""

import argparse
import json
import os
import socket
import time

MAX_CONNECTIONS = 15_000


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return -1.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def closed_by_node(socks: list) -> int:
    """Connections the node has closed (EOF or reset), without consuming anything."""
    n = 0
    for s in socks:
        try:
            if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                n += 1
        except BlockingIOError:
            pass
        except OSError:
            n += 1
    return n


def sample(phase: str, pid: int, socks: list, started: float) -> None:
    print(
        json.dumps(
            {
                "phase": phase,
                "t_s": round(time.monotonic() - started, 1),
                "rss_mb": rss_mb(pid),
                "fds": fds(pid),
                "open": len(socks),
                "closed_by_node": closed_by_node(socks),
            }
        ),
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("pid", type=int)
    p.add_argument("n", type=int)
    p.add_argument("--partial", action="store_true")
    p.add_argument("--hold", type=float, default=5.0)
    p.add_argument("--waves", type=int, default=2)
    a = p.parse_args()
    n = min(a.n, MAX_CONNECTIONS)
    started = time.monotonic()
    sample("before", a.pid, [], started)
    for wave in range(1, a.waves + 1):
        socks = []
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.connect(("127.0.0.1", a.port))
                if a.partial:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            except OSError:
                s.close()
                continue
            socks.append(s)
        time.sleep(1)
        sample(f"wave{wave}-open", a.pid, socks, started)
        time.sleep(max(a.hold - 1, 0))
        sample(f"wave{wave}-held", a.pid, socks, started)
        for s in socks:
            s.close()
        socks = []
        time.sleep(2)
        sample(f"wave{wave}-closed", a.pid, socks, started)


if __name__ == "__main__":
    main()
