source "$(dirname "$0")/gpurun.sh"
cat $O/device.txt
S=$O/summary.txt
( time timeout 120 $W/bin/gpu_gemv_test ) > $O/gpu_gemv_test.log 2>&1; echo "gemv_test rc=$?" | tee -a $S; save
B="$W/bin/gpu_gemv_bench --shapes 8192x8192,8192x28672,28672x8192,16384x16384,4096x4096 --batches 1,2,4,8,16,32,64 --formats e4m3 --modes row --kernels auto,wgmma --iters 100 --no-quantize --no-w8a8"
echo "== round 1 main" >> $O/ab.log; PLUME_GEMV_TUNE_LOG=1 timeout 120 $B --paths native >> $O/ab.log 2>&1; save
echo "== round 2 main" >> $O/ab.log; PLUME_GEMV_TUNE_LOG=1 timeout 120 $B --paths native --no-baselines >> $O/ab.log 2>&1; save
timeout 120 $W/bin/gpu_gemv_bench --shapes 8192x8192,8192x28672,16384x16384 --batches 1,2,4,8,16,32,64 --formats e4m3 --modes row --paths native,software --kernels auto,wgmma --iters 100 --no-quantize --no-w8a8 --no-baselines > $O/paths.log 2>&1
echo all done | tee -a $S
