"""Turns the JSON files of bench/run_serving_bench.sh (plume bench --json)
into the markdown of the serving results: per concurrency the served
vectors/s with the Echo ceiling beside it and their ratio, p50/p99, the mean
batch, the server's queue/kernel split and the GPU time per vector (kernel
time summed / vectors), then the issue's targets checked against the run.

Usage: serving_table.py --out-dir DIR [--device D] [--commit C] [--date D]
                        [--commands FILE]
Reads DIR/serving-{stream,echo-stream,half-peak,unary,echo-unary}.json
(those that exist)."""
import argparse
import json
import os
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
               "queue ms | kernel ms | GPU µs/vector | stable |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
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
            f"{fmt(server(s, 'kernel_ms_mean'), 3)} | {fmt(server(s, 'kernel_us_per_vector'), 2)} | "
            f"{'yes' if s['stable'] else 'no'} |")
    out.append("")
    return out


def targets(stream, echo, half):
    out = ["### Targets", ""]
    out.append("| target | measured | result |")
    out.append("|---|---|---|")
    if not stream:
        return out + ["| (no streaming run) | | |", ""]
    steps = by_concurrency(stream)
    echo_steps = by_concurrency(echo)
    peak = max(stream["steps"], key=lambda s: s["vectors_per_s"] or 0)
    e = echo_steps.get(peak["concurrency"])
    if e and e["vectors_per_s"]:
        ratio = peak["vectors_per_s"] / e["vectors_per_s"]
        out.append(f"| peak vectors/s >= 0.8x Echo at the same concurrency | {peak['vectors_per_s']:,.0f} vs "
                   f"{e['vectors_per_s']:,.0f} at concurrency {peak['concurrency']}: {ratio:.2f}x | "
                   f"{'PASS' if ratio >= 0.8 else 'FAIL'} |")
    else:
        out.append("| peak vectors/s >= 0.8x Echo | no Echo run at the peak's concurrency | n/a |")
    big = [s for c, s in sorted(steps.items()) if c >= 64]
    if big:
        batches = [server(s, "batch_mean") for s in big]
        ok = all(b is not None and b >= 16 for b in batches)
        shown = ", ".join(f"c={s['concurrency']}: {fmt(b, 2)}" for s, b in zip(big, batches))
        out.append(f"| mean batch >= 16 at concurrency >= 64 | {shown} | "
                   f"{'PASS' if ok else ('n/a' if None in batches else 'FAIL')} |")
    if half and half["steps"]:
        h = half["steps"][0]
        p99 = h["latency_ms"]["p99"]
        out.append(f"| p99 <= 2 ms at half of peak | {fmt(p99, 3)} ms at {h['rate']:,.0f} requests/s "
                   f"(open loop; achieved {fmt(h['requests_per_s'], 0)}/s) | "
                   f"{'PASS' if p99 is not None and p99 <= 2.0 else 'FAIL'} |")
    else:
        out.append("| p99 <= 2 ms at half of peak | not run | n/a |")
    c1 = server(steps[1], "kernel_us_per_vector") if 1 in steps else None
    c64 = server(steps[64], "kernel_us_per_vector") if 64 in steps else None
    if c1 and c64:
        gain = c1 / c64
        out.append(f"| GPU time per vector at c=64 >= 8x lower than at c=1 | {c1:.2f} µs -> {c64:.2f} µs: "
                   f"{gain:.1f}x | {'PASS' if gain >= 8 else 'FAIL'} |")
    else:
        out.append("| GPU time per vector at c=64 >= 8x lower than at c=1 | no split at c=1 or c=64 | n/a |")
    out.append("")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--device", default="unknown")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--date", default="unknown")
    ap.add_argument("--commands")
    a = ap.parse_args()
    d = a.out_dir
    stream = load(f"{d}/serving-stream.json")
    echo_stream = load(f"{d}/serving-echo-stream.json")
    half = load(f"{d}/serving-half-peak.json")
    unary = load(f"{d}/serving-unary.json")
    echo_unary = load(f"{d}/serving-echo-unary.json")
    if not stream and not unary:
        sys.exit(f"no serving-stream.json or serving-unary.json in {d}")
    out = [f"Device: {a.device}; commit {a.commit}; {a.date}. Server and `plume bench` on the same machine "
           "over loopback. vectors/s and latency are the client's, over the last 3 windows of a step; "
           "batch, queue and kernel are the server's, from /metrics deltas over the same windows; "
           "GPU µs/vector = kernel seconds summed / vectors multiplied.", ""]
    out += table(stream, echo_stream, "Streaming (GemvStream vs EchoStream)")
    out += table(unary, echo_unary, "Unary (Gemv vs Echo)")
    out += targets(stream, echo_stream, half)
    if a.commands and os.path.exists(a.commands):
        out += ["Commands:", "", "```"]
        with open(a.commands) as f:
            out += [line.rstrip("\n") for line in f]
        out += ["```", ""]
    print("\n".join(out))


if __name__ == "__main__":
    main()
