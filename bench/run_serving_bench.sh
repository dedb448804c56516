#!/usr/bin/env bash
# The serving benchmark on a GPU machine, from binaries carried in
# .gpu-carry/ (scripts/pack-for-gpu.sh build/release; nothing is built
# there). For each repeat and each batching policy (a sweep): starts
# plume-server on the GPU backend with --batching=POLICY, uploads a random
# SIZE x SIZE matrix as E4M3 (F32 source, through the plume CLI), then runs
#   plume bench         streaming, F16 vectors, concurrency 1..256
#   plume bench --echo  the same payloads and concurrency: the Echo ceiling
#   plume bench         open loop at half of the streaming peak (p99 there)
#   plume bench [--echo] unary at a few concurrencies
# and stops the server. Writes the logs, the JSON of every run and
# POLICY-rN/serving-table.md per sweep, and serving-summary.md (every
# target in every sweep, by bench/serving_table.py) to $OUT (or /tmp).
#
# Environment (defaults for the GPU run):
#   PLUME_SERVING_POLICIES=adaptive,fixed   --batching values, one sweep each
#   PLUME_SERVING_REPEATS=3         sweeps of every policy
#   PLUME_SERVING_BACKEND=cuda      cpu: run it anywhere (the CI machine, a laptop)
#   PLUME_SERVING_SIZE=8192         rows = cols of the matrix
#   PLUME_SERVING_CONCURRENCY=1,8,16,32,64,128,256
#   PLUME_SERVING_UNARY_CONCURRENCY=1,64,256
#   PLUME_SERVING_MAX_SECONDS=15    cap per step (21 steps a sweep: under 6 min at worst;
#                                   set 3 to fit 3 repeats of 2 policies in one 10-minute call)
#                                   PLUME_SERVING_WINDOW_MS=1000
#   PLUME_SERVING_SERVER_FLAGS=""   extra plume-server flags (batcher knobs, ...)
#   PLUME_BIN=DIR                   take plume-server and plume from DIR instead
#                                   of .gpu-carry/bin (e.g. build/cpu-release, see below)
# On a machine without .gpu-carry, PLUME_BIN defaults to build/cpu-release's
# binaries when they exist.
set -euo pipefail
. "$(dirname "$0")/gpu_bench_env.sh"   # root, carry, out, LD_LIBRARY_PATH
backend=${PLUME_SERVING_BACKEND:-cuda}
size=${PLUME_SERVING_SIZE:-8192}
conc=${PLUME_SERVING_CONCURRENCY:-1,8,16,32,64,128,256}
unary_conc=${PLUME_SERVING_UNARY_CONCURRENCY:-1,64,256}
max_seconds=${PLUME_SERVING_MAX_SECONDS:-15}
policies=${PLUME_SERVING_POLICIES:-adaptive,fixed}
repeats=${PLUME_SERVING_REPEATS:-3}
window_ms=${PLUME_SERVING_WINDOW_MS:-1000}
if [ -n "${PLUME_BIN:-}" ]; then
  server_bin="$PLUME_BIN/plume-server"; cli_bin="$PLUME_BIN/plume"
  [ -x "$server_bin" ] || server_bin="$PLUME_BIN/server/main/plume-server"
  [ -x "$cli_bin" ] || cli_bin="$PLUME_BIN/client/plume"
elif [ -x "$carry/bin/plume-server" ]; then
  server_bin="$carry/bin/plume-server"; cli_bin="$carry/bin/plume"
else
  server_bin="$root/build/cpu-release/server/main/plume-server"; cli_bin="$root/build/cpu-release/client/plume"
fi
for b in "$server_bin" "$cli_bin"; do [ -x "$b" ] || { echo "no binary $b" >&2; exit 1; }; done

mkdir -p "$out"
log="$out/serving-bench.log"
work=$(mktemp -d /tmp/plume-serving.XXXXXX)
server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  server_pid=""
}
cleanup() {
  stop_server
  rm -rf "$work"
}
trap cleanup EXIT

device="cpu backend, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
if [ "$backend" != cpu ] && command -v nvidia-smi >/dev/null; then
  device="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1); $(nproc) cores"
fi
commit=${PLUME_COMMIT:-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)}
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $commit"
  echo "command: bench/run_serving_bench.sh $*"
  echo "device: $device"
  echo "backend: $backend, matrix ${size}x${size} e4m3 (row scales), f16 vectors"
  echo "policies: $policies; repeats: $repeats; max seconds per step: $max_seconds"
} | tee "$log"

python3 "$root/bench/make_random_npy.py" "$work/w.npy" "$size" "$size" 1
common=(--dtype f16 --window-ms "$window_ms" --max-seconds "$max_seconds")
status=0
sweeps=()

# One sweep: a fresh server with --batching=$1, its results in $2.
sweep() {
  local policy=$1 dir=$2
  mkdir -p "$dir"
  rm -rf "$work/store" "$work/ready.json"
  : >"$dir/serving-commands.txt"
  "$server_bin" --grpc_address=127.0.0.1:0 --metrics_address=127.0.0.1:0 --backend="$backend" \
    --batching="$policy" --store_dir="$work/store" --ready_file="$work/ready.json" \
    ${PLUME_SERVING_SERVER_FLAGS:-} >"$dir/serving-server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 600); do
    [ -s "$work/ready.json" ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$dir/serving-server.log"; return 1; }
    sleep 0.1
  done
  [ -s "$work/ready.json" ] || { echo "plume-server did not start" >&2; cat "$dir/serving-server.log"; return 1; }
  port() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$work/ready.json" "$1"; }
  local addr metrics
  addr="127.0.0.1:$(port grpc_port)"
  metrics="http://127.0.0.1:$(port metrics_port)/metrics"
  grep -E "backend|batching" "$dir/serving-server.log" | tee -a "$log" || true
  # Runs the plume CLI, recording the command (with the address generalized).
  plume() {
    echo "plume $*" | sed "s#$addr#HOST:PORT#g; s#$metrics#http://HOST:MPORT/metrics#g; s#$dir/##g; s#$work/##g" >>"$dir/serving-commands.txt"
    "$cli_bin" --server "$addr" --timeout 60 "$@"
  }
  run() {  # name args...
    local name=$1
    shift
    echo "## $policy $name: plume bench $*" | tee -a "$log"
    plume bench "$@" "${common[@]}" --metrics-url "$metrics" --json "$dir/serving-$name.json" 2>&1 | tee -a "$log" || status=1
  }
  plume upload w "$work/w.npy" --format e4m3 --scale row 2>&1 | tee -a "$log"
  run stream w --mode stream --concurrency "$conc"
  run echo-stream w --echo --mode stream --concurrency "$conc"
  # p99 at half of the streaming peak, open loop.
  local half
  half=$(python3 -c "import json,sys; s=json.load(open(sys.argv[1]))['steps']; print(int(max(x['requests_per_s'] or 0 for x in s)/2))" "$dir/serving-stream.json" 2>/dev/null || echo 0)
  if python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) > 0 else 1)" "$half"; then
    run half-peak w --mode stream --rate "$half"
  fi
  run unary w --mode unary --concurrency "$unary_conc"
  run echo-unary w --echo --mode unary --concurrency "$unary_conc"
  stop_server
  python3 "$root/bench/serving_table.py" --out-dir "$dir" --device "$device" --commit "$commit" \
    --date "$(date -u +%Y-%m-%d)" --policy "$policy" --commands "$dir/serving-commands.txt" \
    >"$dir/serving-table.md" || status=1
  cat "$dir/serving-table.md" | tee -a "$log"
}

for r in $(seq "$repeats"); do
  for policy in ${policies//,/ }; do
    echo "# sweep $r of $repeats, --batching=$policy" | tee -a "$log"
    sweep "$policy" "$out/$policy-r$r" || status=1
    sweeps+=("$policy=$out/$policy-r$r")
  done
done
python3 "$root/bench/serving_table.py" --summary "${sweeps[@]}" --device "$device" \
  --commit "$commit" --date "$(date -u +%Y-%m-%d)" >"$out/serving-summary.md" || status=1
cat "$out/serving-summary.md" | tee -a "$log"
exit $status
