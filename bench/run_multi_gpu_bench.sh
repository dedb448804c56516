#!/usr/bin/env bash
# Runs the multi-GPU GEMV benchmark on a GPU machine from binaries
# carried in .gpu-carry/ (scripts/pack-for-gpu.sh build/release; nothing is
# built there): a 32768x16384 E4M3 ROW matrix, F16 activations, batches 1
# and 16, one GPU against row-sharded over every GPU (and replicated, one
# thread per GPU), through the backend layer. Extra arguments go to
# gpu_multi_bench (--devices 0,1 --iters N --heap ...). Writes
# $OUT/multi-gpu-bench.log and $OUT/multi-gpu-bench.json (or /tmp).
set -euo pipefail
. "$(dirname "$0")/gpu_bench_env.sh"
log="$out/multi-gpu-bench.log"
bench_header "$log" bench/run_multi_gpu_bench.sh "$@"
nvidia-smi topo -m 2>&1 | tee -a "$log" || true
"$carry/bin/gpu_multi_bench" --rows 32768 --cols 16384 --batches 1,16 --heap \
  --json "$out/multi-gpu-bench.json" "$@" 2>&1 | tee -a "$log"
