#!/usr/bin/env bash
# The test command: installs dependencies, builds everything (the CUDA
# kernels and GPU tests too when nvcc is present), and runs every test that
# needs no GPU. GPU tests run on a GPU machine via scripts/gpu-test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
scripts/install-deps.sh
jobs=${PLUME_JOBS:-$(nproc)}
cmake --preset release
cmake --build --preset release -j "$jobs"
ctest --preset release -LE gpu -j "$jobs"
