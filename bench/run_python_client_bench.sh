#!/usr/bin/env bash
# The Python client against `plume bench` (C++) on one CPU-backend server:
# 8192x8192 E4M3 ROW, F16 vectors (F16 results), concurrency 1 and 64.
# Rounds alternate the clients so that load from elsewhere falls on both;
# bench/RESULTS-python-client.md reports the medians over rounds.
#
#   bench/run_python_client_bench.sh [BUILD_DIR] [OUT_DIR]   (defaults: build/cpu-release, /tmp/plume-pybench)
#   ROUNDS=3 (default); SIZE=8192 (the matrix is SIZE x SIZE); AIO_STREAMS=1
#   (streams of the aio-stream mode). SIZE=1024 makes the server fast, so
#   that the clients' own cost per request shows.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/cpu-release}
out=${2:-/tmp/plume-pybench}
rounds=${ROUNDS:-3}
size=${SIZE:-8192}
aio_streams=${AIO_STREAMS:-1}
py=/usr/bin/python3
export PYTHONPATH=$PWD/$build/client/python
mkdir -p "$out"
rm -f "$out"/*.json "$out"/ready.json

"$build/server/main/plume-server" --backend=cpu --grpc_address=127.0.0.1:0 --metrics_address=127.0.0.1:0 \
  --ready_file="$out/ready.json" --store_dir= --log_level=warn >"$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 300); do [ -s "$out/ready.json" ] && break; sleep 0.1; done
port=$($py -c "import json,sys; print(json.load(open(sys.argv[1]))['grpc_port'])" "$out/ready.json")
mport=$($py -c "import json,sys; print(json.load(open(sys.argv[1]))['metrics_port'])" "$out/ready.json")
addr=127.0.0.1:$port
$py - "$addr" "$size" <<'EOF'
import sys, numpy as np, plume
n = int(sys.argv[2])
w = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32).astype(np.float16)
with plume.Client(sys.argv[1], timeout=600) as c:
    print(c.upload("w", w, format="e4m3", scale="row"))
EOF

cli="$build/client/plume"
for r in $(seq "$rounds"); do
  echo "=== round $r"
  "$cli" bench w --server "$addr" --dtype f16 --concurrency 1,64 --mode stream \
    --metrics-url "http://127.0.0.1:$mport/metrics" --json "$out/cpp-stream-$r.json"
  $py bench/python_client_bench.py --server "$addr" --matrix w --mode unary --concurrency 1 \
    --json "$out/py-unary-$r.json"
  $py bench/python_client_bench.py --server "$addr" --matrix w --mode aio-unary --concurrency 1,64 \
    --json "$out/py-aio-unary-$r.json"
  "$cli" bench w --server "$addr" --dtype f16 --concurrency 1,64 --mode unary \
    --metrics-url "http://127.0.0.1:$mport/metrics" --json "$out/cpp-unary-$r.json"
  $py bench/python_client_bench.py --server "$addr" --matrix w --mode aio-stream --streams "$aio_streams" --concurrency 1,64 \
    --json "$out/py-aio-stream-$r.json"
  $py bench/python_client_bench.py --server "$addr" --matrix w --mode stream --concurrency 1,64 \
    --json "$out/py-stream-$r.json"
done

# Medians over rounds, per client, mode and concurrency.
$py - "$out" <<'EOF'
import glob, json, re, statistics, sys
out = sys.argv[1]
rows = {}
for path in sorted(glob.glob(f"{out}/*-[0-9]*.json")):
    kind = re.sub(r"-\d+\.json$", "", path.split("/")[-1])
    j = json.load(open(path))
    for s in j["steps"]:
        vps = s["vectors_per_s"]
        p50 = s["p50_ms"] if "p50_ms" in s else s["latency_ms"]["p50"]
        rows.setdefault((kind, s["concurrency"]), []).append((vps, p50, s.get("client_cpu_ms_per_request")))
print("| client / mode | concurrency | vectors/s (median) | p50 ms (median) | rounds: vectors/s | rounds: p50 ms "
      "| client CPU ms/request (median) |")
print("| --- | ---: | ---: | ---: | --- | --- | ---: |")
for (kind, conc), v in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    vps = [x[0] for x in v]
    p50 = [x[1] for x in v]
    print(f"| {kind} | {conc} | {statistics.median(vps):.1f} | {statistics.median(p50):.3f} | "
          f"{', '.join(f'{x:.1f}' for x in vps)} | {', '.join(f'{x:.3f}' for x in p50)} | "
          + (f"{statistics.median(x[2] for x in v):.3f} |" if v[0][2] is not None else "n/a |"))
EOF
