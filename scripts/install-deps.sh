#!/usr/bin/env bash
# Installs plume's build and test dependencies from Debian (bookworm) with
# apt-get. Does nothing when they are all present already.
set -euo pipefail
pkgs=(
  build-essential cmake ninja-build pkg-config git curl ca-certificates
  libgrpc++-dev libgrpc-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev libcli11-dev libspdlog-dev nlohmann-json3-dev
)
# PLUME_DEPS=build (deploy/Dockerfile) installs only what building
# plume-server and the CLI needs; PLUME_DEPS=demo (scripts/demo.sh) adds
# numpy, which makes the demo's matrix and checks its answer; the default
# adds the tests', benchmarks' and deploy/ checks' tools.
case "${PLUME_DEPS:-all}" in
  build) ;;
  demo) pkgs+=(python3 python3-numpy) ;;
  *) pkgs+=(
  libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-numpy libopenblas0-pthread
  python3-grpcio python3-protobuf python3-pytest python3-tqdm  # the Python client and its tests,
  python3-venv python3-wheel  # which pip-install it into a venv
  openssl  # security tests make certificates at test time
  clang libclang-rt-14-dev  # libFuzzer targets (scripts/fuzz.sh) and the sanitizer builds
  lld  # their linker
  prometheus python3-yaml
  docker-compose  # deploy/compose.yaml is checked with Debian's docker-compose 1.29
) ;;
esac
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
