source "$(dirname "$0")/gpurun.sh"
cat $O/device.txt
S=$O/summary.txt
( time LD_LIBRARY_PATH=$W/var/f4:$W/lib timeout 120 $W/bin/gpu_gemv_test ) > $O/gpu_gemv_test-f4.log 2>&1; echo "gemv_test f4 rc=$?" | tee -a $S; save
B="$W/bin/gpu_gemv_bench --shapes 28672x8192,8192x8192,4096x4096 --batches 1,2,4,8,16,32,64 --formats e4m3 --modes row --paths native,software --kernels auto,wgmma --iters 100 --no-quantize --no-w8a8"
for r in 1 2 3; do
  extra="--no-baselines"; [ $r = 1 ] && extra=""
  echo "== round $r base" >> $O/ab.log; PLUME_GEMV_TUNE_LOG=1 timeout 100 $B $extra >> $O/ab.log 2>&1
  echo "== round $r f4" >> $O/ab.log; LD_LIBRARY_PATH=$W/var/f4:$W/lib PLUME_GEMV_TUNE_LOG=1 timeout 100 $B --no-baselines >> $O/ab.log 2>&1
  save
done
echo all done | tee -a $S
