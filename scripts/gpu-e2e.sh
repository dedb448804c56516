#!/usr/bin/env bash
# End to end on a GPU machine, from binaries carried in .gpu-carry/: starts
# plume-server with --backend=auto (which must pick CUDA) and another with
# --backend=cpu, uploads the same matrices to both through the plume CLI,
# runs GEMV through the CLI, and compares the answers; the same for a K/V
# cache (upload, append, attend). Each server has its own durable store; the
# GPU server is then restarted and must serve the same matrices from its
# store with bit-identical answers. Checks /metrics for the device memory
# gauges. Exit 0 only if all agree.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
carry="$root/.gpu-carry"
export LD_LIBRARY_PATH="$carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
work=$(mktemp -d /tmp/plume-e2e.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

start() {  # name backend
  rm -f "$work/$1.json"
  "$carry/bin/plume-server" --grpc_address=127.0.0.1:0 --metrics_address=127.0.0.1:0 \
    --backend="$2" --store_dir="$work/store-$1" --ready_file="$work/$1.json" >>"$work/$1.log" 2>&1 &
  last_pid=$!
  pids+=("$last_pid")
  for _ in $(seq 300); do
    [ -s "$work/$1.json" ] && return 0
    kill -0 "$last_pid" 2>/dev/null || { cat "$work/$1.log"; return 1; }
    sleep 0.1
  done
  echo "$1 did not start"; cat "$work/$1.log"; return 1
}
port() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$work/$1.json" "$2"; }

start gpu auto
gpu_pid=$last_pid
start cpu cpu
grep -q "backend cuda device" "$work/gpu.log" || { echo "FAIL: --backend=auto did not pick CUDA"; cat "$work/gpu.log"; exit 1; }
grep "backend " "$work/gpu.log"
gpu="127.0.0.1:$(port gpu grpc_port)"
cpu="127.0.0.1:$(port cpu grpc_port)"

python3 - "$work" <<'PY'
import sys, numpy as np
d = sys.argv[1]
rng = np.random.default_rng(1)
for name, (r, c) in {"a": (4096, 4096), "b": (1000, 3001), "c": (77, 129)}.items():
    np.save(f"{d}/{name}.npy", rng.standard_normal((r, c), dtype=np.float32))
    np.save(f"{d}/{name}_x.npy", rng.standard_normal((13, c), dtype=np.float32))
    np.save(f"{d}/{name}_x16.npy", rng.standard_normal((64, c)).astype(np.float16))
PY
status=0
# The placement matters only with several GPUs (the CPU server ignores it).
for spec in "a e4m3 row sharded" "b e5m2 block128 replicated" "c e4m3 tensor auto"; do
  set -- $spec
  for s in gpu cpu; do
    addr=${!s}
    "$carry/bin/plume" --server "$addr" upload "$1" "$work/$1.npy" --format "$2" --scale "$3" --placement "$4" >/dev/null
    "$carry/bin/plume" --server "$addr" gemv "$1" "$work/$1_x.npy" -o "$work/$1_$s.npy"
    "$carry/bin/plume" --server "$addr" gemv "$1" "$work/$1_x16.npy" -o "$work/$1_${s}16.npy"
  done
  python3 - "$work" "$1" <<'PY' || status=1
import sys, numpy as np
d, n = sys.argv[1], sys.argv[2]
for suffix, tol in (("", 1e-5), ("16", 1e-5)):
    g = np.load(f"{d}/{n}_gpu{suffix}.npy").astype(np.float64)
    c = np.load(f"{d}/{n}_cpu{suffix}.npy").astype(np.float64)
    rel = np.linalg.norm(g - c) / np.linalg.norm(c)
    ok = rel <= tol and np.isfinite(g).all()
    print(f"{n} x{suffix or '32'}: gpu vs cpu backend rel. L2 {rel:.3g} (bound {tol}) {'ok' if ok else 'FAIL'}")
    if not ok:
        sys.exit(1)
PY
done
for n in a b c; do "$carry/bin/plume" --server "$gpu" info "$n" | grep -E "^(name|placement|backend):" || true; done
# Attention: the same K/V cache uploaded and appended to on both servers
# through the CLI; decode (q_len 1, 4) and prefill (q_len 100) queries.
python3 - "$work" <<'PY'
import sys, numpy as np
d = sys.argv[1]
rng = np.random.default_rng(2)
np.save(f"{d}/k.npy", rng.standard_normal((4, 1500, 128), dtype=np.float32))
np.save(f"{d}/v.npy", rng.standard_normal((4, 1500, 128), dtype=np.float32))
np.save(f"{d}/k1.npy", rng.standard_normal((4, 37, 128), dtype=np.float32))
np.save(f"{d}/v1.npy", rng.standard_normal((4, 37, 128), dtype=np.float32))
for q_len in (1, 4, 100):
    np.save(f"{d}/q{q_len}.npy", rng.standard_normal((2, 16, q_len, 128), dtype=np.float32))
PY
for s in gpu cpu; do
  addr=${!s}
  "$carry/bin/plume" --server "$addr" kv upload kv0 "$work/k.npy" "$work/v.npy" --format e4m3 --scale block >/dev/null
  "$carry/bin/plume" --server "$addr" kv append kv0 "$work/k1.npy" "$work/v1.npy" >/dev/null
  for q_len in 1 4 100; do
    "$carry/bin/plume" --server "$addr" attend kv0 "$work/q$q_len.npy" -o "$work/o${q_len}_$s.npy" --causal
  done
done
python3 - "$work" <<'PY' || status=1
import sys, numpy as np
d = sys.argv[1]
for q_len, tol in ((1, 2e-5), (4, 2e-5), (100, 2e-3)):
    g = np.load(f"{d}/o{q_len}_gpu.npy").astype(np.float64)
    c = np.load(f"{d}/o{q_len}_cpu.npy").astype(np.float64)
    rel = np.linalg.norm(g - c) / np.linalg.norm(c)
    ok = rel <= tol and np.isfinite(g).all()
    print(f"attention q_len {q_len}: gpu vs cpu backend rel. L2 {rel:.3g} (bound {tol}) {'ok' if ok else 'FAIL'}")
    if not ok:
        sys.exit(1)
PY

# Restart the GPU server: its store must bring every matrix back, and the
# answers must be bit-identical to those before the restart.
kill -TERM "$gpu_pid"; wait "$gpu_pid" 2>/dev/null || true
start gpu auto
gpu="127.0.0.1:$(port gpu grpc_port)"
for n in a b c; do
  "$carry/bin/plume" --server "$gpu" gemv "$n" "$work/${n}_x.npy" -o "$work/${n}_gpu_again.npy"
  python3 - "$work" "$n" <<'PY' || status=1
import sys, numpy as np
d, n = sys.argv[1], sys.argv[2]
a, b = np.load(f"{d}/{n}_gpu.npy"), np.load(f"{d}/{n}_gpu_again.npy")
same = a.shape == b.shape and np.array_equal(a, b)
print(f"{n}: after a restart from the store: {'bit-identical' if same else 'DIFFERENT'}")
sys.exit(0 if same else 1)
PY
done

metrics=$(python3 -c "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1]).read().decode())" \
  "http://127.0.0.1:$(port gpu metrics_port)/metrics")
for m in plume_device_memory_used_bytes plume_device_memory_total_bytes plume_vectors_total; do
  echo "$metrics" | grep -E "^$m[{ ]" || { echo "FAIL: /metrics has no $m"; status=1; }
done
echo "gpu-e2e: $([ $status -eq 0 ] && echo PASS || echo FAIL)"
exit $status
