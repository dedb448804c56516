source .gpu-carry/gpurun.sh
O=$W/out
cat $O/device.txt
( time $W/bin/gpu_gemv_test ) > $O/gpu_gemv_test.log 2>&1; echo "gemv_test rc=$?" | tee -a $O/summary.txt
tail -3 $O/gpu_gemv_test.log
save
B="$W/bin/gpu_gemv_bench --shapes 8192x8192,8192x28672,4096x4096,16384x16384 --batches 1,2,4,8,16,32,64 --formats e4m3 --modes row --paths native --kernels auto,wgmma --iters 100 --no-quantize --no-w8a8"
for r in 1 2 3; do
  extra="--no-baselines"; [ $r = 1 ] && extra=""
  echo "== round $r nopair" >> $O/ab.log
  LD_LIBRARY_PATH=$W/var/nopair:$W/lib PLUME_GEMV_TUNE_LOG=1 $B $extra >> $O/ab.log 2>&1
  echo "== round $r pair" >> $O/ab.log
  PLUME_GEMV_TUNE_LOG=1 $B $extra >> $O/ab.log 2>&1
  save
done
echo "bench done" | tee -a $O/summary.txt
( time $W/bin/gpu_backend_test ) > $O/gpu_backend_test.log 2>&1; echo "backend_test rc=$?" | tee -a $O/summary.txt
tail -3 $O/gpu_backend_test.log
$W/bin/gpu_gemv_bench --shapes 8192x8192,8192x28672 --batches 1,8,16,32 --formats e4m3 --modes row --paths native,software --kernels auto,wgmma --iters 100 --no-quantize --no-w8a8 --no-baselines > $O/paths.log 2>&1
echo all done | tee -a $O/summary.txt
