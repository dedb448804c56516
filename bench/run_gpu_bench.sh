#!/usr/bin/env bash
# Runs the GPU GEMV benchmark on a GPU machine from binaries carried in
# .gpu-carry/ (scripts/pack-for-gpu.sh build/release; nothing is built
# there). Extra arguments go to gpu_gemv_bench. Writes the log and JSON to
# $OUT (or /tmp). cuBLAS comes from the machine's CUDA install.
set -euo pipefail
. "$(dirname "$0")/gpu_bench_env.sh"
bench_header "$out/gpu-bench.log" bench/run_gpu_bench.sh "$@"
"$carry/bin/gpu_gemv_bench" --json "$out/gpu-bench.json" "$@" 2>&1 | tee -a "$out/gpu-bench.log"
if [ "${PLUME_BENCH_TORCH:-1}" = 1 ] && python3 -c 'import torch' 2>/dev/null; then
  echo "## torch._scaled_mm (cuBLASLt FP8 through PyTorch)" | tee -a "$out/gpu-bench.log"
  python3 "$root/bench/torch_scaled_mm.py" 200 "$out/torch-bench.json" 2>&1 | tee -a "$out/gpu-bench.log"
fi
