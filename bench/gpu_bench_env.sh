# Sourced by the GPU bench scripts: root, carry (.gpu-carry/, made by
# scripts/pack-for-gpu.sh), out ($OUT or /tmp), LD_LIBRARY_PATH with the
# carried libraries and the machine's cuBLAS, and bench_header LOG ARGS...,
# which writes date, commit, command and GPU to LOG (and stdout).
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
carry="$root/.gpu-carry"
out=${OUT:-/tmp}
cuda_lib=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -e "$d/libcublasLt.so.13" ] && { cuda_lib="$d"; break; }
done
if [ -z "$cuda_lib" ]; then
  # PyTorch's wheels carry cuBLAS too.
  cuda_lib=$(dirname "$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib", "x"))' 2>/dev/null)" || true)
fi
export LD_LIBRARY_PATH="$carry/lib${cuda_lib:+:$cuda_lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

bench_header() {
  local log=$1
  shift
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: ${PLUME_COMMIT:-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
    echo "command: $*"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader
  } | tee "$log"
}
