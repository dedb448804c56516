"""Turns the JSON files of bench/run_serving_bench.sh (plume bench --json)
into the markdown of the serving results: per concurrency the served
vectors/s with the Echo ceiling beside it and their ratio, p50/p99, the mean
batch, the server's queue/kernel split and the GPU time per vector (kernel
time summed / vectors), then the serving targets checked against the run.

Usage: serving_table.py --out-dir DIR [--policy P] [--device D] [--commit C]
                        [--date D] [--commands FILE]
         one sweep: reads DIR/serving-{stream,echo-stream,half-peak,unary,
         echo-unary}.json (those that exist)
       serving_table.py --summary POLICY=DIR... [--device D] [--commit C]
                        [--date D]
         every target of every sweep in one table: a target holds for a
         policy only when it holds in all of its sweeps.
       serving_table.py --before DIR... --after DIR...
         two builds' sweeps (one DIR per sweep, as for --out-dir) side by
         side: per call and concurrency the median over the sweeps of each
         measure, its range, and the medians' ratio after / before."""
import argparse
import json
import os
import statistics
import sys


def load(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def fmt(v, digits=1):
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}"


def server(step, key):
    s = step.get("server")
    return None if not s else s.get(key)


def by_concurrency(run):
    return {s["concurrency"]: s for s in run["steps"]} if run else {}


def table(run, echo, title):
    out = [f"### {title}", ""]
    if not run:
        return out + ["(not run)", ""]
    out.append(f"{run['method']} on `{run['matrix']}` ({run['rows']} x {run['cols']} {run['format']}), "
               f"{run['dtype']} vectors, batch {run['batch']}: {run['request_bytes']} B per request, "
               f"{run['result_bytes']} B per result; Echo: {echo['method'] if echo else 'not run'} "
               "with the same payload.")
    out.append("")
    out.append("| concurrency | vectors/s | Echo vectors/s | ratio | p50 ms | p99 ms | Echo p99 ms | mean batch | "
               "queue ms | kernel ms | host µs | GPU µs/vector | stable |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    echo_steps = by_concurrency(echo)
    for s in run["steps"]:
        e = echo_steps.get(s.get("concurrency"))
        vps = s["vectors_per_s"]
        evps = e["vectors_per_s"] if e else None
        ratio = f"{vps / evps:.2f}" if vps and evps else "n/a"
        out.append(
            f"| {s['concurrency']} | {fmt(vps, 0)} | {fmt(evps, 0)} | {ratio} | {fmt(s['latency_ms']['p50'], 3)} | "
            f"{fmt(s['latency_ms']['p99'], 3)} | {fmt(e['latency_ms']['p99'], 3) if e else 'n/a'} | "
            f"{fmt(server(s, 'batch_mean'), 2)} | {fmt(server(s, 'queue_ms_mean'), 3)} | "
            f"{fmt(server(s, 'kernel_ms_mean'), 3)} | {fmt(server(s, 'host_us_mean'), 1)} | "
            f"{fmt(server(s, 'kernel_us_per_vector'), 2)} | "
            f"{'yes' if s['stable'] else 'no'} |")
    out.append("")
    return out


def ratio_at(run, echo, c):
    s, e = by_concurrency(run).get(c), by_concurrency(echo).get(c)
    if not s or not e or not s["vectors_per_s"] or not e["vectors_per_s"]:
        return None
    return s["vectors_per_s"] / e["vectors_per_s"]


def check_targets(stream, echo_stream, half, unary, echo_unary):
    """[(target, measured, True/False/None)] for one sweep."""
    rows = []
    # Concurrency 1: p50 <= Echo p50 + kernel + 50 us; >= 0.6x Echo's vectors/s.
    for name, run, echo in (("streaming", stream, echo_stream), ("unary", unary, echo_unary)):
        s, e = by_concurrency(run).get(1), by_concurrency(echo).get(1)
        if not s or not e:
            rows.append((f"c=1 {name}: p50 <= Echo p50 + kernel + 0.05 ms", "not run", None))
            rows.append((f"c=1 {name}: vectors/s >= 0.6x Echo", "not run", None))
            continue
        kernel = server(s, "kernel_ms_mean")
        p50, ep50 = s["latency_ms"]["p50"], e["latency_ms"]["p50"]
        if kernel is None or p50 is None or ep50 is None:
            rows.append((f"c=1 {name}: p50 <= Echo p50 + kernel + 0.05 ms", "no kernel time", None))
        else:
            bound = ep50 + kernel + 0.05
            rows.append((f"c=1 {name}: p50 <= Echo p50 + kernel + 0.05 ms",
                         f"{p50:.3f} vs {ep50:.3f} + {kernel:.3f} + 0.05 = {bound:.3f}", p50 <= bound))
        r = ratio_at(run, echo, 1)
        rows.append((f"c=1 {name}: vectors/s >= 0.6x Echo", "n/a" if r is None else f"{r:.2f}x",
                     None if r is None else r >= 0.6))
    # Concurrency >= 8: >= 0.9x Echo, streaming and unary.
    for name, run, echo in (("streaming", stream, echo_stream), ("unary", unary, echo_unary)):
        cs = [c for c in sorted(by_concurrency(run)) if c >= 8]
        got = [(c, ratio_at(run, echo, c)) for c in cs]
        got = [(c, r) for c, r in got if r is not None]
        if not got:
            rows.append((f"c>=8 {name}: vectors/s >= 0.9x Echo", "not run", None))
        else:
            rows.append((f"c>=8 {name}: vectors/s >= 0.9x Echo",
                         ", ".join(f"c={c}: {r:.2f}" for c, r in got), all(r >= 0.9 for _, r in got)))
    if half and half["steps"]:
        h = half["steps"][0]
        p99 = h["latency_ms"]["p99"]
        rows.append(("open loop at half the peak: p99 <= 2 ms",
                     f"{fmt(p99, 3)} ms at {h['rate']:,.0f} requests/s", p99 is not None and p99 <= 2.0))
    else:
        rows.append(("open loop at half the peak: p99 <= 2 ms", "not run", None))
    big = [s for c, s in sorted(by_concurrency(stream).items()) if c >= 64]
    if big:
        batches = [server(s, "batch_mean") for s in big]
        rows.append(("c>=64 streaming: mean batch >= 16",
                     ", ".join(f"c={s['concurrency']}: {fmt(b, 2)}" for s, b in zip(big, batches)),
                     None if None in batches else all(b >= 16 for b in batches)))
    s1 = by_concurrency(stream).get(1)
    host = server(s1, "host_us_mean") if s1 else None
    if host is not None:
        rows.append(("c=1 streaming: backend call - kernel <= 10 µs (plume_host_duration_seconds)",
                     f"{host:.1f} µs", host <= 10))
    else:
        rows.append(("c=1 streaming: backend call - kernel <= 10 µs", "no host/GPU split in the metrics", None))
    return rows


def verdict(ok):
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def targets(stream, echo_stream, half, unary, echo_unary):
    out = ["### Targets", "", "| target | measured | result |", "|---|---|---|"]
    for t, m, ok in check_targets(stream, echo_stream, half, unary, echo_unary):
        out.append(f"| {t} | {m} | {verdict(ok)} |")
    return out + [""]


def load_sweep(d):
    return [load(f"{d}/serving-{n}.json") for n in ("stream", "echo-stream", "half-peak", "unary", "echo-unary")]


def summary(sweeps, a):
    """sweeps: ["policy=dir", ...] in run order."""
    runs = []
    for item in sweeps:
        policy, d = item.split("=", 1)
        runs.append((policy, os.path.basename(d.rstrip("/")), check_targets(*load_sweep(d))))
    out = [f"Device: {a.device}; commit {a.commit}; {a.date}. Every serving target in every sweep "
           "(one server per sweep); a policy meets a target only when all its sweeps do.", ""]
    names = [t for t, _, _ in runs[0][2]] if runs else []
    out.append("| target | " + " | ".join(name for _, name, _ in runs) + " |")
    out.append("|---|" + "---|" * len(runs))
    for i, t in enumerate(names):
        cells = []
        for _, _, rows in runs:
            _, m, ok = rows[i]
            cells.append(f"{m} ({verdict(ok)})")
        out.append(f"| {t} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("| target | " + " | ".join(sorted({p for p, _, _ in runs})) + " |")
    out.append("|---|" + "---|" * len({p for p, _, _ in runs}))
    for i, t in enumerate(names):
        cells = []
        for p in sorted({p for p, _, _ in runs}):
            oks = [rows[i][2] for q, _, rows in runs if q == p]
            cells.append("n/a" if None in oks else ("PASS in all" if all(oks) else
                                                    f"FAIL in {sum(1 for o in oks if not o)} of {len(oks)}"))
        out.append(f"| {t} | " + " | ".join(cells) + " |")
    out.append("")
    return out


def compare(before_dirs, after_dirs):
    """Rows of the before/after table (see the module's usage)."""
    measures = [
        ("vectors/s", lambda s, e: s["vectors_per_s"]),
        ("ratio to Echo", lambda s, e: s["vectors_per_s"] / e["vectors_per_s"] if e else None),
        ("p50 ms", lambda s, e: s["latency_ms"]["p50"]),
        ("p99 ms", lambda s, e: s["latency_ms"]["p99"]),
        ("mean batch", lambda s, e: server(s, "batch_mean")),
        ("kernel µs", lambda s, e: None if server(s, "kernel_ms_mean") is None
         else 1000 * server(s, "kernel_ms_mean")),
        ("host µs", lambda s, e: server(s, "host_us_mean")),
    ]

    def sweeps(dirs, kind, echo_kind):  # per sweep: its steps and Echo's, by concurrency
        return [(by_concurrency(load(f"{d}/serving-{kind}.json")),
                 by_concurrency(load(f"{d}/serving-{echo_kind}.json"))) for d in dirs]

    def values(runs, conc, fn):
        vs = [fn(run[conc], echo.get(conc)) for run, echo in runs if conc in run]
        return [v for v in vs if v is not None]

    def cell(vs):
        if not vs:
            return "n/a"
        m = statistics.median(vs)
        digits = 0 if m >= 1000 else 1 if m >= 10 else 3
        return f"{fmt(m, digits)} [{fmt(min(vs), digits)}–{fmt(max(vs), digits)}]"

    out = ["| call | concurrency | measure | before: median [range] | after: median [range] | after ÷ before |",
           "|---|---|---|---|---|---|"]
    for call, kind, echo_kind in [("streaming", "stream", "echo-stream"), ("unary", "unary", "echo-unary")]:
        before = sweeps(before_dirs, kind, echo_kind)
        after = sweeps(after_dirs, kind, echo_kind)
        for conc in before[0][0]:
            for name, fn in measures:
                b = values(before, conc, fn)
                a = values(after, conc, fn)
                ratio = (f"{statistics.median(a) / statistics.median(b):.2f}"
                         if a and b and statistics.median(b) else "n/a")
                out.append(f"| {call} | {conc} | {name} | {cell(b)} | {cell(a)} | {ratio} |")
    out.append("")
    for label, dirs in [("before", before_dirs), ("after", after_dirs)]:
        runs = [load(f"{d}/serving-half-peak.json") for d in dirs]
        cells = [f"{fmt(r['steps'][0]['requests_per_s'], 0)}/s p99 {r['steps'][0]['latency_ms']['p99']:.3f} ms"
                 for r in runs if r and r.get("steps")]
        out.append(f"Open loop at half the peak, {label}: " + "; ".join(cells) + ".")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir")
    ap.add_argument("--summary", nargs="+")
    ap.add_argument("--policy")
    ap.add_argument("--device", default="unknown")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--date", default="unknown")
    ap.add_argument("--commands")
    ap.add_argument("--before", nargs="+")
    ap.add_argument("--after", nargs="+")
    a = ap.parse_args()
    if a.before or a.after:
        if not (a.before and a.after):
            sys.exit("--before and --after go together")
        print("\n".join(compare(a.before, a.after)))
        return
    if a.summary:
        print("\n".join(summary(a.summary, a)))
        return
    if not a.out_dir:
        sys.exit("--out-dir or --summary is required")
    d = a.out_dir
    stream = load(f"{d}/serving-stream.json")
    echo_stream = load(f"{d}/serving-echo-stream.json")
    half = load(f"{d}/serving-half-peak.json")
    unary = load(f"{d}/serving-unary.json")
    echo_unary = load(f"{d}/serving-echo-unary.json")
    if not stream and not unary:
        sys.exit(f"no serving-stream.json or serving-unary.json in {d}")
    policy = f" --batching={a.policy}." if a.policy else ""
    out = [f"Device: {a.device}; commit {a.commit}; {a.date}.{policy} Server and `plume bench` on the same machine "
           "over loopback. vectors/s and latency are the client's, over the last 3 windows of a step; "
           "batch, queue and kernel are the server's, from /metrics deltas over the same windows; "
           "GPU µs/vector = kernel seconds summed / vectors multiplied.", ""]
    out += table(stream, echo_stream, "Streaming (GemvStream vs EchoStream)")
    out += table(unary, echo_unary, "Unary (Gemv vs Echo)")
    out += targets(stream, echo_stream, half, unary, echo_unary)
    if a.commands and os.path.exists(a.commands):
        out += ["Commands:", "", "```"]
        with open(a.commands) as f:
            out += [line.rstrip("\n") for line in f]
        out += ["```", ""]
    print("\n".join(out))


if __name__ == "__main__":
    main()
