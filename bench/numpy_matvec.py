#!/usr/bin/python3
"""Times numpy float32 `W @ x` (matvec, and W @ X for a batch) for comparison
with plume's FP8 GemvF32. Run with Debian's /usr/bin/python3 and, to let
OpenBLAS pick its kernel for this CPU, without OPENBLAS_CORETYPE /
OPENBLAS_L2_SIZE (see bench/run_cpu_bench.sh)."""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


def blas_info():
    info = {"numpy": np.__version__,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE")}
    try:
        from threadpoolctl import threadpool_info
        info["threadpools"] = [{k: d.get(k) for k in ("internal_api", "version", "num_threads",
                                                      "threading_layer", "architecture", "filepath")}
                               for d in threadpool_info()]
    except ImportError:
        pass
    if True:
        # Which BLAS the process actually mapped.
        libs = set()
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.split()[-1]
                if "blas" in p.lower() or "lapack" in p.lower():
                    libs.add(os.path.realpath(p))
        info["blas_libs"] = sorted(libs)
    return info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[8192, 4096])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--iters", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(1234)
    results = []
    for n in args.n:
        W = rng.standard_normal((n, n), dtype=np.float32)
        for b in args.batch:
            x = rng.standard_normal(n, dtype=np.float32) if b == 1 else \
                rng.standard_normal((n, b), dtype=np.float32)
            iters = args.iters or max(20, min(200, int(2e9 / (W.nbytes))))
            for _ in range(5):
                W @ x
            ts = []
            for _ in range(iters):
                t0 = time.perf_counter()
                W @ x
                ts.append((time.perf_counter() - t0) * 1e3)
            med = statistics.median(ts)
            results.append({"rows": n, "cols": n, "batch": b, "median_ms": round(med, 4),
                            "min_ms": round(min(ts), 4), "iters": iters,
                            "weight_gbps": round(W.nbytes / (med * 1e-3) / 1e9, 2)})
            if not args.json:
                print(f"numpy f32 {n}x{n} batch {b:<2}: median {med:8.3f} ms  min {min(ts):8.3f} ms"
                      f"  {W.nbytes / (med * 1e-3) / 1e9:6.1f} GB/s ({iters} runs)")
        del W
    info = blas_info()
    if args.json:
        print(json.dumps({"blas": info, "results": results}))
    else:
        print("BLAS:", json.dumps(info))


if __name__ == "__main__":
    sys.exit(main())
