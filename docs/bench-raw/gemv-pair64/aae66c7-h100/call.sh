source "$(dirname "$0")/gpurun.sh"
cat $O/device.txt
S=$O/summary.txt
t() {  # name lib
  local name=$1 lib=$2
  ( time LD_LIBRARY_PATH=$lib $W/bin/gpu_gemv_test ) > $O/gpu_gemv_test-$name.log 2>&1
  echo "gemv_test $name rc=$?" | tee -a $S; tail -2 $O/gpu_gemv_test-$name.log; save
}
t fold $W/var/fold:$W/lib
B="$W/bin/gpu_gemv_bench --shapes 8192x8192,8192x28672,4096x4096,16384x16384,28672x8192 --batches 1,2,4,8,16,32,64 --formats e4m3 --modes row --paths native --kernels auto,wgmma --iters 100 --no-quantize --no-w8a8"
run() { # round name lib extra
  echo "== round $1 $2" >> $O/ab.log
  LD_LIBRARY_PATH=$3 PLUME_GEMV_TUNE_LOG=1 $B $4 >> $O/ab.log 2>&1
}
run 1 base $W/lib ""
run 1 fold $W/var/fold:$W/lib --no-baselines
save
t p64 $W/var/p64:$W/lib
t pall $W/var/pall:$W/lib
for r in 1 2 3; do
  [ $r = 1 ] || run $r base $W/lib --no-baselines
  [ $r = 1 ] || run $r fold $W/var/fold:$W/lib --no-baselines
  run $r p64 $W/var/p64:$W/lib --no-baselines
  run $r pall $W/var/pall:$W/lib --no-baselines
  save
done
echo "bench done" | tee -a $S
P="$W/bin/gpu_gemv_bench --shapes 8192x8192,8192x28672,16384x16384 --batches 1,2,4,8,16,32 --formats e4m3 --modes row --paths native,software --kernels auto,wgmma --iters 100 --no-quantize --no-w8a8 --no-baselines"
for r in 1 2; do
  echo "== round $r base" >> $O/paths.log; $P >> $O/paths.log 2>&1
  echo "== round $r fold" >> $O/paths.log; LD_LIBRARY_PATH=$W/var/fold:$W/lib $P >> $O/paths.log 2>&1
done
save
( time LD_LIBRARY_PATH=$W/var/fold:$W/lib $W/bin/gpu_backend_test ) > $O/gpu_backend_test-fold.log 2>&1; echo "backend_test fold rc=$?" | tee -a $S
tail -2 $O/gpu_backend_test-fold.log
echo all done | tee -a $S
