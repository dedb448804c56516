# The device call that tests and times two changes to the Hopper prefill's
# consumers (kernels/cuda/src/attention_prefill_images.cuh) against the
# default library (`base`): `pp`, the two consumers taking turns at issuing
# their MMAs (PingPong, -DPLUME_PREFILL_PINGPONG=1); `ro`, O rescaled while
# the next Q K^T runs (-DPLUME_PREFILL_EARLY_RESCALE=1); `ppro`, both.
# Then Nsight Compute on the D = 128 kernel of base and ppro.
# Table: python3 docs/bench-raw/attention-prefill-ring/ab_table.py DIR base pp ro ppro.
# Carry: docs/bench-raw/attention-decode-wgmma/make-carry.sh. Run
# after the decode's call.sh in the same command (timeout_s 590), its files
# moved aside:
#   bash .gpu-carry/call.sh; cd $OUT && for f in results.tgz call-summary.txt device.txt; do
#   mv $f decode-$f; done; cd - >/dev/null; bash .gpu-carry/call-pp.sh; cat $OUT/*call-summary.txt
source .gpu-carry/gpurun.sh
cp -r bench $W/benchsrc
B=$W/bin; cd $O
libdir() { [ $1 = base ] && echo $W/lib || echo $W/var/$1:$W/lib; }
# The tests run side by side (correctness only; the timings come after, alone).
for v in pp ro ppro; do
  logged test-$v "$(libdir $v)" 150 $B/gpu_attention_test --gtest_filter='*Prefill*:*Auto*:*EveryScaleModeAndFormat*' &
done
wait
save
libs=base  # a failure or a hang: time nothing of it
for v in pp ro ppro; do grep -q "^test-$v rc=0 " call-summary.txt && libs="$libs $v"; done
for r in 1 2 3 4 5; do for v in $libs; do
  logged prefill-$v-r$r "$(libdir $v)" 40 $B/gpu_attention_bench --only prefill --iters 50 --json prefill-$v-r$r.json
done; done
save
logged sdpa-prefill "" 100 python3 $W/benchsrc/sdpa_attention.py 50 sdpa-prefill.json prefill
save
# Nsight Compute on the D = 128 flash kernel (its third launch: past the
# bench's warm-up), the default library and both changes together.
for v in base ppro; do
  case " $libs " in *" $v "*) ;; *) continue ;; esac
  logged ncu-$v-d128 "$(libdir $v)" 45 ncu --kernel-name-base demangled --kernel-name regex:'PrefillImagesKernel<128' \
    --launch-skip 2 --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats \
    --section SchedulerStats --section LaunchStats $B/gpu_attention_bench --only prefill --iters 3
done
nvidia-smi > nvidia-smi.txt 2>&1
rm -f $O/*.json.tmp
