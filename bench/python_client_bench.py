#!/usr/bin/env python3
"""Load generator for the Python client, measured the way `plume bench`
measures the C++ one (client/cli/bench.cc): a closed loop of `concurrency`
vectors in flight, one warm-up window, then 1 s windows until the last three
agree within 10 % (at most 10); throughput and latency percentiles over
those last three windows.

    PYTHONPATH=build/cpu-release/client/python python3 bench/python_client_bench.py \
        --server 127.0.0.1:50051 --matrix w --dtype f16 --concurrency 1,64 \
        --mode aio-unary --json out.json

Modes:
  unary       sync Client.gemv, `concurrency` threads (1: the plain loop)
  stream      sync Client.gemv_stream, max_in_flight=concurrency
  aio-unary   plume.aio: `concurrency` tasks, each awaiting gemv in a loop
  aio-stream  plume.aio gemv_stream over --streams streams sharing `concurrency`

Latency is from handing a vector to the client to getting its result back
(for streams: from the stream pulling it from its source to the result
coming out in order).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import sys
import threading
import time

import numpy as np

import plume
import plume.aio

WINDOW_S = 1.0


class Recorder:
    """Completed requests and their latencies, taken window by window."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lat: list[float] = []
        self.errors = 0
        self.first_error = ""

    def ok(self, seconds: float) -> None:
        with self.lock:
            self.lat.append(seconds)

    def fail(self, e: BaseException) -> None:
        with self.lock:
            self.errors += 1
            self.first_error = self.first_error or repr(e)

    def take(self) -> tuple[list[float], int]:
        with self.lock:
            lat, self.lat = self.lat, []
            err, self.errors = self.errors, 0
        return lat, err


def percentile(sorted_lat: list[float], p: float) -> float:
    if not sorted_lat:
        return math.nan
    rank = math.ceil(p * len(sorted_lat))
    return sorted_lat[min(len(sorted_lat) - 1, max(rank, 1) - 1)]


def stable(windows: list[tuple[list[float], float]], tolerance: float = 0.10) -> bool:
    if len(windows) < 4:  # warm-up + 3
        return False
    rates = [len(lat) / secs for lat, secs in windows[-3:]]
    return max(rates) > 0 and max(rates) - min(rates) <= tolerance * max(rates)


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def summarize(conc: int, windows: list[tuple[list[float], float]], errors: int, batch: int,
              cpu: float) -> dict:
    """`cpu`: this process's CPU seconds over the whole step (warm-up included)."""
    used = windows[-3:] if len(windows) > 4 else windows[1:]
    total = sum(len(w) for w, _ in windows)
    lat = sorted(x for w, _ in used for x in w)
    secs = sum(s for _, s in used)
    return {
        "concurrency": conc, "windows": len(windows) - 1, "stable": stable(windows),
        "requests_per_s": len(lat) / secs, "vectors_per_s": len(lat) * batch / secs,
        "p50_ms": percentile(lat, 0.50) * 1e3, "p90_ms": percentile(lat, 0.90) * 1e3,
        "p99_ms": percentile(lat, 0.99) * 1e3, "mean_ms": sum(lat) / len(lat) * 1e3 if lat else math.nan,
        "errors": errors, "client_cpu_ms_per_request": cpu / total * 1e3 if total else math.nan,
    }


def measure(rec: Recorder, stop: threading.Event, max_windows: int, max_seconds: float) -> list:
    """Sleeps window by window until the step is stable (or capped)."""
    start = time.monotonic()
    windows = []
    w = 0
    while True:
        time.sleep(max(0.0, start + WINDOW_S * (w + 1) - time.monotonic()))
        lat, _ = rec.take()
        windows.append((lat, WINDOW_S))
        if w >= 1 and (stable(windows) or w >= max_windows
                       or time.monotonic() - start + WINDOW_S > max_seconds):
            break
        w += 1
    stop.set()
    return windows


def inputs(args, cols: int) -> list[np.ndarray]:
    rng = np.random.default_rng(args.seed)
    shape = (cols,) if args.batch == 1 else (args.batch, cols)
    return [rng.standard_normal(shape).astype(args.dtype) for _ in range(64)]


def timed_source(xs: list[np.ndarray], stop, sent: collections.deque):
    i = 0
    while not stop.is_set():
        sent.append(time.perf_counter())
        yield xs[i % len(xs)]
        i += 1


def run_sync(args, conc: int, xs: list[np.ndarray]) -> dict:
    rec, stop = Recorder(), threading.Event()
    cpu0 = cpu_seconds()
    client = plume.Client(args.server, timeout=None)

    def unary_lane(lane: int) -> None:
        i = lane
        while not stop.is_set():
            t = time.perf_counter()
            try:
                client.gemv(args.matrix, xs[i % len(xs)], out_dtype=args.out_dtype)
                rec.ok(time.perf_counter() - t)
            except plume.PlumeError as e:
                rec.fail(e)
            i += 1

    def stream_lane() -> None:
        sent: collections.deque = collections.deque()
        it = client.gemv_stream(args.matrix, timed_source(xs, stop, sent), max_in_flight=conc,
                                out_dtype=args.out_dtype)
        try:
            for _ in it:
                rec.ok(time.perf_counter() - sent.popleft())
                if stop.is_set():
                    break
        except plume.PlumeError as e:
            rec.fail(e)
        finally:
            it.close()

    if args.mode == "unary":
        lanes = [threading.Thread(target=unary_lane, args=(i,)) for i in range(conc)]
    else:
        lanes = [threading.Thread(target=stream_lane)]
    for t in lanes:
        t.start()
    windows = measure(rec, stop, args.max_windows, args.max_seconds)
    for t in lanes:
        t.join()
    client.close()
    return summarize(conc, windows, rec.errors, args.batch, cpu_seconds() - cpu0)


async def run_aio(args, conc: int, xs: list[np.ndarray]) -> dict:
    rec, stop = Recorder(), threading.Event()
    cpu0 = cpu_seconds()
    async with plume.aio.Client(args.server, timeout=None) as client:

        async def unary_lane(lane: int) -> None:
            i = lane
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    await client.gemv(args.matrix, xs[i % len(xs)], out_dtype=args.out_dtype)
                    rec.ok(time.perf_counter() - t)
                except plume.PlumeError as e:
                    rec.fail(e)
                i += 1

        async def stream_lane(in_flight: int) -> None:
            sent: collections.deque = collections.deque()
            it = client.gemv_stream(args.matrix, timed_source(xs, stop, sent), max_in_flight=in_flight,
                                    out_dtype=args.out_dtype)
            try:
                async for _ in it:
                    rec.ok(time.perf_counter() - sent.popleft())
                    if stop.is_set():
                        break
            except plume.PlumeError as e:
                rec.fail(e)
            finally:
                await it.aclose()

        if args.mode == "aio-unary":
            lanes = [asyncio.create_task(unary_lane(i)) for i in range(conc)]
        else:
            n = max(1, min(args.streams, conc))
            lanes = [asyncio.create_task(stream_lane(conc // n + (1 if i < conc % n else 0)))
                     for i in range(n)]
        windows = await asyncio.to_thread(measure, rec, stop, args.max_windows, args.max_seconds)
        await asyncio.gather(*lanes)
    return summarize(conc, windows, rec.errors, args.batch, cpu_seconds() - cpu0)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default="localhost:50051")
    ap.add_argument("--matrix", required=True)
    ap.add_argument("--mode", default="aio-unary", choices=["unary", "stream", "aio-unary", "aio-stream"])
    ap.add_argument("--concurrency", default="1,64")
    ap.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ap.add_argument("--out_dtype", default=None, help="result dtype (default: the same as --dtype)")
    ap.add_argument("--batch", type=int, default=1, help="vectors per request")
    ap.add_argument("--streams", type=int, default=1, help="aio-stream: streams per step")
    ap.add_argument("--max_windows", type=int, default=10)
    ap.add_argument("--max_seconds", type=float, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)
    args.out_dtype = args.out_dtype or ("f16" if args.dtype == "float16" else "f32")
    with plume.Client(args.server) as c:
        info = c.info(args.matrix)
    xs = inputs(args, info.cols)
    results = []
    print(f"{'MODE':<11} {'CONC':>5} {'REQ/S':>9} {'VEC/S':>9} {'P50_MS':>8} {'P90_MS':>8} {'P99_MS':>8} "
          f"{'ERRORS':>6} {'CPU_MS/REQ':>10} STABLE")
    for conc in (int(x) for x in args.concurrency.split(",")):
        if args.mode.startswith("aio"):
            r = asyncio.run(run_aio(args, conc, xs))
        else:
            r = run_sync(args, conc, xs)
        r["mode"] = args.mode
        results.append(r)
        print(f"{args.mode:<11} {conc:>5} {r['requests_per_s']:>9.1f} {r['vectors_per_s']:>9.1f} "
              f"{r['p50_ms']:>8.3f} {r['p90_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['errors']:>6} "
              f"{r['client_cpu_ms_per_request']:>10.3f} "
              f"{'yes' if r['stable'] else 'no'}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"matrix": info.name, "rows": info.rows, "cols": info.cols, "format": info.format,
                       "scale": info.scale, "dtype": args.dtype, "out_dtype": args.out_dtype,
                       "batch": args.batch, "mode": args.mode, "steps": results}, f, indent=1)
    return 0 if all(r["errors"] == 0 and r["requests_per_s"] > 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
