source "$(dirname "$0")/gpurun.sh"
cat $O/device.txt
S=$O/summary.txt
cp $W/bin/plume $W/before/plume
export PLUME_SERVING_POLICIES=adaptive PLUME_SERVING_REPEATS=1 PLUME_SERVING_MAX_SECONDS=2 PLUME_SERVING_WINDOW_MS=500 PLUME_SERVING_CONCURRENCY=1,8,64 PLUME_SERVING_UNARY_CONCURRENCY=1
sweep() {  # name commit bindir flags
  OUT=$O/$1-r$r PLUME_COMMIT=$2 PLUME_BIN=$3 PLUME_SERVING_SERVER_FLAGS="$4" timeout 120 bash bench/run_serving_bench.sh > $O/$1-r$r.log 2>&1
  echo "serving $1 r$r rc=$?" | tee -a $S
}
for r in 1 2 3; do
  sweep before ca3fda3 $W/before ""
  sweep spin0 2e3e268 $W/bin "--completion_spin_us=0"
  sweep spin500 2e3e268 $W/bin ""
  sweep yield 2e3e268 $W/bin "--cuda_sync=yield"
  sweep block 2e3e268 $W/bin "--cuda_sync=block"
  save
done
echo all done | tee -a $S
