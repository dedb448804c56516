source "$(dirname "$0")/gpurun.sh"
cat $O/device.txt
S=$O/summary.txt
( time timeout 120 $W/bin/gpu_gemv_test ) > $O/gpu_gemv_test.log 2>&1; echo "gemv_test rc=$?" | tee -a $S; save
B="$W/bin/gpu_gemv_bench --shapes 8192x8192,8192x28672,4096x4096,16384x16384,28672x8192 --batches 1,2,4,8,16,32,64 --formats e4m3 --modes row,block128 --paths native,software --kernels auto,wgmma --iters 100 --no-quantize --no-w8a8"
for r in 1 2 3; do
  extra="--no-baselines"; [ $r = 1 ] && extra=""
  echo "== round $r base" >> $O/ab.log; LD_LIBRARY_PATH=$W/var/base:$W/lib PLUME_GEMV_TUNE_LOG=1 timeout 100 $B $extra >> $O/ab.log 2>&1
  echo "== round $r lds" >> $O/ab.log; PLUME_GEMV_TUNE_LOG=1 timeout 100 $B --no-baselines >> $O/ab.log 2>&1
  save
done
echo "bench done" | tee -a $S
( time timeout 60 $W/bin/gpu_backend_test ) > $O/gpu_backend_test.log 2>&1; echo "backend_test rc=$?" | tee -a $S
timeout 100 ncu --set full --launch-skip 3 --launch-count 1 --kernel-name regex:WgmmaGemv $W/bin/gpu_gemv_bench --shapes 8192x8192 --batches 8 --formats e4m3 --modes row --paths native --kernels wgmma --iters 5 --no-quantize --no-w8a8 --no-baselines > $O/ncu-lds-8192x8192-b8.txt 2>&1
echo "ncu rc=$?" | tee -a $S
echo all done | tee -a $S
