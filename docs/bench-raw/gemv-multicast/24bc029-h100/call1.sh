source "$(dirname "$0")/gpurun.sh"
cat $O/device.txt
S=$O/summary.txt
t() {  # name lib
  ( time LD_LIBRARY_PATH=$2 timeout 120 $W/bin/gpu_gemv_test ) > $O/gpu_gemv_test-$1.log 2>&1
  echo "gemv_test $1 rc=$?" | tee -a $S; tail -4 $O/gpu_gemv_test-$1.log | head -1; save
}
t mc32 $W/lib
t mc16 $W/var/mc16:$W/lib
B="$W/bin/gpu_gemv_bench --shapes 8192x8192,4096x4096,16384x16384,8192x28672,28672x8192 --batches 1,8,16,32,64 --formats e4m3 --modes row --paths native --kernels auto,wgmma --iters 100 --no-quantize --no-w8a8"
run() { # round name lib extra
  echo "== round $1 $2" >> $O/ab.log
  LD_LIBRARY_PATH=$3 PLUME_GEMV_TUNE_LOG=1 timeout 60 $B $4 >> $O/ab.log 2>&1
}
for r in 1 2 3; do
  extra="--no-baselines"; [ $r = 1 ] && extra=""
  run $r mcoff $W/var/mcoff:$W/lib "$extra"
  run $r mc32 $W/lib --no-baselines
  run $r mc16 $W/var/mc16:$W/lib --no-baselines
  save
done
echo "bench done" | tee -a $S
( time timeout 60 $W/bin/gpu_backend_test ) > $O/gpu_backend_test.log 2>&1; echo "backend_test rc=$?" | tee -a $S; tail -4 $O/gpu_backend_test.log | head -1
$W/bin/gpu_gemv_bench --shapes 8192x8192,16384x16384 --batches 32,64 --formats e4m3 --modes row,block128 --paths native,software --kernels wgmma --iters 100 --no-quantize --no-w8a8 --no-baselines > $O/paths.log 2>&1
echo all done | tee -a $S
