#!/usr/bin/env bash
# Builds a measurement variant of the CUDA kernel library: the sources in
# PLUME_VARIANT_SRCS (default gemv_wgmma.cu; names in kernels/cuda/src)
# compiled for sm_90a with extra flags (e.g. -DPLUME_WGMMA_VARIANT=1, the
# pipeline with no math; -DPLUME_WGMMA_MAX_STAGES=12; with
# PLUME_VARIANT_SRCS="attention_decode_mma.cu attention_dispatch.cu",
# -DPLUME_MMA_STAGES_64=4) and linked with BUILD_DIR's other kernel objects
# into OUT/libplume_kernels_cuda.so. Carried beside .gpu-carry/lib and put
# first on LD_LIBRARY_PATH, it replaces the library for the benches. Usage:
#   [PLUME_VARIANT_SRCS="a.cu b.cu"] scripts/build-kernel-variant.sh BUILD_DIR OUT FLAGS...
set -euo pipefail
build=$(cd "${1:?usage: BUILD_DIR OUT FLAGS...}" && pwd)
mkdir -p "${2:?usage: BUILD_DIR OUT FLAGS...}"
out=$(cd "$2" && pwd)
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$build"
srcs=${PLUME_VARIANT_SRCS:-gemv_wgmma.cu}
objs=$(ninja -t commands kernels/cuda/libplume_kernels_cuda.so | tail -1 | tr ' ' '\n' | grep '\.o$')
mine=()
for src in $srcs; do
  nvcc -forward-unknown-to-host-compiler -I"$root/kernels/cuda/include" -I"$root/kernels/include" \
    -O3 -DNDEBUG "$@" --generate-code=arch=compute_90a,code=[compute_90a,sm_90a] -Xcompiler=-fPIC \
    --expt-relaxed-constexpr -std=c++17 -x cu -c "$root/kernels/cuda/src/$src" -o "$out/${src%.cu}.o"
  mine+=("$out/${src%.cu}.o")
  objs=$(echo "$objs" | grep -v "/${src}\.o$")
done
cudalib=$(dirname "$(command -v nvcc)")/../lib64
# shellcheck disable=SC2086
c++ -fPIC -O3 -shared -Wl,-soname,libplume_kernels_cuda.so -o "$out/libplume_kernels_cuda.so" \
  "${mine[@]}" $objs -L"$cudalib" -lcudart -lcudadevrt -lcudart_static -lrt -lpthread -ldl
strip --strip-debug "$out/libplume_kernels_cuda.so"
echo "built $out/libplume_kernels_cuda.so"
