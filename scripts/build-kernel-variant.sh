#!/usr/bin/env bash
# Builds a measurement variant of the CUDA kernel library: gemv_wgmma.cu
# compiled with extra flags (e.g. -DPLUME_WGMMA_VARIANT=1, the pipeline with
# no math; -DPLUME_WGMMA_BLOCKS_N8=1; -DPLUME_WGMMA_MAX_STAGES=12) and linked
# with BUILD_DIR's other kernel objects into OUT/libplume_kernels_cuda.so.
# Carried beside .gpu-carry/lib and put first on LD_LIBRARY_PATH, it replaces
# the library for gpu_gemv_bench. Usage:
#   scripts/build-kernel-variant.sh BUILD_DIR OUT FLAGS...
set -euo pipefail
build=$(cd "${1:?usage: BUILD_DIR OUT FLAGS...}" && pwd)
mkdir -p "${2:?usage: BUILD_DIR OUT FLAGS...}"
out=$(cd "$2" && pwd)
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$build"
nvcc -forward-unknown-to-host-compiler -I"$root/kernels/cuda/include" -I"$root/kernels/include" \
  -O3 -DNDEBUG "$@" --generate-code=arch=compute_90a,code=[compute_90a,sm_90a] -Xcompiler=-fPIC \
  --expt-relaxed-constexpr -std=c++17 -x cu -c "$root/kernels/cuda/src/gemv_wgmma.cu" -o "$out/gemv_wgmma.o"
objs=$(ninja -t commands kernels/cuda/libplume_kernels_cuda.so | tail -1 | tr ' ' '\n' | grep '\.o$' | grep -v gemv_wgmma)
cudalib=$(dirname "$(command -v nvcc)")/../lib64
# shellcheck disable=SC2086
c++ -fPIC -O3 -shared -Wl,-soname,libplume_kernels_cuda.so -o "$out/libplume_kernels_cuda.so" \
  "$out/gemv_wgmma.o" $objs -L"$cudalib" -lcudart -lcudadevrt -lcudart_static -lrt -lpthread -ldl
strip --strip-debug "$out/libplume_kernels_cuda.so"
echo "built $out/libplume_kernels_cuda.so"
