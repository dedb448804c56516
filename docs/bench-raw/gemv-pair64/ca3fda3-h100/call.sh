source "$(dirname "$0")/gpurun.sh"
cat $O/device.txt
S=$O/summary.txt
cp $W/bin/plume $W/before/plume
# 1. The committed GEMV library (ca3fda3's kernels): its test, then batch 32-64.
( time $W/bin/gpu_gemv_test ) > $O/gpu_gemv_test.log 2>&1; echo "gemv_test rc=$?" | tee -a $S; tail -2 $O/gpu_gemv_test.log
$W/bin/gpu_gemv_bench --shapes 8192x8192,4096x4096,8192x28672,16384x16384 --batches 16,32,64 --formats e4m3 --modes row --paths native --kernels auto,wgmma --iters 100 --no-quantize --no-w8a8 > $O/gemv-b64.log 2>&1
echo "gemv bench rc=$?" | tee -a $S
( time $W/bin/gpu_backend_test ) > $O/gpu_backend_test.log 2>&1; echo "backend_test rc=$?" | tee -a $S; tail -2 $O/gpu_backend_test.log
save
# 2. One backend call: Gemv against GemvAsync, spin 0 / 500, back to back and 200 us apart.
for r in 1 2 3; do
  for cfg in "0 0 500" "1 0 0" "1 0 500" "0 200 500" "1 200 0" "1 200 500"; do
    set -- $cfg
    echo "== round $r async=$1 gap=$2 spin=$3" >> $O/call.log
    timeout 120 $W/bin/gpu_call_bench --batches 1,16 --iters 2000 --attention-seq 0 --async $1 --gap-us $2 --spin-us $3 --lanes 4 >> $O/call.log 2>&1
  done
  save
done
echo "call bench done" | tee -a $S
# 3. Serving: before (the server of ca3fda3) / spin 0 / spin 500 (the default).
export PLUME_SERVING_POLICIES=adaptive PLUME_SERVING_REPEATS=1 PLUME_SERVING_MAX_SECONDS=2 PLUME_SERVING_WINDOW_MS=500 PLUME_SERVING_CONCURRENCY=1,8,64 PLUME_SERVING_UNARY_CONCURRENCY=1
for r in 1 2; do
  OUT=$O/serving-before-r$r PLUME_COMMIT=ca3fda3 PLUME_BIN=$W/before timeout 150 bash bench/run_serving_bench.sh > $O/serving-before-r$r.log 2>&1; echo "serving before r$r rc=$?" | tee -a $S
  save
  OUT=$O/serving-spin0-r$r PLUME_COMMIT=5a24b8a PLUME_BIN=$W/bin PLUME_SERVING_SERVER_FLAGS=--completion_spin_us=0 timeout 150 bash bench/run_serving_bench.sh > $O/serving-spin0-r$r.log 2>&1; echo "serving spin0 r$r rc=$?" | tee -a $S
  save
  OUT=$O/serving-after-r$r PLUME_COMMIT=5a24b8a PLUME_BIN=$W/bin timeout 150 bash bench/run_serving_bench.sh > $O/serving-after-r$r.log 2>&1; echo "serving after r$r rc=$?" | tee -a $S
  save
done
echo all done | tee -a $S
