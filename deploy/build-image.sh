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
# Usage: deploy/build-image.sh [--no-run]
# Environment: PLUME_IMAGE (default localhost/plume:cpu), PLUME_IMAGE_CACHE
# (buildah storage and the rootfs; default /var/tmp/plume-image),
# DEBIAN_MIRROR, PLUME_CLI (host CLI; default: built with the release preset).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
image=${PLUME_IMAGE:-localhost/plume:cpu}
cache=${PLUME_IMAGE_CACHE:-/var/tmp/plume-image}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
base=localhost/plume-bookworm:latest
run_check=1
[ "${1:-}" = "--no-run" ] && run_check=0
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
"${B[@]}" inspect --type image "$image" >"$cache/inspect.json"
/usr/bin/python3 - "$cache/inspect.json" <<'PY'
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
if problems:
    sys.exit("image config: " + "; ".join(problems))
print("image config ok: user", c["User"], "ports", sorted(c["ExposedPorts"]), "healthcheck", hc)
PY

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
