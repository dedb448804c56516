#!/usr/bin/env bash
# Runs the GPU attention benchmark on a GPU machine from binaries carried in
# .gpu-carry/ (scripts/pack-for-gpu.sh build/release; nothing is built there),
# then PyTorch SDPA (FP16 K/V) on the same shapes when PyTorch is there.
# Writes the log and JSON to $OUT (or /tmp). Extra arguments go to
# gpu_attention_bench.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
carry="$root/.gpu-carry"
export LD_LIBRARY_PATH="$carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
out=${OUT:-/tmp}
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: ${PLUME_COMMIT:-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  echo "command: bench/run_gpu_attention_bench.sh $*"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader
} | tee "$out/gpu-attention-bench.log"
"$carry/bin/gpu_attention_bench" --json "$out/gpu-attention-bench.json" "$@" 2>&1 | tee -a "$out/gpu-attention-bench.log"
if python3 -c 'import torch' 2>/dev/null; then
  echo "## PyTorch SDPA, FP16 K/V" | tee -a "$out/gpu-attention-bench.log"
  python3 "$root/bench/sdpa_attention.py" 50 "$out/sdpa-attention.json" 2>&1 | tee -a "$out/gpu-attention-bench.log"
fi
