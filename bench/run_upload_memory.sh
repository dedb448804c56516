#!/usr/bin/env bash
# The host memory one upload costs plume-server, on a GPU machine, from the
# binaries in .gpu-carry/ (scripts/pack-for-gpu.sh). For each store
# (memory only, then durable): a fresh plume-server --backend=cuda, its VmRSS
# once ready and idle, one `plume upload` of a ROWS x COLS F32 matrix (E4M3,
# ROW scales) from a separate process, then the server's VmHWM (its peak
# since start). Writes upload-memory.txt and the logs to $OUT (or /tmp).
# Usage: bench/run_upload_memory.sh [ROWS [COLS]]   (default 16384 16384)
# PLUME_UPLOAD_SERVER_FLAGS: extra plume-server flags (e.g. --malloc_arenas=1).
set -euo pipefail
. "$(dirname "$0")/gpu_bench_env.sh"
rows=${1:-16384}
cols=${2:-$rows}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bench_header "$out/upload-memory.log" bench/run_upload_memory.sh "$rows" "$cols"
python3 "$root/bench/make_random_npy.py" "$work/w.npy" "$rows" "$cols" 7
kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
for store in none disk; do
  rm -rf "$work/store" "$work/ready.json"
  flag=--store_dir=
  [ "$store" = disk ] && flag=--store_dir="$work/store"
  "$carry/bin/plume-server" --backend=cuda --grpc_address=127.0.0.1:0 --metrics_address=127.0.0.1:0 \
    "$flag" --ready_file="$work/ready.json" ${PLUME_UPLOAD_SERVER_FLAGS:-} >"$out/upload-server-$store.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do [ -s "$work/ready.json" ] && break; sleep 0.1; done
  [ -s "$work/ready.json" ] || { cat "$out/upload-server-$store.log"; exit 1; }
  port=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['grpc_port'])" "$work/ready.json")
  sleep 1
  idle=$(kib "$pid" VmRSS)
  t0=$(date +%s.%N)
  rc=0
  "$carry/bin/plume" --server "127.0.0.1:$port" --timeout 120 upload w "$work/w.npy" --format e4m3 \
    --scale row >"$out/upload-cli-$store.log" 2>&1 || rc=$?
  secs=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))" "$t0" "$(date +%s.%N)")
  peak=$(kib "$pid" VmHWM)
  after=$(kib "$pid" VmRSS)
  kill -TERM "$pid"
  wait "$pid" || true
  echo "store=$store upload rc=$rc seconds=$secs idle_rss_kB=$idle peak_hwm_kB=$peak" \
    "after_rss_kB=$after peak_minus_idle_MiB=$(( (peak - idle) / 1024 ))" | tee -a "$out/upload-memory.txt"
  [ "$rc" -eq 0 ] || exit 1
done
