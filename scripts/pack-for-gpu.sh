#!/usr/bin/env bash
# Gathers GPU test and bench binaries plus the shared libraries they need
# (all but glibc's and cuBLAS, which the GPU machine's CUDA provides) into .gpu-carry/, to be carried to a GPU machine, where
# scripts/gpu-test.sh runs them.
# Usage: scripts/pack-for-gpu.sh [--serving] [--out DIR] BUILD_DIR
#   --serving  only plume-server and the plume CLI (what the image holds)
#   --out DIR  gather into DIR instead of .gpu-carry/ (emptied first)
set -euo pipefail
usage="usage: scripts/pack-for-gpu.sh [--serving] [--out DIR] BUILD_DIR"
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/.gpu-carry"
serving=0
while [ $# -gt 1 ]; do
  case "$1" in
    --serving) serving=1; shift ;;
    --out) out=${2:?$usage}; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
build=${1:?$usage}
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
wanted=(tests/gpu_codec_test tests/gpu_gemv_test tests/gpu_backend_test tests/gpu_attention_test tests/gpu_multi_test tests/gpu_delete_under_load_test server/main/plume-server client/plume)
[ "$serving" = 1 ] && wanted=(server/main/plume-server client/plume)
bins=()
for b in "${wanted[@]}"; do
  if [ -x "$build/$b" ]; then
    bins+=("$build/$b")
  elif [ "$serving" = 1 ]; then
    echo "no $build/$b" >&2; exit 1
  fi
done
if [ "$serving" = 0 ]; then
  for extra in "$build"/bench/gpu_*; do
    [ -x "$extra" ] && bins+=("$extra")
  done
fi
[ ${#bins[@]} -gt 0 ] || { echo "no binaries under $build" >&2; exit 1; }
for b in "${bins[@]}"; do
  cp "$b" "$out/bin/"
  # The image must hold every library but glibc's and the driver's.
  if [ "$serving" = 1 ] && ldd "$b" | grep -v 'libcuda\.so' | grep 'not found'; then
    echo "$b: libraries not found" >&2; exit 1
  fi
  ldd "$b" | awk '/=> \// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libcuda.so*) ;;
      # cuBLAS is hundreds of MB: the GPU machine's CUDA install provides it.
      libcublas.so*|libcublasLt.so*) ;;
      *) cp -nL "$lib" "$out/lib/" ;;
    esac
  done
done
strip --strip-debug "$out"/bin/* "$out"/lib/* 2>/dev/null || true
du -sh "$out"
