#!/usr/bin/env bash
# The test command: installs dependencies, builds everything (the CUDA
# kernels and GPU tests too when nvcc is present) and runs every test that
# needs no GPU; then builds the CPU code again with AddressSanitizer and
# UBSan and runs the same tests there (PLUME_TEST_ASAN=0 skips that pass),
# and the batcher tests with ThreadSanitizer (PLUME_TEST_TSAN=0 skips).
# Then runs each fuzzer for a bounded time (scripts/fuzz.sh).
# GPU tests run on a GPU machine via scripts/gpu-test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
# Each stage's wall time, printed at the end (where the run's minutes go).
stages=()
stage() { stages+=("$(printf '%-22s %5d s' "$1" $((SECONDS - stage_start)))"); stage_start=$SECONDS; }
report() { printf 'test.sh: %s\n' "${stages[@]}" "total                  $SECONDS s"; }
trap report EXIT
stage_start=$SECONDS
scripts/install-deps.sh
jobs=${PLUME_JOBS:-$(nproc)}
stage "dependencies"
cmake --preset release
cmake --build --preset release -j "$jobs"
stage "release build"
ctest --preset release -LE gpu -j "$jobs"
stage "release tests"
if [ "${PLUME_TEST_ASAN:-1}" = 1 ]; then
  cmake --preset asan
  cmake --build --preset asan -j "$jobs"
  stage "asan build"
  ctest --preset asan -LE gpu -j "$jobs"
  stage "asan tests"
fi
# ThreadSanitizer over the batcher and server tests (the tsan preset builds
# just those; ctest label tsan; tests/tsan/README.md). PLUME_TEST_TSAN=0 skips.
if [ "${PLUME_TEST_TSAN:-1}" = 1 ]; then
  cmake --preset tsan
  cmake --build --preset tsan -j "$jobs"
  ctest --preset tsan -j "$jobs"
  stage "tsan build and tests"
fi
# libFuzzer targets (clang, ASan + UBSan), 20 s each over fuzz/corpus/
# (PLUME_TEST_FUZZ=0 skips; PLUME_FUZZ_SECONDS changes the time).
if [ "${PLUME_TEST_FUZZ:-1}" = 1 ]; then
  scripts/fuzz.sh
  stage "fuzzers"
fi
