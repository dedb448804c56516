#!/usr/bin/env bash
# The newcomer's demo: installs what building and running need
# (PLUME_DEPS=demo: the build tools and libraries, and numpy), builds
# plume-server and the plume CLI (the demo preset: no tests or benches),
# starts the server (CPU backend when there is no GPU), uploads a random
# 4096x4096 float32 matrix as E4M3 with row scales, runs a GEMV on a batch of
# 8 vectors, prints it, shows plume_vectors_total on /metrics, and ends with
# one line of throughput and latency from a short `plume bench`.
# The server stops and its temporary folder is removed at the end;
# KEEP_SERVER=1 leaves both.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
PLUME_DEPS=demo scripts/install-deps.sh
cmake --preset demo >/dev/null
cmake --build --preset demo -j "$(nproc)"

bin=build/demo
work=$(mktemp -d /tmp/plume-demo.XXXXXX)
grpc_port=${PLUME_GRPC_PORT:-50051}
metrics_port=${PLUME_METRICS_PORT:-9464}
plume() { "$bin/client/plume" --server "127.0.0.1:$grpc_port" "$@"; }

echo "== starting plume-server (log: $work/server.log)"
"$bin/server/main/plume-server" --grpc_address="127.0.0.1:$grpc_port" \
  --metrics_address="127.0.0.1:$metrics_port" --backend=auto --store_dir="$work/store" \
  --ready_file="$work/ready.json" >"$work/server.log" 2>&1 &
server_pid=$!
stop_server() {
  kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
[ "${KEEP_SERVER:-0}" = 1 ] || trap stop_server EXIT
for _ in $(seq 100); do
  [ -s "$work/ready.json" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; exit 1; }
  sleep 0.1
done
cat "$work/server.log"

echo "== making a random 4096x4096 float32 matrix and 8 input vectors"
/usr/bin/python3 - "$work" <<'PY'
import sys, numpy as np
rng = np.random.default_rng(0)
np.save(f"{sys.argv[1]}/w.npy", rng.standard_normal((4096, 4096), dtype=np.float32))
np.save(f"{sys.argv[1]}/x.npy", rng.standard_normal((8, 4096), dtype=np.float32))
PY

echo "== plume upload demo w.npy --format e4m3 --scale row"
plume upload demo "$work/w.npy" --format e4m3 --scale row
echo "== plume list"
plume list
echo "== plume gemv demo x.npy -o y.npy  (batch of 8)"
plume gemv demo "$work/x.npy" -o "$work/y.npy"
/usr/bin/python3 - "$work" <<'PY'
import sys, numpy as np
d = sys.argv[1]
w, x, y = np.load(f"{d}/w.npy"), np.load(f"{d}/x.npy"), np.load(f"{d}/y.npy")
np.set_printoptions(precision=4, threshold=40, edgeitems=4, linewidth=110)
print("y shape", y.shape, y.dtype)
print(y)
ref = x.astype(np.float64) @ w.astype(np.float64).T
print("relative L2 error vs the unquantized float64 product (FP8 E4M3 quantization error): %.4f"
      % (np.linalg.norm(y - ref) / np.linalg.norm(ref)))
PY
echo "== /metrics"
curl -s "http://127.0.0.1:$metrics_port/metrics" | grep -E '^plume_(vectors_total|weight_bytes_read_total|resident_|requests_total\{code="OK",method="Gemv"\})'
echo "== plume bench demo: 3 s, 16 vectors in flight over GemvStream"
plume bench demo --concurrency 16 --dtype f16 --max-seconds 3 --window-ms 500 \
  --json "$work/bench.json" >"$work/bench.log" 2>&1 || { cat "$work/bench.log"; exit 1; }
/usr/bin/python3 - "$work/bench.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["steps"][0]
l = s["latency_ms"]
print(f"plume bench: {s['vectors_per_s']:.0f} vectors/s at 16 in flight, latency p50 {l['p50']:.3f} ms, "
      f"p99 {l['p99']:.3f} ms ({s['errors']} errors)")
PY
if [ "${KEEP_SERVER:-0}" = 1 ]; then
  echo "== plume-server keeps running (pid $server_pid) on 127.0.0.1:$grpc_port; stop it with: kill $server_pid"
  echo "   its files: $work"
fi
