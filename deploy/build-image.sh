#!/usr/bin/env bash
# Builds the CPU image of deploy/Dockerfile on a machine with no Docker
# engine, then proves that it serves. What it does:
#   1. apt-get installs buildah and debootstrap when they are missing;
#   2. debootstrap makes a Debian bookworm rootfs (minbase) from the Debian
#      mirror and imports it as the local image localhost/plume-bookworm
#      (once; later runs reuse it);
#   3. buildah bud builds deploy/Dockerfile with BUILD_IMAGE and BASE_IMAGE
#      both set to that image (chroot isolation, vfs storage);
#   4. checks the image's config (non-root user, ports, volume, healthcheck,
#      entrypoint), starts its entrypoint under `buildah run`, runs the
#      HEALTHCHECK command inside the container, and from the host: `plume
#      health`, an upload and a GEMV checked against numpy, and /metrics.
# Usage: deploy/build-image.sh [--gpu] [--no-run]
#
# With --gpu it builds the GPU image instead (localhost/plume:cuda), from
# CUDA binaries built on this machine rather than in the build stage:
#   1. takes plume-server and the CLI from PLUME_BUILD_DIR (default
#      build/release, built here with the release preset, which needs nvcc);
#      they must be a CUDA build (linking libplume_kernels_cuda.so and
#      libcudart.so.13). scripts/pack-for-gpu.sh --serving gathers them with
#      every library they link but glibc's and the driver's into an image
#      holding only /opt/plume (localhost/plume-payload:cuda);
#   2. derives the runtime base from localhost/plume-bookworm, standing in for
#      nvidia/cuda:*-runtime (which cannot be pulled here): slimmed as
#      debian:bookworm-slim is (no docs but the copyright files, no man pages
#      or locales), with the NVIDIA Container Toolkit variables that the
#      nvidia/cuda images set (NVIDIA_VISIBLE_DEVICES,
#      NVIDIA_DRIVER_CAPABILITIES, NVIDIA_REQUIRE_CUDA);
#   3. builds deploy/Dockerfile's `prebuilt` target on it: the same runtime
#      stage as the CPU image (user, ports, volume, healthcheck, entrypoint);
#      checks its config, that the CUDA runtime is in the image and that the
#      driver's libcuda is not (the container toolkit brings it);
#   4. exports its root filesystem and config as a tarball (rootfs/ and
#      image-config.json, xz -9) for deploy/run-gpu-image.sh;
#   5. runs deploy/run-gpu-image.sh on the tarball. On a machine with no GPU
#      that is with PLUME_EXPECT_BACKEND=cpu and stub driver libraries:
#      --backend=auto falls back to the CPU, the rest is exercised.
# Environment: PLUME_IMAGE (default localhost/plume:cpu; with --gpu
# localhost/plume:cuda), PLUME_IMAGE_CACHE (buildah storage and the rootfs;
# default /var/tmp/plume-image), DEBIAN_MIRROR, PLUME_CLI (host CLI; default:
# built with the release preset). With --gpu: PLUME_BUILD_DIR (a CUDA build
# to take the binaries from, used as it is), PLUME_IMAGE_ROOTFS (the tarball;
# default $PLUME_IMAGE_CACHE/plume-cuda-rootfs.tar.xz), PLUME_EXPECT_BACKEND,
# PLUME_DRIVER_LIBS_DIR and OUT (for deploy/run-gpu-image.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
gpu=0
run_check=1
for arg in "$@"; do
  case "$arg" in
    --gpu) gpu=1 ;;
    --no-run) run_check=0 ;;
    *) echo "usage: deploy/build-image.sh [--gpu] [--no-run]" >&2; exit 2 ;;
  esac
done
image=${PLUME_IMAGE:-localhost/plume:cpu}
[ "$gpu" = 1 ] && image=${PLUME_IMAGE:-localhost/plume:cuda}
cache=${PLUME_IMAGE_CACHE:-/var/tmp/plume-image}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
base=localhost/plume-bookworm:latest
start=$(date +%s)
say() { echo "== [$(( $(date +%s) - start ))s] $*"; }

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
need=()
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# Storage of its own, so that this never touches other buildah/podman state.
mkdir -p "$cache"
B=(buildah --root "$cache/storage" --runroot "$cache/run" --storage-driver vfs)

if ! "${B[@]}" inspect --type image "$base" >/dev/null 2>&1; then
  say "debootstrap bookworm (minbase) from $mirror"
  rm -rf "$cache/rootfs"
  $sudo debootstrap --variant=minbase bookworm "$cache/rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log"; exit 1; }
  rm -rf "$cache/rootfs/var/cache/apt/archives/"*.deb "$cache/rootfs/var/lib/apt/lists/"*
  say "importing the rootfs as $base"
  tar -C "$cache/rootfs" -cf "$cache/rootfs.tar" .
  ctr=$("${B[@]}" from scratch)
  "${B[@]}" add "$ctr" "$cache/rootfs.tar" / >/dev/null
  "${B[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash "$ctr"
  "${B[@]}" commit --quiet "$ctr" "$base" >/dev/null
  "${B[@]}" rm "$ctr" >/dev/null
  rm -rf "$cache/rootfs" "$cache/rootfs.tar"
fi

# The image config: non-root user, ports, volume, healthcheck, entrypoint;
# with the argument "gpu", the NVIDIA Container Toolkit variables too.
check_config() {
  "${B[@]}" inspect --type image "$image" >"$cache/inspect.json"
  /usr/bin/python3 - "$cache/inspect.json" "${1:-}" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))["Docker"]["config"]
problems = []
def want(ok, what):
    if not ok: problems.append(what)
want(c.get("User") == "plume:plume", f"User is {c.get('User')!r}, want plume:plume")
want(set((c.get("ExposedPorts") or {})) == {"50051/tcp", "9464/tcp"}, f"ExposedPorts {c.get('ExposedPorts')}")
want("/var/lib/plume" in (c.get("Volumes") or {}), f"Volumes {c.get('Volumes')}")
hc = (c.get("Healthcheck") or {}).get("Test") or []
want(hc[:2] == ["CMD", "plume"] and "health" in hc, f"Healthcheck {hc}")
want(c.get("Entrypoint") == ["plume-entrypoint"], f"Entrypoint {c.get('Entrypoint')}")
want(any(e == "PLUME_STORE_DIR=/var/lib/plume" for e in c.get("Env") or []), "PLUME_STORE_DIR")
if sys.argv[2] == "gpu":
    env = dict(e.split("=", 1) for e in c.get("Env") or [])
    want(env.get("NVIDIA_VISIBLE_DEVICES") == "all", f"NVIDIA_VISIBLE_DEVICES {env.get('NVIDIA_VISIBLE_DEVICES')}")
    want({"compute", "utility"} <= set(env.get("NVIDIA_DRIVER_CAPABILITIES", "").split(",")),
         f"NVIDIA_DRIVER_CAPABILITIES {env.get('NVIDIA_DRIVER_CAPABILITIES')}")
    want(env.get("NVIDIA_REQUIRE_CUDA", "").startswith("cuda>="), f"NVIDIA_REQUIRE_CUDA {env.get('NVIDIA_REQUIRE_CUDA')}")
if problems:
    sys.exit("image config: " + "; ".join(problems))
print("image config ok: user", c["User"], "ports", sorted(c["ExposedPorts"]), "healthcheck", hc)
PY
}

if [ "$gpu" = 1 ]; then
  # 1. The CUDA binaries and what they link.
  if [ -n "${PLUME_BUILD_DIR:-}" ]; then
    build=$(cd "$PLUME_BUILD_DIR" && pwd)
  else
    build="$root/build/release"
    say "building plume-server and the CLI with the release preset in $build (CUDA kernels for every default architecture: long on a small machine)"
    (cd "$root" && . scripts/env.sh &&
     { command -v nvcc >/dev/null || { echo "no nvcc: the release preset would build no CUDA kernels (set PLUME_BUILD_DIR to a CUDA build)" >&2; exit 1; }; } &&
     cmake --preset release >/dev/null && cmake --build --preset release --target plume-server plume_cli)
  fi
  server_bin="$build/server/main/plume-server"
  [ -x "$server_bin" ] && [ -x "$build/client/plume" ] || { echo "no server/main/plume-server or client/plume in $build" >&2; exit 1; }
  ldd "$server_bin" >"$cache/ldd-host.txt"
  grep -q 'libplume_kernels_cuda\.so => /' "$cache/ldd-host.txt" && grep -q 'libcudart\.so\.13 => /' "$cache/ldd-host.txt" ||
    { echo "$server_bin is not a CUDA build (it does not link libplume_kernels_cuda.so and libcudart.so.13)" >&2; exit 1; }
  cuda_built=$("$server_bin" --version | sed -n 's/^cuda: *built with \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
  [ -n "$cuda_built" ] || { echo "$server_bin --version names no CUDA version" >&2; exit 1; }
  archs=$(sed -n 's/^CMAKE_CUDA_ARCHITECTURES:[A-Z]*=//p' "$build/CMakeCache.txt" 2>/dev/null || true)
  say "binaries from $build: built with CUDA $cuda_built, kernels for CUDA architectures ${archs:-unknown} (sm_90a kernels apart)"
  payload="$cache/payload"
  "$root/scripts/pack-for-gpu.sh" --serving --out "$payload/opt/plume" "$build"
  ctr=$("${B[@]}" from scratch)
  "${B[@]}" copy "$ctr" "$payload/opt/plume" /opt/plume >/dev/null
  "${B[@]}" commit --quiet "$ctr" localhost/plume-payload:cuda >/dev/null
  "${B[@]}" rm "$ctr" >/dev/null

  # 2. The runtime base, named after what makes it (so a change rebuilds it).
  require="cuda>=$cuda_built"
  slim='set -e
cat >/etc/dpkg/dpkg.cfg.d/slim <<EOC
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOC
find /usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
find /usr/share/doc -mindepth 1 -type d -empty -delete
rm -rf /usr/share/man/* /usr/share/info/* /usr/share/locale/* /usr/share/lintian
rm -rf /var/cache/apt/* /var/lib/apt/lists/* /var/cache/debconf/*-old /var/lib/dpkg/*-old /var/log/*'
  base_id=$("${B[@]}" images --noheading --no-trunc --format '{{.ID}}' "$base")
  gpu_base="localhost/plume-bookworm-cuda:$(printf '%s\n' "$base_id" "$slim" "$require" | sha256sum | cut -c1-12)"
  if ! "${B[@]}" inspect --type image "$gpu_base" >/dev/null 2>&1; then
    say "making the runtime base $gpu_base (bookworm, slim, NVIDIA_REQUIRE_CUDA=$require)"
    ctr=$("${B[@]}" from --quiet "$base")
    "${B[@]}" run --isolation chroot "$ctr" -- sh -c "$slim"
    "${B[@]}" config --env NVIDIA_VISIBLE_DEVICES=all --env NVIDIA_DRIVER_CAPABILITIES=compute,utility \
      --env "NVIDIA_REQUIRE_CUDA=$require" "$ctr"
    "${B[@]}" commit --quiet "$ctr" "$gpu_base" >/dev/null
    "${B[@]}" rm "$ctr" >/dev/null
  fi

  # 3. The image: deploy/Dockerfile's runtime stage with /opt/plume from the payload.
  say "buildah bud -f deploy/Dockerfile --target prebuilt -t $image (BASE_IMAGE = $gpu_base, PAYLOAD = localhost/plume-payload:cuda)"
  "${B[@]}" bud --isolation chroot --format docker --layers --target prebuilt \
    --build-arg BUILD_IMAGE="$base" --build-arg BASE_IMAGE="$gpu_base" \
    --build-arg PAYLOAD=localhost/plume-payload:cuda \
    -f "$root/deploy/Dockerfile" -t "$image" "$root"
  say "built $image"
  "${B[@]}" images "$image"
  say "checking the image config"
  check_config gpu
  ctr=$("${B[@]}" from --quiet "$image")
  trap '"${B[@]}" umount "$ctr" >/dev/null 2>&1 || true; "${B[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
  mnt=$("${B[@]}" mount "$ctr")
  say "in the image: what plume-server links"
  ld_path=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["Docker"]["config"]
print(dict(e.split("=",1) for e in c["Env"]).get("LD_LIBRARY_PATH",""))' "$cache/inspect.json")
  env -i LD_LIBRARY_PATH="$ld_path" "$(command -v chroot)" "$mnt" ldd /opt/plume/bin/plume-server /opt/plume/bin/plume >"$cache/ldd-image.txt"
  grep -E 'libcudart|libplume_kernels|libcublas|libcuda\.' "$cache/ldd-image.txt" | sort -u
  if grep 'not found' "$cache/ldd-image.txt"; then echo "libraries missing from the image" >&2; exit 1; fi
  grep -q 'libcudart\.so\.13 => /opt/plume/lib/' "$cache/ldd-image.txt" &&
    grep -q 'libplume_kernels_cuda\.so => /opt/plume/lib/' "$cache/ldd-image.txt" ||
    { echo "the image's plume-server does not take libcudart and libplume_kernels_cuda from /opt/plume/lib" >&2; exit 1; }
  if grep -q libcublas "$cache/ldd-image.txt"; then echo "plume-server links cuBLAS, which the image does not hold" >&2; exit 1; fi
  found=$(find "$mnt" -xdev \( -name 'libcuda.so*' -o -name 'libnvidia-ml.so*' \) -print)
  [ -z "$found" ] || { echo "driver libraries in the image (the container toolkit provides them): $found" >&2; exit 1; }
  cmp -s "$payload/opt/plume/bin/plume-server" "$mnt/opt/plume/bin/plume-server" &&
    cmp -s "$payload/opt/plume/lib/libplume_kernels_cuda.so" "$mnt/opt/plume/lib/libplume_kernels_cuda.so" ||
    { echo "the image's binaries are not the ones just gathered (a stale build cache?)" >&2; exit 1; }
  echo "no libcuda/libnvidia-ml in the image; binaries are those of $build"

  # 4. The root filesystem and the config, for deploy/run-gpu-image.sh.
  rootfs_tar=${PLUME_IMAGE_ROOTFS:-$cache/plume-cuda-rootfs.tar.xz}
  mkdir -p "$(dirname "$rootfs_tar")"
  stage="$cache/export"
  rm -rf "$stage" && mkdir -p "$stage"
  python3 - "$cache/inspect.json" "$image" "$build" "${archs:-unknown}" "$require" "$server_bin" "$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)" >"$stage/image-config.json" <<'PY'
import json, subprocess, sys
i = json.load(open(sys.argv[1]))
version = subprocess.run([sys.argv[6], "--version"], capture_output=True, text=True).stdout.strip().splitlines()
json.dump({"image": sys.argv[2], "id": i.get("FromImageID"), "config": i["Docker"]["config"],
           "build": {"binaries_from": sys.argv[3], "cuda_architectures": sys.argv[4],
                     "requires": sys.argv[5], "plume_server": " / ".join(version),
                     "image_built_at_commit": sys.argv[7]}}, sys.stdout, indent=1)
PY
  say "the image's largest directories"
  (cd "$mnt" && du -xhd3 . 2>/dev/null | sort -h | tail -12)
  say "exporting the root filesystem to $rootfs_tar (xz -9)"
  tar --numeric-owner -cf "$stage/rootfs.tar" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    --transform='s,^\.,rootfs,S' -C "$stage" image-config.json -C "$mnt" .
  xz -9 -T1 -c "$stage/rootfs.tar" >"$rootfs_tar.tmp"
  mv "$rootfs_tar.tmp" "$rootfs_tar"
  say "rootfs: $(du -h "$stage/rootfs.tar" | cut -f1) uncompressed, $(du -h "$rootfs_tar" | cut -f1) as $rootfs_tar ($(stat -c %s "$rootfs_tar") bytes)"
  rm -rf "$stage"
  "${B[@]}" umount "$ctr" >/dev/null
  "${B[@]}" rm "$ctr" >/dev/null
  trap - EXIT
  [ "$run_check" = 1 ] || exit 0

  # 5. Run it as on a GPU machine (here: most likely without a GPU).
  expect=${PLUME_EXPECT_BACKEND:-}
  [ -n "$expect" ] || { if [ -e /dev/nvidiactl ]; then expect=cuda; else expect=cpu; fi; }
  driver_libs=${PLUME_DRIVER_LIBS_DIR:-}
  if [ "$expect" = cpu ] && [ -z "$driver_libs" ] && command -v cc >/dev/null; then
    # Stubs with the driver libraries' sonames and no symbols: the mounts and
    # ldconfig are exercised, and cudart, finding no driver in them, reports
    # no device.
    driver_libs="$cache/stub-driver"
    mkdir -p "$driver_libs"
    echo 'int plume_stub_driver_library;' >"$driver_libs/stub.c"
    for so in libcuda.so.1 libnvidia-ml.so.1; do
      cc -shared -fPIC -Wl,-soname,"$so" -o "$driver_libs/$so" "$driver_libs/stub.c"
    done
  fi
  say "deploy/run-gpu-image.sh $rootfs_tar (PLUME_EXPECT_BACKEND=$expect${driver_libs:+, driver libraries from $driver_libs})"
  PLUME_EXPECT_BACKEND=$expect PLUME_DRIVER_LIBS_DIR=$driver_libs "$root/deploy/run-gpu-image.sh" "$rootfs_tar"
  say "GPU image $image built, exported to $rootfs_tar and run: OK"
  exit 0
fi

say "buildah bud -f deploy/Dockerfile -t $image (BUILD_IMAGE = BASE_IMAGE = $base)"
# --format docker: the OCI image format has no HEALTHCHECK.
"${B[@]}" bud --isolation chroot --format docker --layers \
  --build-arg BUILD_IMAGE="$base" --build-arg BASE_IMAGE="$base" \
  --build-arg PLUME_COMMIT="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  -f "$root/deploy/Dockerfile" -t "$image" "$root"
say "built $image"
"${B[@]}" images "$image"
[ "$run_check" = 1 ] || exit 0

say "checking the image config"
check_config

cli=${PLUME_CLI:-}
if [ -z "$cli" ]; then
  say "building the host CLI (release preset)"
  (cd "$root" && . scripts/env.sh && cmake --preset release >/dev/null &&
   cmake --build --preset release --target plume_cli >/dev/null)
  cli="$root/build/release/client/plume"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_free() { python3 -c "import socket,sys; s=socket.socket(); s.bind(('0.0.0.0',$1))" 2>/dev/null; }
args=()
grpc_port=50051
metrics_port=9464
if port_free 50051 && port_free 9464; then
  say "ports 50051 and 9464 are free: starting the entrypoint with no arguments"
else
  grpc_port=$(free_port)
  metrics_port=$(free_port)
  say "50051 or 9464 is taken on this machine: passing --grpc_address=:$grpc_port --metrics_address=:$metrics_port"
  args=(--grpc_address=0.0.0.0:"$grpc_port" --metrics_address=0.0.0.0:"$metrics_port")
fi

ctr=$("${B[@]}" from --quiet "$image")
work=$(mktemp -d /tmp/plume-image-check.XXXXXX)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  "${B[@]}" rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT
say "in the container: id, store volume, entrypoint"
"${B[@]}" run --isolation chroot "$ctr" -- sh -c 'id; ls -ldn /var/lib/plume' | tee "$work/id.txt"
grep -q "uid=10001(plume) gid=10001(plume)" "$work/id.txt" || { echo "container does not run as plume (10001:10001)"; exit 1; }
grep -q " 10001 10001 " "$work/id.txt" || { echo "/var/lib/plume is not owned by plume (10001:10001)"; exit 1; }
"${B[@]}" run --isolation chroot --network host "$ctr" -- plume-entrypoint "${args[@]}" \
  >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 150); do
  "$cli" --server 127.0.0.1:"$grpc_port" --timeout 1 health >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; echo "entrypoint exited"; exit 1; }
  sleep 0.2
done
cat "$work/server.log"
say "host: plume health"
"$cli" --server 127.0.0.1:"$grpc_port" health
say "container: the HEALTHCHECK command"
"${B[@]}" run --isolation chroot --network host "$ctr" -- plume --server 127.0.0.1:"$grpc_port" --timeout 4 health
say "host: upload a random 96x1000 matrix (E4M3, row scales) and GEMV a batch of 3"
/usr/bin/python3 - "$work" <<'PY'
import sys, numpy as np
rng = np.random.default_rng(6)
np.save(f"{sys.argv[1]}/w.npy", rng.standard_normal((96, 1000), dtype=np.float32))
np.save(f"{sys.argv[1]}/x.npy", rng.standard_normal((3, 1000), dtype=np.float32))
PY
"$cli" --server 127.0.0.1:"$grpc_port" upload imagecheck "$work/w.npy" --format e4m3 --scale row
"$cli" --server 127.0.0.1:"$grpc_port" gemv imagecheck "$work/x.npy" -o "$work/y.npy"
/usr/bin/python3 - "$work" <<'PY'
import sys, numpy as np
d = sys.argv[1]
w, x, y = np.load(f"{d}/w.npy"), np.load(f"{d}/x.npy"), np.load(f"{d}/y.npy")
ref = x.astype(np.float64) @ w.astype(np.float64).T
err = np.linalg.norm(y - ref) / np.linalg.norm(ref)
print(f"GEMV shape {y.shape}, relative L2 error vs float64 (E4M3 quantization): {err:.4f}")
assert y.shape == (3, 96), y.shape
assert 0 < err < 0.06, err
PY
say "host: /metrics"
metrics=$(/usr/bin/python3 -c "import urllib.request,sys; print(urllib.request.urlopen('http://127.0.0.1:$metrics_port/metrics', timeout=5).read().decode())")
echo "$metrics" | grep -E '^plume_(vectors_total|resident_matrices)[{ ]'
echo "$metrics" | grep -qE '^plume_vectors_total\{matrix="imagecheck"\} 3$' || { echo "plume_vectors_total{matrix=\"imagecheck\"} is not 3"; exit 1; }
say "SIGTERM to plume-server in the container: graceful stop"
# buildah run does not pass SIGTERM on (it ends the container instead), so
# signal the server process, found among buildah run's descendants.
server_in() {
  local c
  for c in $(pgrep -P "$1"); do
    if [ "$(cat "/proc/$c/comm" 2>/dev/null)" = plume-server ]; then echo "$c"; return 0; fi
    server_in "$c" && return 0
  done
  return 1
}
inner=$(server_in "$server_pid") || { echo "no plume-server process under buildah run"; exit 1; }
kill -TERM "$inner"
rc=0
wait "$server_pid" || rc=$?
server_pid=""
tail -2 "$work/server.log"
grep -q "plume-server stopped" "$work/server.log" || { echo "no graceful stop after SIGTERM"; exit 1; }
[ "$rc" = 0 ] || { echo "buildah run exited $rc after SIGTERM"; exit 1; }
rm -rf "$work"
say "image $image builds, runs as plume, serves health, GEMV and metrics: OK"
