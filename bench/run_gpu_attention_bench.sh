#!/usr/bin/env bash
# Runs the GPU attention benchmark on a GPU machine from binaries carried in
# .gpu-carry/ (scripts/pack-for-gpu.sh build/release; nothing is built there),
# then PyTorch SDPA (FP16 K/V) on the same shapes when PyTorch is there.
# Writes the log and JSON to $OUT (or /tmp). Extra arguments go to
# gpu_attention_bench.
set -euo pipefail
. "$(dirname "$0")/gpu_bench_env.sh"
bench_header "$out/gpu-attention-bench.log" bench/run_gpu_attention_bench.sh "$@"
"$carry/bin/gpu_attention_bench" --json "$out/gpu-attention-bench.json" "$@" 2>&1 | tee -a "$out/gpu-attention-bench.log"
if python3 -c 'import torch' 2>/dev/null; then
  echo "## PyTorch SDPA, FP16 K/V" | tee -a "$out/gpu-attention-bench.log"
  python3 "$root/bench/sdpa_attention.py" 50 "$out/sdpa-attention.json" 2>&1 | tee -a "$out/gpu-attention-bench.log"
fi
