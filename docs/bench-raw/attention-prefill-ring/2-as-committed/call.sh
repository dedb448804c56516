# Device call 2: the split rings as committed (after) against HEAD's library (before), and Q from registers (qr).
source .gpu-carry/gpurun.sh
cp -r bench $W/benchsrc
B=$W/bin; cd $O
libdir() { [ $1 = after ] && echo $W/lib || echo $W/var/$1:$W/lib; }
T0=$(date +%s)
LD_LIBRARY_PATH=$(libdir after) timeout 150 $B/gpu_attention_test > test-after.log 2>&1
echo "test after (whole) rc=$? t=$(( $(date +%s)-T0 ))" >> call-summary.txt
LD_LIBRARY_PATH=$(libdir qr) timeout 60 $B/gpu_attention_test --gtest_filter='*PrefillImages*:*Auto*' > test-qr.log 2>&1
rc=$?; echo "test qr rc=$rc t=$(( $(date +%s)-T0 ))" >> call-summary.txt
L="before after"; [ $rc = 0 ] && L="$L qr"
for r in 1 2 3; do for v in $L; do
  { echo "## prefill-$v-r$r: gpu_attention_bench --only prefill --iters 50 --json prefill-$v-r$r.json (lib $v)"; date -u +%FT%TZ; } > prefill-$v-r$r.log
  LD_LIBRARY_PATH=$(libdir $v) timeout 40 $B/gpu_attention_bench --only prefill --iters 50 --json prefill-$v-r$r.json >> prefill-$v-r$r.log 2>&1
  echo "bench prefill-$v-r$r rc=$? t=$(( $(date +%s)-T0 ))" >> call-summary.txt
done; done
LD_LIBRARY_PATH= timeout 100 python3 $W/benchsrc/sdpa_attention.py 50 sdpa-prefill.json prefill > sdpa-prefill.log 2>&1
echo "sdpa prefill rc=$? t=$(( $(date +%s)-T0 ))" >> call-summary.txt
nvidia-smi > nvidia-smi.txt 2>&1
rm -f $O/*.json.tmp
