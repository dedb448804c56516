#!/usr/bin/env bash
# Runs the GPU GEMV benchmark on a GPU machine from binaries carried in
# .gpu-carry/ (scripts/pack-for-gpu.sh build/release; nothing is built
# there). Extra arguments go to gpu_gemv_bench. Writes the log and JSON to
# $OUT (or /tmp). cuBLAS comes from the machine's CUDA install.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
carry="$root/.gpu-carry"
cuda_lib=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -e "$d/libcublasLt.so.13" ] && { cuda_lib="$d"; break; }
done
if [ -z "$cuda_lib" ]; then
  # PyTorch's wheels carry cuBLAS too.
  cuda_lib=$(dirname "$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib", "x"))' 2>/dev/null)" || true)
fi
export LD_LIBRARY_PATH="$carry/lib${cuda_lib:+:$cuda_lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
out=${OUT:-/tmp}
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: ${PLUME_COMMIT:-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  echo "command: bench/run_gpu_bench.sh $*"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader
} | tee "$out/gpu-bench.log"
"$carry/bin/gpu_gemv_bench" --json "$out/gpu-bench.json" "$@" 2>&1 | tee -a "$out/gpu-bench.log"
if [ "${PLUME_BENCH_TORCH:-1}" = 1 ] && python3 -c 'import torch' 2>/dev/null; then
  echo "## torch._scaled_mm (cuBLASLt FP8 through PyTorch)" | tee -a "$out/gpu-bench.log"
  python3 "$root/bench/torch_scaled_mm.py" 200 "$out/torch-bench.json" 2>&1 | tee -a "$out/gpu-bench.log"
fi
