#!/usr/bin/env bash
# Builds .gpu-carry for call.sh from a release build with sm_90a (default
# build/gpu90): gpu_attention_test, gpu_attention_bench and gpu_gemv_test with
# the libraries they load (lib/: the default kernels library, the Hopper
# decode off), the same library with it on (var/on) and on for every tile
# that is not a few-rows one (var/all: batch 4's 16 rows too), the prefill
# variants of call-pp.sh (var/pp: consumers taking turns; var/ro: O rescaled
# early; var/ppro: both), the kernels
# libraries xz-packed to stay under the 64 MiB carry limit, gpurun.sh and
# call.sh. Run from anywhere: docs/bench-raw/attention-decode-wgmma/make-carry.sh [BUILD_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
build=$(cd "${1:-$root/build/gpu90}" && pwd)
carry=$root/.gpu-carry
"$root/scripts/pack-for-gpu.sh" "$build"
keep=" gpu_attention_test gpu_attention_bench gpu_gemv_test "
for b in "$carry"/bin/*; do
  case "$keep" in *" $(basename "$b") "*) ;; *) rm -f "$b" ;; esac
done
needed=$(for b in "$carry"/bin/*; do LD_LIBRARY_PATH=$carry/lib ldd "$b" | awk '/=>/ {print $1}'; done | sort -u)
for lib in "$carry"/lib/*; do
  grep -qxF "$(basename "$lib")" <<< "$needed" || rm -f "$lib"
done
variant() {  # variant SOURCE NAME FLAGS...: var/NAME, SOURCE built with FLAGS
  PLUME_VARIANT_SRCS=$1 "$root/scripts/build-kernel-variant.sh" "$build" "$carry/var/$2" "${@:3}"
  rm -f "$carry/var/$2"/*.o
}
variant attention_dispatch.cu on -DPLUME_DECODE_WGMMA=1
variant attention_dispatch.cu all -DPLUME_DECODE_WGMMA=1 -DPLUME_DECODE_WGMMA_MIN_ROWS=0
variant attention_prefill_images.cu pp -DPLUME_PREFILL_PINGPONG=1
variant attention_prefill_images.cu ro -DPLUME_PREFILL_EARLY_RESCALE=1
variant attention_prefill_images.cu ppro -DPLUME_PREFILL_PINGPONG=1 -DPLUME_PREFILL_EARLY_RESCALE=1
xz -6 -T0 "$carry/lib/libplume_kernels_cuda.so" "$carry"/var/*/libplume_kernels_cuda.so
cp "$root/docs/bench-raw/attention-prefill-ring/gpurun.sh" "$root/docs/bench-raw/attention-decode-wgmma/call.sh" "$carry/"
cp "$root/docs/bench-raw/attention-prefill-pingpong/call.sh" "$carry/call-pp.sh"
du -sh "$carry"
