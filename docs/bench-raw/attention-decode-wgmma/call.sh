# The device call that tests and times the Hopper decode (kernels/cuda/src/attention_decode_wgmma.cuh)
# against the mma.sync decode. Run once on 2026-12-07 (H100): the tests passed, the timings were lost (2026-12-07-h100/).
# Carry: docs/bench-raw/attention-decode-wgmma/make-carry.sh (base, on, all, and the prefill variants of
# ../attention-prefill-pingpong/call.sh, which runs after this one; about 36 MB).
# Run: bash .gpu-carry/call.sh; then python3 decode_ab.py OUT base on (and base all).
source .gpu-carry/gpurun.sh
cp -r bench $W/benchsrc
B=$W/bin; cd $O
libdir() { [ $1 = base ] && echo $W/lib || echo $W/var/$1:$W/lib; }
T0=$(date +%s)
nvidia-smi > nvidia-smi-start.txt 2>&1
( LD_LIBRARY_PATH=$(libdir on) timeout 150 $B/gpu_gemv_test > test-gemv-on.log 2>&1
  echo "test gemv on rc=$? t=$(( $(date +%s)-T0 ))" >> call-summary.txt ) &
LD_LIBRARY_PATH=$(libdir on) timeout 150 $B/gpu_attention_test > test-on.log 2>&1
rc=$?; echo "test on rc=$rc t=$(( $(date +%s)-T0 ))" >> call-summary.txt
wait
save
libs="base on all"; [ $rc = 124 ] && libs=base  # a hang: time nothing of it
for r in 1 2 3; do for v in $libs; do
  { echo "## decode-$v-r$r: gpu_attention_bench --only decode --iters 100 --json decode-$v-r$r.json (lib $v)"; date -u +%FT%TZ; } > decode-$v-r$r.log
  LD_LIBRARY_PATH=$(libdir $v) timeout 60 $B/gpu_attention_bench --only decode --iters 100 --json decode-$v-r$r.json >> decode-$v-r$r.log 2>&1
  echo "bench decode-$v-r$r rc=$? t=$(( $(date +%s)-T0 ))" >> call-summary.txt
done; done
save
LD_LIBRARY_PATH= timeout 60 python3 $W/benchsrc/sdpa_attention.py 50 sdpa-decode.json decode > sdpa-decode.log 2>&1
echo "sdpa decode rc=$? t=$(( $(date +%s)-T0 ))" >> call-summary.txt
save
LD_LIBRARY_PATH=$(libdir all) timeout 100 $B/gpu_attention_test --gtest_filter='*Decode*:*EveryScaleModeAndFormat*' > test-all.log 2>&1
echo "test all rc=$? t=$(( $(date +%s)-T0 ))" >> call-summary.txt
save
LD_LIBRARY_PATH=$(libdir on) timeout 40 ncu --kernel-name regex:'DecodeWgmmaKernel' --launch-skip 2 --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis --section LaunchStats $B/gpu_attention_bench --only decode --dims 128 --seqs 131072 --batches 16 --iters 5 > ncu-on-b16-131072.txt 2>&1
echo "ncu on rc=$? t=$(( $(date +%s)-T0 ))" >> call-summary.txt
nvidia-smi > nvidia-smi.txt 2>&1
rm -f $O/*.json.tmp
