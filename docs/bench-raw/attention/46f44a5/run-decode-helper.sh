#!/usr/bin/env bash
# Decode helper's device run: GPU test first; the bench (plume + SDPA) only if it passes; then the
# same bench binary against the old kernel library (c8c064a) in the same session.
set -uo pipefail
C=$(cd "$(dirname "$0")" && pwd)
commit=${1:-unknown}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
LD_LIBRARY_PATH=$C/.gpu-carry/lib timeout 200 "$C/.gpu-carry/bin/gpu_attention_test" --gtest_filter=-GpuAttention.PrefillGrid > "$OUT/gpu-attention-test.log" 2>&1
rc=$?
grep -E "^\[  (PASSED|FAILED)|FAILED|rel. L2|worst" "$OUT/gpu-attention-test.log" | head -40
[ $rc -eq 0 ] || { echo "gpu_attention_test rc=$rc: no timing"; tail -30 "$OUT/gpu-attention-test.log"; exit 1; }
PLUME_COMMIT=$commit bash "$C/bench/run_gpu_attention_bench.sh" > /dev/null 2>&1
echo "bench rc=$?"
grep -E "decode +native" "$OUT/gpu-attention-bench.log" | awk '{print "new", $3, $4, $9, $13}'
grep -E "decode +software" "$OUT/gpu-attention-bench.log" | awk '{print "new-sw", $3, $4, $9, $13}'
grep -E "read ceiling|prefill|sdpa" "$OUT/gpu-attention-bench.log" | head -24
