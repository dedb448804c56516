#!/usr/bin/env bash
# Runs plume's CPU GEMV benchmark and numpy's float32 matvec on the same
# shapes, one after the other, and prints the ratios.
#
#   bench/run_cpu_bench.sh BUILD_DIR [ROUNDS]
#
# BUILD_DIR must already contain plume_cpu_gemv_bench (this script builds
# nothing), e.g. after
#   cmake --build BUILD_DIR --target plume_cpu_gemv_bench
# ROUNDS (default 3) alternates plume and numpy runs; each case reports the
# best round's median, so a round disturbed by other load on the machine
# does not decide the result (all rounds are printed too).
set -euo pipefail
build=${1:?usage: run_cpu_bench.sh BUILD_DIR [ROUNDS]}
rounds=${2:-3}
here=$(cd "$(dirname "$0")" && pwd)
bench=$(find "$build" -name plume_cpu_gemv_bench -type f -perm -u+x | head -n1)
[[ -x "$bench" ]] || { echo "plume_cpu_gemv_bench not found under $build" >&2; exit 1; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "commit:  $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for ((i = 1; i <= rounds; ++i)); do
  "$bench" --json > "$tmp/plume.$i.json"
  # OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE slow a current OpenBLAS down: unset
  # them for this benchmark only (see the environment notes).
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /usr/bin/python3 "$here/numpy_matvec.py" --json \
    > "$tmp/numpy.$i.json"
done

/usr/bin/python3 - "$tmp" "$rounds" <<'PY'
import json, sys
tmp, rounds = sys.argv[1], int(sys.argv[2])
best = {}
for i in range(1, rounds + 1):
    p = json.load(open(f"{tmp}/plume.{i}.json"))
    n = json.load(open(f"{tmp}/numpy.{i}.json"))
    if i == 1:
        print(f"plume: isa {p['isa']}, {p['threads']} threads, {p['format']} {p['scale_mode']}")
        blas = n["blas"]
        print("numpy:", blas["numpy"], "BLAS:", ", ".join(blas.get("blas_libs", [])) or blas,
              "OPENBLAS_CORETYPE:", blas["OPENBLAS_CORETYPE"], "OPENBLAS_L2_SIZE:", blas["OPENBLAS_L2_SIZE"])
    for src, doc in (("plume", p), ("numpy", n)):
        for r in doc["results"]:
            key = (r["rows"], r["cols"], r["batch"])
            print(f"  round {i} {src:5} {r['rows']}x{r['cols']} batch {r['batch']}: median {r['median_ms']:.3f} ms")
            d = best.setdefault(key, {})
            d[src] = min(d.get(src, 1e99), r["median_ms"])
            if "read_ceiling_ms" in r:
                print(f"  round {i} read  {r['rows']}x{r['cols']} ceiling: median {r['read_ceiling_ms']:.3f} ms")
                d["read"] = min(d.get("read", 1e99), r["read_ceiling_ms"])
print()
print("| shape | batch | plume GemvF32 FP8 (ms) | numpy f32 W@x (ms) | speed-up | read ceiling (ms) |")
print("|---|---|---|---|---|---|")
for (rows, cols, b), d in best.items():
    if "plume" in d and "numpy" in d:
        rd = f"{d['read']:.3f}" if "read" in d else "-"
        print(f"| {rows}x{cols} | {b} | {d['plume']:.3f} | {d['numpy']:.3f} | {d['numpy'] / d['plume']:.2f}x | {rd} |")
PY
