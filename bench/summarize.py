#!/usr/bin/env python3
"""Turns a bench/run.sh result directory into the markdown table of docs/BENCHMARKS.md.

    python3 bench/summarize.py target/bench/DIR                 # markdown on stdout
    python3 bench/summarize.py target/bench/DIR --write-docs docs/BENCHMARKS.md

Every number is the median over the repeats of one label (files LABEL.N.json).
"""

import glob
import json
import os
import re
import statistics
import sys

BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"

# Reference points of issue 6 (Socket.IO 4.8 + Redis adapter, 2 nodes, same kind of machine).
SOCKETIO_BCAST_US = 13.0
SOCKETIO_MANY_US = 136.0
SOCKETIO_IDLE_KIB = 16.0
P99_LIMIT_US = 50_000


def load(directory):
    groups = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        name = os.path.basename(path)
        m = re.match(r"(.+)\.(\d+)\.json$", name)
        if not m:
            continue
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict):
                data["_rep"] = int(m.group(2))
            groups.setdefault(m.group(1), []).append(data)
    return groups


def get(d, path):
    for key in path.split("."):
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def med(runs, path):
    values = [get(r, path) for r in runs]
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def f(v, digits=1):
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) >= 1000:
        return f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.{digits}f}"


def ceiling(groups, label="ceiling"):
    runs = groups.get(label, [])
    one, sixteen = [], []
    for r in runs:
        for row in r.get("raw_ceiling", []):
            v = row.get("writer_cpu_us_per_delivery")
            if row.get("frames_per_write") == 1:
                one.append(v)
            elif row.get("frames_per_write") == 16:
                sixteen.append(v)
    m1 = statistics.median(one) if one else None
    m16 = statistics.median(sixteen) if sixteen else None
    return m1, m16, len(runs)


def paired(groups, label, kind):
    """Median over runs of Herald's CPU per delivery divided by the 1-frame ceiling
    measured right before that same run (kind "pair": polling readers, "pairpaced":
    readers in epoll, paced like the run), and the ceilings' median; None without pairs."""
    ceilings = {}
    for r in groups.get(f"ceiling-{kind}-{label}", []):
        for row in r.get("raw_ceiling", []):
            v = row.get("writer_cpu_us_per_delivery")
            if row.get("frames_per_write") == 1 and isinstance(v, (int, float)) and v > 0:
                ceilings[r["_rep"]] = v
    ratios = []
    for r in groups.get(label, []):
        cpu = get(r, "node_cpu_us_per_delivery")
        c = ceilings.get(r.get("_rep"))
        if isinstance(cpu, (int, float)) and c:
            ratios.append(cpu / c)
    if not ratios:
        return None
    return statistics.median(ratios), statistics.median(list(ceilings.values())), len(ratios)


def order(label):
    kinds = ["idle", "bcast", "many", "durable"]
    kind = label.split("-")[0]
    nums = [int(x) for x in re.findall(r"\d+", label)]
    return (kinds.index(kind) if kind in kinds else 9, "coalesce" in label, nums)


def table(groups):
    c1, c16, cruns = ceiling(groups)
    p1, _, pruns = ceiling(groups, "ceiling-paced")
    lines = []
    if c1 is not None:
        lines.append(
            f"Raw-write ceiling of this run (bench/raw_ceiling.rs, writer thread only, median of {cruns}): "
            f"**{f(c1, 2)} µs** per delivery at 1 frame per `write()`, **{f(c16, 2)} µs** at 16 frames per `write()` "
            "(writing as fast as possible to readers that poll)."
        )
        lines.append("")
    if p1 is not None:
        lines.append(
            f"Broadcast-shaped ceiling (median of {pruns}): **{f(p1, 2)} µs** per delivery at 1 frame per `write()`, "
            "one frame per socket per round at a paced rate, readers asleep in epoll as the load tool's are."
        )
        lines.append("")
    if any(l.startswith("ceiling-pair-") for l in groups):
        lines.append(
            "Broadcast rows are held to ceilings measured right before each of their runs, with "
            "the run's shape (one node's sockets, one frame per write): their × ceiling column is "
            "the median of the per-run ratios to the polling one; the notes below the table also "
            "give the ratio to readers asleep in epoll, paced at the run's rate."
        )
        lines.append("")
    lines.append(
        "| scenario | conns | chans | publishes/s asked → done | deliveries/s | p50 ms | p99 ms | p99.9 ms "
        "| node CPU µs/delivery | × ceiling (1/write) | node cores | load tool cores | redis µs/delivery "
        "| lost | dup | closes | RSS KiB/conn | load avg | runs |"
    )
    lines.append("|" + "---|" * 19)
    for label in sorted(groups, key=order):
        if label.startswith("ceiling"):
            continue
        runs = groups[label]
        cpu = med(runs, "node_cpu_us_per_delivery")
        pair = paired(groups, label, "pair")
        # Against the ceiling of its own minute where the run has one.
        ratio = pair[0] if pair else (cpu / c1 if (cpu is not None and c1) else None)
        redis = None
        vals = []
        for r in runs:
            for a in r.get("aux", []) or []:
                if a.get("name") == "redis" and isinstance(a.get("cpu_us_per_delivery"), (int, float)):
                    vals.append(a["cpu_us_per_delivery"])
        if vals:
            redis = statistics.median(vals)
        closes = []
        for r in runs:
            c = get(r, "deliveries.closes") or {}
            closes.append(sum(c.values()) if isinstance(c, dict) else 0)
        p50 = med(runs, "latency_us.p50")
        p99 = med(runs, "latency_us.p99")
        p999 = med(runs, "latency_us.p999")
        rate = med(runs, "scenario.rate")
        done = med(runs, "publish.per_sec")
        idle = rate in (None, 0)
        lines.append(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                label,
                f(med(runs, "scenario.connections")),
                f(med(runs, "scenario.channels")),
                "–" if idle else f"{f(rate)} → {f(done)}",
                "–" if idle else f(med(runs, "deliveries.per_sec"), 0),
                "–" if p50 is None else f(p50 / 1000, 2),
                "–" if p99 is None else f(p99 / 1000, 2),
                "–" if p999 is None else f(p999 / 1000, 2),
                "–" if idle else f(cpu, 2),
                "–" if idle else ("–" if ratio is None else f"{ratio:.2f}"),
                "–" if idle else f(med(runs, "node_cores"), 2),
                "–" if idle else f(med(runs, "tool.cores_window"), 2),
                "–" if idle else f(redis, 2),
                "–" if idle else f(med(runs, "deliveries.lost")),
                "–" if idle else f(med(runs, "deliveries.duplicates")),
                f(statistics.median(closes)) if closes else "–",
                f(med(runs, "rss_kib_per_connection"), 2),
                f(med(runs, "loadavg.start"), 1),
                len(runs),
            )
        )
    # Reference points, as ratios to this run.
    refs = []
    sizes = sorted({int(l.split("-")[1]) for l in groups if l.startswith("bcast-") and "coalesce" not in l})
    for n in sizes:
        steps = [l for l in groups if l.startswith(f"bcast-{n}-r") and "coalesce" not in l]
        clean = []
        fast = []
        for l in steps:
            runs = groups[l]
            closes = sum(sum((get(r, "deliveries.closes") or {}).values()) for r in runs)
            if (med(runs, "deliveries.lost") or 0) == 0 and closes == 0:
                dps = med(runs, "deliveries.per_sec") or 0
                clean.append((dps, l))
                if (med(runs, "latency_us.p99") or 1e12) <= P99_LIMIT_US:
                    fast.append((dps, l))
        best = max(clean) if clean else None
        best_fast = max(fast) if fast else None
        refs.append(
            f"- Broadcast to {n:,}: most deliveries/s without loss or slow-consumer closes "
            + (f"**{best[0]:,.0f}** ({best[1]})" if best else "none")
            + f"; with p99 ≤ {P99_LIMIT_US / 1000:.0f} ms: "
            + (f"**{best_fast[0]:,.0f}** ({best_fast[1]})" if best_fast else "none of the steps")
            + "."
        )
    bcast = [l for l in groups if l.startswith("bcast-2000-") and "coalesce" not in l]
    if bcast:
        lowest = min(bcast, key=lambda l: med(groups[l], "scenario.rate") or 0)
        best = min((med(groups[l], "node_cpu_us_per_delivery") or 1e9, l) for l in bcast)
        v = med(groups[lowest], "node_cpu_us_per_delivery")
        if v:
            refs.append(
                f"- Broadcast, 2,000 clients on one channel: Socket.IO {SOCKETIO_BCAST_US} µs per delivery; "
                f"Herald {f(v, 2)} µs at the lowest step ({lowest}, one frame per write); "
                f"Socket.IO / Herald = {SOCKETIO_BCAST_US / v:.2f}. With a backlog batching frames: "
                f"{f(best[0], 2)} µs ({best[1]}), ratio {SOCKETIO_BCAST_US / best[0]:.2f}."
            )
    many = [l for l in groups if l.startswith("many-")]
    if many:
        for l in sorted(many, key=order):
            v = med(groups[l], "node_cpu_us_per_delivery")
            if v:
                refs.append(
                    f"- Many channels ({l}): Socket.IO {SOCKETIO_MANY_US} µs per delivery (2,000 clients, "
                    f"1,000 channels, 2,000 publishes/s, p99 19 ms); Herald {f(v, 2)} µs, p99 "
                    f"{f((med(groups[l], 'latency_us.p99') or 0) / 1000, 1)} ms; Socket.IO / Herald = {SOCKETIO_MANY_US / v:.2f}."
                )
    # The many-channel target, for every many-channel and durable row: CPU and p99, with
    # the publisher's side beside them (its acknowledgement, and the wait in the load
    # tool before a publish went out, which the delivery latency does not include).
    for l in sorted((x for x in groups if x.startswith(("many-", "durable-"))), key=order):
        runs = groups[l]
        v = med(runs, "node_cpu_us_per_delivery")
        p99 = med(runs, "latency_us.p99")
        if v is None or p99 is None:
            continue
        ack = med(runs, "publish.ack_us.p99")
        lag = med(runs, "publish.send_lag_us.p99")
        target = " (target: ≤ 15 µs, p99 ≤ 5 ms)" if (med(runs, "scenario.rate") or 0) >= 20000 else ""
        refs.append(
            f"- {l}: {f(v, 2)} µs per delivery, p99 {f(p99 / 1000, 1)} ms{target}; "
            f"publish acknowledged in p99 {f(ack / 1000 if ack is not None else None, 1)} ms; "
            f"waited in the load tool before sending, p99 {f(lag / 1000 if lag is not None else None, 1)} ms "
            "(not part of the latency)."
        )
    idle = [l for l in groups if l.startswith("idle-")]
    for l in sorted(idle, key=order):
        v = med(groups[l], "rss_kib_per_connection")
        if v:
            refs.append(
                f"- Idle ({l}): Socket.IO {SOCKETIO_IDLE_KIB} KiB RSS per connection; Herald {f(v, 2)} KiB: "
                f"Socket.IO / Herald = {SOCKETIO_IDLE_KIB / v:.2f} (target ≤ 5 KiB)."
            )
    for l in sorted((x for x in groups if x.startswith("bcast-") and "coalesce" not in x), key=order):
        poll = paired(groups, l, "pair")
        paced = paired(groups, l, "pairpaced")
        if poll:
            text = (
                f"- {l}, each run against the ceiling measured right before it (median of "
                f"{poll[2]} ratios): {poll[0]:.2f}× the 1-frame-per-write ceiling (its median "
                f"{f(poll[1], 2)} µs)"
            )
            if paced:
                text += (
                    f", {paced[0]:.2f}× the same ceiling with readers asleep in epoll, paced like "
                    f"the run ({f(paced[1], 2)} µs)"
                )
            refs.append(text + " (target ≤ 1.2× the 1-frame ceiling).")
    if c1:
        for l in sorted(bcast + [x for x in groups if x.startswith("bcast-") and x not in bcast], key=order):
            v = med(groups[l], "node_cpu_us_per_delivery")
            # A row with ceilings of its own is given against them above.
            if v and not paired(groups, l, "pair"):
                paced = f", {v / p1:.2f}× the broadcast-shaped ceiling" if p1 else ""
                refs.append(
                    f"- {l}: {v / c1:.2f}× the 1-frame-per-write ceiling{paced}, {v / c16:.2f}× the "
                    f"16-frames-per-write ceiling (target ≤ 1.2× the 1-frame ceiling)."
                )
    for l in sorted((x for x in groups if "-coalesce" in x and x.startswith("bcast-")), key=order):
        tick = l.split("-coalesce", 1)[1]
        batch = [
            (row.get("frames_per_write"), row.get("writer_cpu_us_per_delivery"))
            for r in groups.get(f"ceiling-coalesce{tick}", [])
            for row in r.get("raw_ceiling", [])
        ]
        v = med(groups[l], "node_cpu_us_per_delivery")
        if v and batch:
            frames = batch[0][0]
            c = statistics.median(x for _, x in batch)
            refs.append(
                f"- {l}: the raw ceiling at the {frames} frames per `write()` this tick gives a "
                f"socket is {f(c, 2)} µs (readers in epoll, one round per tick); Herald "
                f"{f(v, 2)} µs = {v / c:.2f}× it (target < 1.5 µs)."
            )
    # Order: a seq inversion is only a break of the channel's order when the earlier
    # publish was acknowledged before the later one was sent (herald-bench's
    # order_violations); publishes in flight together have no order between them.
    runs = [r for label, rs in groups.items() if not label.startswith("ceiling") for r in rs]
    inversions = sum(get(r, "deliveries.out_of_order") or 0 for r in runs)
    checked = [r for r in runs if get(r, "deliveries.order_violations") is not None]
    if checked:
        violations = sum(get(r, "deliveries.order_violations") or 0 for r in checked)
        refs.append(
            f"- Order: {violations:,} order violations in {len(checked)} runs (a publish delivered after "
            f"one sent later than its acknowledgement); {inversions:,} arrivals out of sequence order "
            "among publishes that were in flight at the same time on different connections, which "
            "have no order between them."
        )
    if refs:
        lines.append("")
        lines.extend(refs)
    return "\n".join(lines) + "\n"


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    directory = sys.argv[1]
    groups = load(directory)
    text = f"Run: `{directory}`\n\n" + table(groups)
    if len(sys.argv) >= 4 and sys.argv[2] == "--write-docs":
        doc = sys.argv[3]
        with open(doc) as fh:
            content = fh.read()
        if BEGIN not in content or END not in content:
            sys.exit(f"{doc}: no {BEGIN} … {END} section")
        head, rest = content.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        with open(doc, "w") as fh:
            fh.write(head + BEGIN + "\n" + text + END + tail)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
