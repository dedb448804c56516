# The device call that tests and times the two consumers' turns at issuing
# their MMAs (PingPong in kernels/cuda/src/attention_prefill_images.cuh, the
# `pp` library: -DPLUME_PREFILL_PINGPONG=1) against the library without them
# (`base`). Table: python3 docs/bench-raw/attention-prefill-ring/ab_table.py DIR base pp.
# Carry: docs/bench-raw/attention-decode-wgmma/make-carry.sh. Run
# after the decode's call.sh in the same command (timeout_s 590), its files
# moved aside:
#   bash .gpu-carry/call.sh; cd $OUT && for f in results.tgz call-summary.txt device.txt; do
#   mv $f decode-$f; done; cd - >/dev/null; bash .gpu-carry/call-pp.sh; cat $OUT/*call-summary.txt
source .gpu-carry/gpurun.sh
cp -r bench $W/benchsrc
B=$W/bin; cd $O
libdir() { [ $1 = base ] && echo $W/lib || echo $W/var/$1:$W/lib; }
T0=$(date +%s)
LD_LIBRARY_PATH=$(libdir pp) timeout 120 $B/gpu_attention_test --gtest_filter='*Prefill*:*Auto*:*EveryScaleModeAndFormat*' > test-pp.log 2>&1
rc=$?; echo "test pp rc=$rc t=$(( $(date +%s)-T0 ))" >> call-summary.txt
save
libs="base pp"; [ $rc = 0 ] || libs=base  # a failure or a hang: time nothing of it
for r in 1 2 3 4 5; do for v in $libs; do
  { echo "## prefill-$v-r$r: gpu_attention_bench --only prefill --iters 50 --json prefill-$v-r$r.json (lib $v)"; date -u +%FT%TZ; } > prefill-$v-r$r.log
  LD_LIBRARY_PATH=$(libdir $v) timeout 40 $B/gpu_attention_bench --only prefill --iters 50 --json prefill-$v-r$r.json >> prefill-$v-r$r.log 2>&1
  echo "bench prefill-$v-r$r rc=$? t=$(( $(date +%s)-T0 ))" >> call-summary.txt
done; done
save
LD_LIBRARY_PATH= timeout 100 python3 $W/benchsrc/sdpa_attention.py 50 sdpa-prefill.json prefill > sdpa-prefill.log 2>&1
echo "sdpa prefill rc=$? t=$(( $(date +%s)-T0 ))" >> call-summary.txt
nvidia-smi > nvidia-smi.txt 2>&1
rm -f $O/*.json.tmp
