#!/usr/bin/env bash
# Gathers GPU test and bench binaries plus the shared libraries they need
# (all but glibc's and cuBLAS, which the GPU machine's CUDA provides) into .gpu-carry/, to be carried to a GPU machine, where
# scripts/gpu-test.sh runs them. Usage: scripts/pack-for-gpu.sh BUILD_DIR
set -euo pipefail
build=${1:?usage: scripts/pack-for-gpu.sh BUILD_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/.gpu-carry"
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
bins=()
for b in tests/gpu_codec_test tests/gpu_gemv_test tests/gpu_backend_test tests/gpu_attention_test tests/gpu_multi_test server/main/plume-server client/plume; do
  [ -x "$build/$b" ] && bins+=("$build/$b")
done
for extra in "$build"/bench/gpu_*; do
  [ -x "$extra" ] && bins+=("$extra")
done
[ ${#bins[@]} -gt 0 ] || { echo "no binaries under $build" >&2; exit 1; }
for b in "${bins[@]}"; do
  cp "$b" "$out/bin/"
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
