#!/usr/bin/env bash
# Runs the GPU tests on a GPU machine, from binaries carried in .gpu-carry/
# (made by scripts/pack-for-gpu.sh; nothing is built there). Writes the log
# to $OUT/gpu-test.log when $OUT is set. Exits non-zero if any test fails or
# no GPU is found.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
carry="$root/.gpu-carry"
export LD_LIBRARY_PATH="$carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
log=${OUT:-/tmp}/gpu-test.log
{
  echo "# plume GPU tests"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: ${PLUME_COMMIT:-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi: not found"
} | tee "$log"
status=0
for t in "$carry"/bin/gpu_*_test; do
  echo "## $(basename "$t")" | tee -a "$log"
  "$t" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  echo "exit: $rc" | tee -a "$log"
  [ "$rc" -eq 0 ] || status=1
done
echo "## scripts/gpu-e2e.sh (plume-server on the GPU vs the CPU backend, via the CLI)" | tee -a "$log"
"$root/scripts/gpu-e2e.sh" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
echo "exit: $rc" | tee -a "$log"
[ "$rc" -eq 0 ] || status=1
echo "gpu-test: $([ $status -eq 0 ] && echo PASS || echo FAIL)" | tee -a "$log"
exit $status
