#!/usr/bin/env bash
# Builds the libFuzzer targets (the `fuzz` preset: clang, ASan + UBSan) and
# runs each for PLUME_FUZZ_SECONDS (default 20) seconds, as many at once as
# there are cores (PLUME_JOBS), starting from the
# committed seed corpus in fuzz/corpus/<fuzzer>/ (copied, so the tree is not
# changed). Fails on a crash, leak, sanitizer report or broken invariant in
# any of them; the reproducer is left in build/fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${PLUME_FUZZ_SECONDS:-20}
jobs=${PLUME_JOBS:-$(nproc)}
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "$jobs"
bin=build/fuzz/fuzz
work=$(mktemp -d /tmp/plume-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p build/fuzz/artifacts
fuzzers=(fuzz_validators fuzz_header_limits fuzz_store_file fuzz_npy fuzz_safetensors fuzz_fp8)
# Up to $jobs fuzzers at once, each for its full time on a core of its own.
run() {
  local f=$1 rc=0
  "$bin/$f" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="build/fuzz/artifacts/$f-" "$work/$f" 2>"$work/$f.log" || rc=$?
  echo "$rc" >"$work/$f.rc"
}
for f in "${fuzzers[@]}"; do
  mkdir -p "$work/$f"
  cp fuzz/corpus/$f/* "$work/$f/"
  echo "== $f for ${secs}s ($(ls fuzz/corpus/$f | wc -l) seeds)"
  run "$f" &
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
done
wait
for f in "${fuzzers[@]}"; do
  if [ "$(cat "$work/$f.rc")" != 0 ]; then
    tail -40 "$work/$f.log"
    echo "fuzz: $f FAILED (reproducer in build/fuzz/artifacts/)"
    exit 1
  fi
  echo "$f: $(grep -E "stat::number_of_executed_units|stat::new_units_added" "$work/$f.log" | tr '\n' ' ')"
done
echo "fuzz: all fuzzers ran ${secs}s each without a finding"
