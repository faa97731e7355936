"""Output checks and the report of bench/compare.sh.

  results.py canon QUERY < dump.jsonl > canon.txt   one canonical line per result row, sorted
  results.py diff A B                                "yes" when equal, else how they differ
  results.py report TSV PREFIX                       PREFIX.md (table) and PREFIX.png (chart)

Canonical rows make the three systems' outputs comparable: times (epoch ms numbers or ISO-8601
strings) become epoch ms, doubles are rounded to 4 decimals (the inputs have cents, so only the
order of summation is rounded away), and window results keep the last value written for each
(key, window) — Kafka Streams writes updates as they happen and retracts merged sessions.
"""

import datetime
import json
import os
import platform
import subprocess
import sys

WINDOWED = {"tumbling_1m", "sliding_5m_1m", "session_2m"}
TIME_FIELDS = {"ts", "window_start", "window_end", "captured", "hit_ts", "bid_ts"}


def epoch_ms(v):
    if isinstance(v, (int, float)):
        return int(v)
    s = v.replace("Z", "+00:00").replace(" ", "T")
    t = datetime.datetime.fromisoformat(s)
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    return round(t.timestamp() * 1000)


def value(field, v):
    if v is None:
        return "null"
    if field in TIME_FIELDS:
        return str(epoch_ms(v))
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, int) and not isinstance(v, bool) and field in ("amount", "total", "max_amount", "hit_amount"):
        return f"{float(v):.4f}"
    return str(v)


def canon(query, lines):
    rows = []
    windows = {}
    for line in lines:
        line = line.strip()
        if not line or line == "null":
            continue
        r = json.loads(line)
        if query in WINDOWED:
            key = (r["card_id"], epoch_ms(r["window_start"]), epoch_ms(r["window_end"]))
            if r.get("retract"):
                windows.pop(key, None)
            else:
                windows[key] = " ".join(f"{f}={value(f, r[f])}" for f in sorted(r) if f not in ("card_id", "window_start", "window_end"))
        else:
            rows.append(" ".join(f"{f}={value(f, r[f])}" for f in sorted(r)))
    if query in WINDOWED:
        rows = [f"card_id={k[0]} window_start={k[1]} window_end={k[2]} {v}" for k, v in windows.items()]
    rows.sort()
    return rows


def diff(a_path, b_path):
    with open(a_path) as f:
        a = f.read().splitlines()
    with open(b_path) as f:
        b = f.read().splitlines()
    if a == b:
        return "yes"
    from collections import Counter

    ca, cb = Counter(a), Counter(b)
    only_a = sum((ca - cb).values())
    only_b = sum((cb - ca).values())
    first = next(iter(sorted((ca - cb).keys())), None)
    other = next(iter(sorted((cb - ca).keys())), None)
    print(f"{b_path}: e.g. expected {first!r}, got {other!r}", file=sys.stderr)
    return f"no: {only_a} of {len(a)} rows missing or different, {only_b} extra"


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}, {java}"


def report(tsv, prefix):
    rows = read_tsv(tsv)
    by = {(r["system"], r["cores"], r["query"]): r for r in rows}
    cores = sorted({r["cores"] for r in rows}, key=int)
    queries = list(dict.fromkeys(r["query"] for r in rows))
    order = ["weir", "weir-long", "flink", "kstreams"]
    systems = sorted(dict.fromkeys(r["system"] for r in rows), key=lambda s: order.index(s) if s in order else len(order))

    def rate(sys_, c, q):
        r = by.get((sys_, c, q))
        return float(r["rate"]) / int(c) if r and r["rate"] else None

    out = [f"# Weir vs Apache Flink vs Kafka Streams — {datetime.date.today()}", ""]
    out.append(f"Machine: {machine()}. Kafka broker on the same machine, outside the pinned cores "
               "only where cores remain.")
    out.append("")
    out.append("Throughput is events per second per core, from the first record read to the input "
               "fully processed and its output committed (exactly-once, results visible every "
               "commit interval). \"equal\" compares each system's output with Weir's. "
               "`weir-long` is Weir alone on a larger data set of the same kind (its runs on the "
               "common one last a second or two); the ratios use it where it ran.")
    for c in cores:
        out += ["", f"## {c} core(s), {c} partition(s)", ""]
        cols = ["query"] + [f"{s} ev/s/core" for s in systems]
        if "flink" in systems:
            cols.append("Weir / Flink")
        if "kstreams" in systems:
            cols.append("Weir / KStreams")
        cols += [f"{s} RSS MiB" for s in systems] + [f"{s} CPU s" for s in systems] + [f"{s} equal" for s in systems if s not in ("weir", "weir-long")]
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "---|" * len(cols))
        for q in queries:
            cells = [q]
            for s in systems:
                r = by.get((s, c, q))
                v = rate(s, c, q)
                cells.append(f"{v:,.0f}" if v else (r["equal"] if r else "—"))
            w = rate("weir-long", c, q) or rate("weir", c, q)
            for other in ("flink", "kstreams"):
                if other in systems:
                    o = rate(other, c, q)
                    cells.append(f"{w / o:.1f}x" if w and o else "—")
            for field in ("rss_mib", "cpu_s"):
                for s in systems:
                    r = by.get((s, c, q))
                    cells.append(r[field] if r and r[field] else "—")
            for s in systems:
                if s not in ("weir", "weir-long"):
                    r = by.get((s, c, q))
                    cells.append(r["equal"] if r else "—")
            out.append("| " + " | ".join(cells) + " |")
    latency = read_tsv(prefix + "-latency.tsv")
    if latency:
        out += ["", f"## End-to-end latency, exactly-once, {latency[0]['rate']} events/s", ""]
        out.append("From the producer's send to the result readable by a `read_committed` consumer, "
                   "one core each, after 10 s of warm-up, 20 s measured; results visible every "
                   "`commit` (Weir's epochInterval, Flink's checkpoint interval, Kafka Streams' "
                   "commit.interval.ms).")
        out += ["", "| system | commit | p50 ms | p90 ms | p99 ms | max ms |", "|---|---|---|---|---|---|"]
        for r in latency:
            out.append(f"| {r['system']} | {r['commit']} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['max_ms']} |")
    with open(prefix + ".md", "w") as f:
        f.write("\n".join(out) + "\n")
    chart(prefix + ".png", by, systems, cores, queries, rate, latency)


def read_tsv(path):
    try:
        with open(path) as f:
            header = f.readline().rstrip("\n").split("\t")
            return [dict(zip(header, line.rstrip("\n").split("\t"))) for line in f if line.strip()]
    except OSError:
        return []


def chart(path, by, systems, cores, queries, rate, latency):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing: no chart (bench/compare/install.sh installs it)", file=sys.stderr)
        return
    commits = list(dict.fromkeys(r["commit"] for r in latency))
    panels = len(cores) + len(commits)
    fig, axes = plt.subplots(panels, 1, figsize=(11, 4 * panels), squeeze=False)
    width = 0.8 / max(len(systems), 1)
    names = ["p50_ms", "p90_ms", "p99_ms"]
    for ax, commit in zip(axes[len(cores):, 0], commits):
        runs = [r for r in latency if r["commit"] == commit]
        for i, r in enumerate(runs):
            ax.bar([x + i * width for x in range(len(names))], [float(r[n]) for n in names], width, label=r["system"])
        ax.set_xticks([x + width * (len(runs) - 1) / 2 for x in range(len(names))])
        ax.set_xticklabels(["p50", "p90", "p99"])
        ax.set_ylabel("ms")
        ax.set_title(f"end-to-end latency, exactly-once, {runs[0]['rate']} events/s, results visible every {commit}")
        ax.legend()
    for ax, c in zip(axes[:, 0], cores):
        for i, s in enumerate(systems):
            vals = [rate(s, c, q) or 0 for q in queries]
            ax.bar([x + i * width for x in range(len(queries))], vals, width, label=s)
        ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(queries))])
        ax.set_xticklabels(queries, rotation=20, fontsize=8)
        ax.set_ylabel("events/s per core")
        ax.set_yscale("log")
        ax.set_title(f"throughput, {c} core(s)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    cmd = sys.argv[1]
    if cmd == "canon":
        for row in canon(sys.argv[2], sys.stdin):
            print(row)
    elif cmd == "diff":
        print(diff(sys.argv[2], sys.argv[3]))
    elif cmd == "report":
        report(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
