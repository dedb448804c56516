# Device call 1: prefill ring variants. Run from the repo root.
source .gpu-carry/gpurun.sh
cp -r bench $W/benchsrc
B=$W/bin; cd $O
LIBS="main st t64 sr t64sr t32 pr prt64"; EXTRA="t64pv2"
libdir() { [ $1 = main ] && echo $W/lib || echo $W/var/$1:$W/lib; }
T0=$(date +%s)
OK=""
for v in $LIBS; do
  LD_LIBRARY_PATH=$(libdir $v) timeout 60 $B/gpu_attention_test --gtest_filter='*PrefillImages*:*Auto*' > test-$v.log 2>&1
  rc=$?; echo "test $v rc=$rc t=$(( $(date +%s)-T0 ))" >> call-summary.txt
  [ $rc = 0 ] && OK="$OK $v"
done
for r in 1 2 3; do for v in $OK $EXTRA; do
  { echo "## prefill-$v-r$r: gpu_attention_bench --only prefill --iters 50 --json prefill-$v-r$r.json (lib $v)"; date -u +%FT%TZ; } > prefill-$v-r$r.log
  LD_LIBRARY_PATH=$(libdir $v) timeout 40 $B/gpu_attention_bench --only prefill --iters 50 --json prefill-$v-r$r.json >> prefill-$v-r$r.log 2>&1
  echo "bench prefill-$v-r$r rc=$? t=$(( $(date +%s)-T0 ))" >> call-summary.txt
done; done
LD_LIBRARY_PATH= timeout 100 python3 $W/benchsrc/sdpa_attention.py 50 sdpa-prefill.json prefill > sdpa-prefill.log 2>&1
echo "sdpa prefill rc=$? t=$(( $(date +%s)-T0 ))" >> call-summary.txt
nvidia-smi > nvidia-smi.txt 2>&1
