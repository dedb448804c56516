source "$(dirname "$0")/gpurun.sh"
cat $O/device.txt
S=$O/summary.txt
. bench/gpu_bench_env.sh; export LD_LIBRARY_PATH=$W/lib:$LD_LIBRARY_PATH
# Which kernels cuBLASLt runs and how they use the machine, beside plume's, at 8192^2 batch 8 and 16384^2 batch 16.
for sh in "8192x8192 8" "16384x16384 16"; do
  set -- $sh
  timeout 150 ncu --set full --launch-skip 0 --launch-count 3 --kernel-name regex:'gemm|xmma|nvjet|cutlass|splitK|educe' $W/bin/gpu_gemv_bench --shapes $1 --batches $2 --formats e4m3 --modes row --paths native --kernels wgmma --iters 5 --no-quantize --no-w8a8 > $O/ncu-baselines-$1-b$2.txt 2>&1
  echo "ncu baselines $1 rc=$?" | tee -a $S; save
  timeout 120 ncu --set full --launch-skip 3 --launch-count 1 --kernel-name regex:WgmmaGemv $W/bin/gpu_gemv_bench --shapes $1 --batches $2 --formats e4m3 --modes row --paths native --kernels wgmma --iters 5 --no-quantize --no-w8a8 --no-baselines > $O/ncu-plume-$1-b$2.txt 2>&1
  echo "ncu plume $1 rc=$?" | tee -a $S; save
done
echo all done | tee -a $S
