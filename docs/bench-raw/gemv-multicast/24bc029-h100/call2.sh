source "$(dirname "$0")/gpurun.sh"
cat $O/device.txt
S=$O/summary.txt
( time LD_LIBRARY_PATH=$W/var/mccta:$W/lib timeout 120 $W/bin/gpu_gemv_test ) > $O/gpu_gemv_test-mccta.log 2>&1
echo "gemv_test mccta rc=$?" | tee -a $S; save
B="$W/bin/gpu_gemv_bench --shapes 8192x8192,4096x4096,16384x16384 --batches 8,16,32,64 --formats e4m3 --modes row --paths native --kernels wgmma --iters 100 --no-quantize --no-w8a8 --no-baselines"
for r in 1 2; do
  for v in mcoff mc mcnomc mccta; do
    echo "== round $r $v" >> $O/ab.log
    LD_LIBRARY_PATH=$W/var/$v:$W/lib timeout 60 $B >> $O/ab.log 2>&1
  done
  save
done
echo "bench done" | tee -a $S
N="--kernel-name regex:WgmmaGemv --launch-skip 5 --launch-count 1 --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy"
for v in mcoff mc; do
  LD_LIBRARY_PATH=$W/var/$v:$W/lib timeout 90 ncu $N $W/bin/gpu_gemv_bench --shapes 8192x8192 --batches 32 --formats e4m3 --modes row --paths native --kernels wgmma --iters 10 --no-quantize --no-w8a8 --no-baselines > $O/ncu-$v.txt 2>&1
  echo "ncu $v rc=$?" | tee -a $S; save
done
echo all done | tee -a $S
