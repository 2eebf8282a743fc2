#!/usr/bin/env python3
"""The markdown tables of bench/cluster.sh from its result directory.

Each run is MODE.REP.json (herald-bench's report, with every redis-server of the mode
as an --aux-pids process) and MODE.REP.meta.json (the servers' names and ports, their
CPU ticks over an idle window before the run, and the PUBLISH/SPUBLISH calls each took
during the run). Figures are medians over the repeats; every ratio is taken within one
repeat (a cluster run against the single-Redis run of the same minutes), then its median
over the repeats is given.

    python3 bench/cluster-summary.py target/bench/cluster-…
"""

import glob
import json
import os
import re
import statistics
import sys

MODES = ["single", "classic", "sharded", "single3"]
TITLE = {
    "single": "one Redis, classic",
    "single3": "one Redis, classic, at a third of the rate",
    "classic": "3-primary cluster, classic",
    "sharded": "3-primary cluster, sharded",
}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=2):
    if x is None:
        return "–"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def load(out):
    """{mode: {rep: run}}; a run holds the report, the meta and derived figures."""
    runs = {}
    for path in glob.glob(os.path.join(out, "*.json")):
        m = re.fullmatch(r"([a-z0-9]+)\.(\d+)\.json", os.path.basename(path))
        if not m:
            continue
        mode, rep = m.group(1), int(m.group(2))
        meta_path = os.path.join(out, f"{mode}.{rep}.meta.json")
        if not os.path.exists(meta_path):
            continue
        with open(path) as f:
            report = json.load(f)
        with open(meta_path) as f:
            meta = json.load(f)
        runs.setdefault(mode, {})[rep] = derive(report, meta)
    return runs


def derive(report, meta):
    pubs = report["publish"]["ok"] or 1
    window = report["window_s"] or 1
    cpu = {a["name"]: a["cpu_s_publish"] for a in report["aux"]}
    servers = {}
    for s in meta["servers"]:
        c = cpu.get(s["name"])
        idle_cores = s["idle_ticks"] / meta["clk_tck"] / meta["idle_secs"]
        servers[s["name"]] = {
            "subscribers": (s.get("subscriber_connections"), s.get("subscribed_channels")),
            "us_per_pub": None if c is None else c * 1e6 / pubs,
            "cpu_s": c,
            "calls": s["publish_calls"],
            "idle_cores": idle_cores,
            # What that idle rate would have cost over the window, per publish.
            "idle_us_per_pub": idle_cores * window * 1e6 / pubs,
        }
    shards = {}
    for name, s in servers.items():
        m = re.fullmatch(r"s(\d+)-(primary|replica)", name)
        if m:
            shards.setdefault(int(m.group(1)), {})[m.group(2)] = s
    shard_rows = {}
    for i, sh in sorted(shards.items()):
        p, r = sh.get("primary"), sh.get("replica")
        if not p or not r or p["cpu_s"] is None or r["cpu_s"] is None:
            continue
        took = p["calls"] or 1
        shard_rows[i] = {
            "primary_us": p["us_per_pub"],
            "replica_us": r["us_per_pub"],
            "shard_us": p["us_per_pub"] + r["us_per_pub"],
            "share": p["calls"] / pubs,
            "primary_us_own": p["cpu_s"] * 1e6 / took,
            "shard_us_own": (p["cpu_s"] + r["cpu_s"]) * 1e6 / took,
            "idle_us": p["idle_us_per_pub"] + r["idle_us_per_pub"],
        }
    total = [s["us_per_pub"] for s in servers.values()]
    redis_us = None if None in total else sum(total)
    return {
        "report": report,
        "rate": meta["rate"],
        "pubs": pubs,
        "done_per_sec": report["publish"]["per_sec"],
        "deliveries_per_sec": report["deliveries"]["per_sec"],
        "p50_ms": (report["latency_us"]["p50"] or 0) / 1000,
        "p99_ms": (report["latency_us"]["p99"] or 0) / 1000,
        "lost": report["deliveries"]["lost"],
        "dup": report["deliveries"]["duplicates"],
        "failed": report["publish"]["failed"],
        "node_us": report["node_cpu_us_per_delivery"],
        "node_cores": report["node_cores"],
        "tool_cores": report["tool"]["cores_window"],
        "redis_us": redis_us,
        "redis_cores": None if redis_us is None else redis_us * pubs / 1e6 / window,
        "redis_idle_us": sum(s["idle_us_per_pub"] for s in servers.values()),
        # Pipelines the publishers wrote per second (to all servers together).
        "writes_per_sec": report["publish"]["redis_writes"] / window,
        "pubs_per_write": pubs / (report["publish"]["redis_writes"] or 1),
        "redis_us_per_write": None
        if redis_us is None
        else redis_us * pubs / (report["publish"]["redis_writes"] or 1),
        "shards": shard_rows,
        "subscribers": {n: s["subscribers"] for n, s in servers.items()},
        "loadavg": report["loadavg"]["start"],
    }


def ratio(runs, mode, base, f):
    """Median over repeats of f(run of mode) / f(run of base), same repeat."""
    rs = []
    for rep, run in runs.get(mode, {}).items():
        b = runs.get(base, {}).get(rep)
        if b is None:
            continue
        x, y = f(run), f(b)
        if x is not None and y:
            rs.append(x / y)
    return med(rs), len(rs)


def shard_or_single(i, key):
    """A run's figure `key` of shard i, or the whole Redis's for a single-Redis run."""
    return lambda r: r["shards"].get(i, {}).get(key) if r["shards"] else r["redis_us"]


def main():
    out = sys.argv[1]
    runs = load(out)
    modes = [m for m in MODES if m in runs]
    print(f"Run: `{out}`\n")
    print(
        "| mode | publishes/s asked → done | deliveries/s | p50 ms | p99 ms | "
        "lost deliveries / failed publishes, all runs | "
        "node µs/delivery | node cores | load tool cores | "
        "pipelines/s into Redis (publishes each) | Redis cores | "
        "Redis µs/publish, all servers | × one Redis (same repeat) | Redis µs/pipeline | "
        "load avg | runs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in modes:
        rs = list(runs[mode].values())
        g = lambda k: med([r[k] for r in rs])  # noqa: E731
        x, n = ratio(runs, mode, "single", lambda r: r["redis_us"])
        lost = sum(r["lost"] for r in rs)
        failed = sum(r["failed"] for r in rs)
        print(
            f"| {TITLE[mode]} | {fmt(g('rate'))} → {fmt(g('done_per_sec'), 0)} | "
            f"{fmt(g('deliveries_per_sec'), 0)} | {fmt(g('p50_ms'))} | {fmt(g('p99_ms'))} | "
            f"{lost:,} / {failed:,} | {fmt(g('node_us'))} | {fmt(g('node_cores'))} | {fmt(g('tool_cores'))} | "
            f"{fmt(g('writes_per_sec'), 0)} ({fmt(g('pubs_per_write'), 1)}) | "
            f"{fmt(g('redis_cores'))} | {fmt(g('redis_us'))} | "
            f"{fmt(x) if mode != 'single' else '1'} | {fmt(g('redis_us_per_write'), 1)} | "
            f"{fmt(g('loadavg'), 1)} | {len(rs)} |"
        )
    print()
    print(
        "Per shard (primary + its replica). *of all* divides the shard's CPU by every "
        "publish of the run; *of its own* by the publishes its primary took "
        "(`INFO commandstats`), which is what one Redis is divided by.\n"
    )
    print(
        "| mode | shard | share of publishes | primary µs/publish, of all | "
        "replica µs/publish, of all | shard µs/publish, of all | "
        "× one Redis (same repeat) | shard µs/publish, of its own | × one Redis | "
        "primary µs/publish, of its own | × one Redis |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in ("classic", "sharded"):
        if mode not in runs:
            continue
        shard_ids = sorted({i for r in runs[mode].values() for i in r["shards"]})
        for i in shard_ids:
            rs = [r["shards"][i] for r in runs[mode].values() if i in r["shards"]]
            g = lambda k: med([r[k] for r in rs])  # noqa: E731
            xa, _ = ratio(runs, mode, "single", shard_or_single(i, "shard_us"))
            x, _ = ratio(runs, mode, "single", shard_or_single(i, "shard_us_own"))
            xp, _ = ratio(runs, mode, "single", shard_or_single(i, "primary_us_own"))
            print(
                f"| {mode} | {i} | {fmt(g('share'))} | {fmt(g('primary_us'))} | "
                f"{fmt(g('replica_us'))} | {fmt(g('shard_us'))} | {fmt(xa)} | "
                f"{fmt(g('shard_us_own'))} | {fmt(x)} | {fmt(g('primary_us_own'))} | {fmt(xp)} |"
            )
    print()
    notes = []
    x, n = ratio(runs, "sharded", "classic", lambda r: r["redis_us"])
    if x is not None:
        notes.append(
            f"- Sharded against classic on the cluster, all servers' CPU per publish: "
            f"**{fmt(x)}×** (median of {n} per-repeat ratios; target ≤ 0.5)."
        )
    x, n = ratio(runs, "sharded", "classic", lambda r: r["redis_us_per_write"])
    if x is not None:
        notes.append(
            f"- The same per pipeline the publishers wrote (one write of due publishes to "
            f"one server): **{fmt(x)}×** (median of {n})."
        )
    x, n = ratio(runs, "single3", "single", lambda r: r["redis_us"])
    if x is not None:
        notes.append(
            f"- One Redis at a third of the rate against the full rate, CPU per publish: "
            f"**{fmt(x)}×** (median of {n}): what a shard's lower rate alone does "
            f"(fewer publishes per event-loop turn and per read)."
        )
    for mode in ("classic", "sharded"):
        if mode not in runs or "single3" not in runs:
            continue
        xs = []
        for rep, run in runs[mode].items():
            b = runs["single3"].get(rep)
            if b and b["redis_us"]:
                xs += [s["shard_us_own"] / b["redis_us"] for s in run["shards"].values()]
        xp = []
        for rep, run in runs[mode].items():
            b = runs["single3"].get(rep)
            if b and b["redis_us"]:
                xp += [s["primary_us_own"] / b["redis_us"] for s in run["shards"].values()]
        if xs:
            notes.append(
                f"- {mode}: each shard's CPU per publish of its own against one Redis at "
                f"a third of the rate (a shard's rate), same repeat: "
                f"{fmt(min(xs))}–{fmt(max(xs))}× (median {fmt(med(xs))}); its primary "
                f"alone {fmt(min(xp))}–{fmt(max(xp))}× (median {fmt(med(xp))})."
            )
    idle = ", ".join(
        f"{TITLE[m]} {fmt(med([r['redis_idle_us'] for r in runs[m].values()]))}" for m in modes
    )
    notes.append(
        f"- Redis's CPU while idle (the nodes up, nothing published; cluster gossip, the "
        f"nodes' shard probes) is included above; over the window it came to µs per "
        f"publish: {idle}."
    )
    for mode in modes:
        first = runs[mode][min(runs[mode])]
        where = ", ".join(
            f"{name} {c} ({ch:,} channels)"
            for name, (c, ch) in first["subscribers"].items()
            if c
        )
        notes.append(
            f"- {TITLE[mode]}: the nodes' subscriber connections (and channels) were on "
            f"{where or 'no server'}."
        )
    print("\n".join(notes))


if __name__ == "__main__":
    main()
