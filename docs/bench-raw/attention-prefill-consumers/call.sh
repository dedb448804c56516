# Device call 1 (main = 572a6ef's library): prefill variants (three consumers at D = 128, partial chains, swizzled images) against HEAD's library.
source .gpu-carry/gpurun.sh
cp -r bench $W/benchsrc
B=$W/bin; cd $O
libdir() { [ $1 = main ] && echo $W/lib || echo $W/var/$1:$W/lib; }
T0=$(date +%s)
nvidia-smi > nvidia-smi-start.txt 2>&1
OK=""
LD_LIBRARY_PATH=$(libdir main) timeout 60 $B/gpu_backend_test --gtest_filter='*ForcedCublasLt*' > test-backend-main.log 2>&1
echo "test backend ForcedCublasLt main rc=$? t=$(( $(date +%s)-T0 ))" >> call-summary.txt
# The tests run side by side (correctness only; the timings come after, alone).
for v in main c3 c4t32 c4d64 ch1 ch2 swz c3swz; do
  ( LD_LIBRARY_PATH=$(libdir $v) timeout 120 $B/gpu_attention_test --gtest_filter='*PrefillImages*:*Auto*' > test-$v.log 2>&1
    echo "test $v rc=$? t=$(( $(date +%s)-T0 ))" >> call-summary.txt ) &
  OK="$OK $v"
done
wait
for r in 1 2 3; do for v in $OK c3pv2; do
  { echo "## prefill-$v-r$r: gpu_attention_bench --only prefill --iters 50 --json prefill-$v-r$r.json (lib $v)"; date -u +%FT%TZ; } > prefill-$v-r$r.log
  LD_LIBRARY_PATH=$(libdir $v) timeout 40 $B/gpu_attention_bench --only prefill --iters 50 --json prefill-$v-r$r.json >> prefill-$v-r$r.log 2>&1
  echo "bench prefill-$v-r$r rc=$? t=$(( $(date +%s)-T0 ))" >> call-summary.txt
done; done
LD_LIBRARY_PATH= timeout 100 python3 $W/benchsrc/sdpa_attention.py 50 sdpa-prefill.json prefill > sdpa-prefill.log 2>&1
echo "sdpa prefill rc=$? t=$(( $(date +%s)-T0 ))" >> call-summary.txt
nvidia-smi > nvidia-smi.txt 2>&1
rm -f $O/*.json.tmp
