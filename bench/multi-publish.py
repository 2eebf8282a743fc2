"""Times the `channels` form of POST /api/publish against one node.

Usage: multi-publish.py PORT PID REQUESTS CHANNELS

Sends REQUESTS publishes one after another over one keep-alive connection, each to
CHANNELS channels (every second one durable, namespace `log`), and prints one JSON line:
request latency p50/p99 in ms and the node's CPU (from /proc/PID/stat) per channel
published, in µs.
"""

import http.client
import json
import statistics
import sys
import time


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def main() -> None:
    port, pid, requests, channels = (int(a) for a in sys.argv[1:5])
    names = [f"log:c{i}" if i % 2 == 0 else f"c{i}" for i in range(channels)]
    body = json.dumps({"channels": names, "data": {"x": 1}})
    conn = http.client.HTTPConnection("127.0.0.1", port)
    latencies = []
    before = cpu_seconds(pid)
    for _ in range(requests):
        start = time.perf_counter()
        conn.request("POST", "/api/publish", body, {"content-type": "application/json"})
        response = conn.getresponse()
        text = response.read()
        if response.status != 200:
            sys.exit(f"publish answered {response.status}: {text[:200]!r}")
        latencies.append((time.perf_counter() - start) * 1e3)
    after = cpu_seconds(pid)
    latencies.sort()
    print(json.dumps({
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)], 3),
        "node_cpu_us_per_channel": round((after - before) * 1e6 / (requests * channels), 2),
    }))


if __name__ == "__main__":
    main()
