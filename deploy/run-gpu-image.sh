#!/usr/bin/env bash
# Runs the GPU image's root filesystem (exported by `deploy/build-image.sh
# --gpu`) on a GPU machine the way `docker run --gpus all IMAGE --backend=auto`
# runs the image, with no container engine, and proves that it serves on the
# GPU. As the NVIDIA Container Toolkit does, it makes the host driver's
# user-space libraries (libcuda.so.1, libnvidia-ml.so.1 and their helpers)
# visible inside the image, then:
#   1. unpacks the tarball (rootfs/ and image-config.json, the image's config)
#      into a temporary directory;
#   2. bind-mounts the driver libraries into the rootfs's lib dir and runs
#      ldconfig in it; binds /dev and /sys, mounts /proc;
#   3. chroots in as the image's user (10001) with the image's environment and
#      working directory, and starts the image's entrypoint with --backend=auto;
#   4. from outside the chroot, with the image's own CLI run by the image's
#      loader and libraries: waits for health SERVING, uploads a seeded
#      random matrix (numpy) and runs GEMV, compared with numpy (float64) and
#      with the CPU backend of the same image (rel. L2 <= 1e-5, as
#      scripts/gpu-e2e.sh); runs the image's HEALTHCHECK command inside the
#      chroot; checks /metrics (plume_build_info, the device memory gauges,
#      NVML's utilization gauge), the server log (the backend it picked) and
#      the store volume; stops the server with SIGTERM (graceful stop).
# It prints PASS or FAIL and exits non-zero on any failure. Mounts are undone
# and the temporary directory removed on exit.
#
# Usage (as root): deploy/run-gpu-image.sh ROOTFS_TARBALL
# Environment:
#   PLUME_EXPECT_BACKEND  cuda (default) or cpu: the backend --backend=auto
#                         must pick. cpu is for a machine with no GPU, where
#                         the rest of the flow is still exercised.
#   PLUME_DRIVER_LIBS_DIR take the driver libraries from this directory
#                         rather than from `ldconfig -p` (tests use stubs).
#   OUT                   when set, the log, server logs and /metrics go there.
#   PLUME_PYTHON          a python3 with numpy (default: python3, /usr/bin/python3).
#   TMPDIR                where the rootfs is unpacked (default /tmp).
set -euo pipefail
tarball=${1:?usage: deploy/run-gpu-image.sh ROOTFS_TARBALL}
expect=${PLUME_EXPECT_BACKEND:-cuda}
case "$expect" in cuda|cpu) ;; *) echo "PLUME_EXPECT_BACKEND must be cuda or cpu, not '$expect'" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "run-gpu-image: needs root (chroot, mounts)" >&2; exit 2; }
[ -f "$tarball" ] || { echo "run-gpu-image: no file $tarball" >&2; exit 2; }
for tool in tar chroot mount umount; do
  command -v "$tool" >/dev/null || { echo "run-gpu-image: $tool is missing" >&2; exit 2; }
done
py=""
for p in ${PLUME_PYTHON:-} python3 /usr/bin/python3; do
  if "$p" -c 'import numpy' 2>/dev/null; then py=$p; break; fi
done
[ -n "$py" ] || { echo "run-gpu-image: no python3 with numpy (PLUME_PYTHON names one)" >&2; exit 2; }
tarball=$(cd "$(dirname "$tarball")" && pwd)/$(basename "$tarball")

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  exec > >(tee "$OUT/run-gpu-image.log") 2>&1
fi
start=$(date +%s)
say() { echo "== [$(( $(date +%s) - start ))s] $*"; }
fail() { echo "FAIL: $*"; exit 1; }

work=$(mktemp -d -p "${TMPDIR:-/tmp}" plume-gpu-image.XXXXXX)
root="$work/rootfs"
server_pid=""
ref_pid=""
stop_pid() {  # pid: SIGTERM, then SIGKILL after 15 s
  local p=$1
  kill -TERM "$p" 2>/dev/null || return 0
  for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
mounts_under() { awk -v r="$1/" 'index($2 "/", r) == 1 {print $2}' /proc/self/mounts | sort -r; }
cleanup() {
  local rc=$?
  set +e
  [ -n "$server_pid" ] && stop_pid "$server_pid"
  [ -n "$ref_pid" ] && stop_pid "$ref_pid"
  # Anything else still running in the rootfs (started here) goes too.
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ] && stop_pid "${p#/proc/}"
  done
  if [ -n "${OUT:-}" ]; then
    cp "$work"/*.log "$work"/metrics*.txt "$work/image-config.json" "$OUT/" 2>/dev/null
  fi
  local m
  for m in $(mounts_under "$root"); do umount "$m" 2>/dev/null || umount -l "$m"; done
  if [ -n "$(mounts_under "$root")" ]; then
    echo "run-gpu-image: still mounted under $root, not removing $work:"
    mounts_under "$root"
  else
    rm -rf --one-file-system "$work"
  fi
  if [ "$rc" -eq 0 ]; then echo "run-gpu-image: PASS"; else echo "run-gpu-image: FAIL (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "unpacking $tarball ($(du -h "$tarball" | cut -f1)) into $work"
if command -v xz >/dev/null || [[ "$tarball" != *.xz ]]; then
  tar -C "$work" --numeric-owner -xpaf "$tarball"
else  # no xz(1): Python's lzma reads it
  "$py" - "$tarball" "$work" <<'PY'
import sys, tarfile
with tarfile.open(sys.argv[1], "r:xz") as t:
    kw = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
    t.extractall(sys.argv[2], numeric_owner=True, **kw)
PY
fi
[ -d "$root" ] && [ -f "$work/image-config.json" ] || fail "$tarball has no rootfs/ and image-config.json (not made by deploy/build-image.sh --gpu)"
du -sh "$root"

# The image's config, as the engine would read it: user, env, working
# directory, entrypoint, cmd, healthcheck.
"$py" - "$work/image-config.json" "$root" >"$work/config.sh" <<'PY'
import json, shlex, sys
meta = json.load(open(sys.argv[1]))
c = meta["config"]
root = sys.argv[2]
def arr(name, xs): print(f"{name}=({' '.join(shlex.quote(x) for x in xs or [])})")
def val(name, x): print(f"{name}={shlex.quote(x or '')}")
user = c.get("User") or "root"
name, _, group = user.partition(":")
def lookup(path, key):
    if key.isdigit(): return key
    for line in open(f"{root}{path}"):
        f = line.split(":")
        if f[0] == key: return f[2]
    sys.exit(f"image-config.json: user/group {key!r} is not in the rootfs's {path}")
uid = lookup("/etc/passwd", name)
gid = lookup("/etc/group", group) if group else next(
    (l.split(":")[3] for l in open(f"{root}/etc/passwd") if l.split(":")[2] == uid), "0")
home = next((l.split(":")[5] for l in open(f"{root}/etc/passwd") if l.split(":")[2] == uid), "/")
val("img_name", meta.get("image"))
val("img_user", user); val("img_uid", uid); val("img_gid", gid); val("img_home", home)
arr("img_env", c.get("Env"))
val("img_workdir", c.get("WorkingDir") or "/")
arr("img_entrypoint", c.get("Entrypoint"))
arr("img_cmd", c.get("Cmd"))
test = (c.get("Healthcheck") or {}).get("Test") or []
if test[:1] == ["CMD-SHELL"]: test = ["/bin/sh", "-c", test[1]]
elif test[:1] == ["CMD"]: test = test[1:]
else: test = []
arr("img_healthcheck", test)
env = dict(e.split("=", 1) for e in c.get("Env") or [])
val("img_ld_library_path", env.get("LD_LIBRARY_PATH"))
val("img_store_dir", env.get("PLUME_STORE_DIR"))
val("img_require_cuda", env.get("NVIDIA_REQUIRE_CUDA"))
for k, v in (meta.get("build") or {}).items():
    print(f"echo {shlex.quote(f'  build {k}: {v}')}")
PY
# shellcheck disable=SC1091
. "$work/config.sh"
say "image $img_name: user $img_user ($img_uid:$img_gid), workdir $img_workdir, entrypoint ${img_entrypoint[*]} ${img_cmd[*]}"
printf '  env %s\n' "${img_env[@]}"
[ "$img_uid" != 0 ] || fail "the image runs as root"
[ ${#img_entrypoint[@]} -gt 0 ] || fail "the image has no entrypoint"

# The driver's user-space libraries, as the NVIDIA Container Toolkit mounts
# them (compute and utility capabilities): libcuda and libnvidia-ml are
# needed, the others (PTX JIT, NVVM, debugger) are mounted when the host has them.
driver_libs=()
if [ "$expect" = cuda ] || [ -n "${PLUME_DRIVER_LIBS_DIR:-}" ]; then
  want='^lib(cuda|cudadebugger|nvidia-ml|nvidia-ptxjitcompiler|nvidia-nvvm|nvidia-gpucomp)\.so\.[0-9]'
  if [ -n "${PLUME_DRIVER_LIBS_DIR:-}" ]; then
    mapfile -t driver_libs < <(find "$PLUME_DRIVER_LIBS_DIR" -maxdepth 1 -name 'lib*.so.*' | while read -r f; do
      basename "$f" | grep -qE "$want" && echo "$(basename "$f") $f"; done | sort -u -k1,1)
  else
    mapfile -t driver_libs < <("$(command -v ldconfig || echo /sbin/ldconfig)" -p | awk '/x86-64/ {print $1, $NF}' | grep -E "$want" | sort -u -k1,1)
    for n in libcuda.so.1 libnvidia-ml.so.1; do  # not in the cache: the usual place
      printf '%s\n' "${driver_libs[@]}" | grep -q "^$n " || [ ! -e "/usr/lib/x86_64-linux-gnu/$n" ] ||
        driver_libs+=("$n /usr/lib/x86_64-linux-gnu/$n")
    done
  fi
fi
have_lib() { printf '%s\n' "${driver_libs[@]}" | grep -q "^$1 "; }
if [ "$expect" = cuda ]; then
  have_lib libcuda.so.1 || fail "no libcuda.so.1 on this machine (ldconfig -p, /usr/lib/x86_64-linux-gnu): is the NVIDIA driver installed?"
  have_lib libnvidia-ml.so.1 || fail "no libnvidia-ml.so.1 on this machine"
  [ -e /dev/nvidiactl ] || fail "no /dev/nvidiactl: the NVIDIA kernel driver is not loaded"
  # The toolkit loads nvidia-uvm and makes its device nodes (load-kmods):
  # inside, as a non-root user, libcuda could not.
  if [ ! -e /dev/nvidia-uvm ] && command -v nvidia-modprobe >/dev/null; then
    nvidia-modprobe -u -c=0 || true
  fi
  [ -e /dev/nvidia-uvm ] || fail "no /dev/nvidia-uvm (the nvidia-uvm module is not loaded; nvidia-modprobe -u -c=0 does it)"
  ls -l /dev/nvidia* | sed 's/^/  /'
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=index,name,driver_version,compute_cap,memory.total --format=csv,noheader || true
  fi
  # The image's NVIDIA_REQUIRE_CUDA (e.g. cuda>=13.0), checked as the toolkit
  # does, against the CUDA version of the host's driver (cuDriverGetVersion).
  if [ -n "$img_require_cuda" ]; then
    libcuda=$(printf '%s\n' "${driver_libs[@]}" | awk '$1 == "libcuda.so.1" {print $2}')
    "$py" - "$libcuda" "$img_require_cuda" <<'PY' || exit 1
import ctypes, re, sys
v = ctypes.c_int(0)
if ctypes.CDLL(sys.argv[1]).cuDriverGetVersion(ctypes.byref(v)) != 0:
    sys.exit(f"FAIL: cuDriverGetVersion failed in {sys.argv[1]}")
have = (v.value // 1000, (v.value % 1000) // 10)
for clause in sys.argv[2].split():
    m = re.fullmatch(r"cuda>=(\d+)\.(\d+)", clause)
    if m and have < (int(m[1]), int(m[2])):
        sys.exit(f"FAIL: the driver supports CUDA {have[0]}.{have[1]}; the image requires {clause} "
                 f"(CUDA 13.x needs driver >= 580)")
print(f"driver supports CUDA {have[0]}.{have[1]}: meets NVIDIA_REQUIRE_CUDA={sys.argv[2]}")
PY
  fi
fi
libdir="$root/usr/lib/x86_64-linux-gnu"
[ -d "$libdir" ] || fail "the rootfs has no /usr/lib/x86_64-linux-gnu"
if [ -n "$(find "$root" -xdev \( -name 'libcuda.so*' -o -name 'libnvidia-ml.so*' \) -print -quit)" ]; then
  fail "the image itself holds a driver library (libcuda/libnvidia-ml): it must come from the host"
fi
if [ ${#driver_libs[@]} -gt 0 ]; then
  say "driver libraries into the rootfs (bind mounts, read-only)"
  for entry in "${driver_libs[@]}"; do
    soname=${entry%% *}
    real=$(readlink -f "${entry#* }")
    file=$(basename "$real")
    touch "$libdir/$file"
    if ! { mount --bind "$real" "$libdir/$file" && mount -o remount,bind,ro "$libdir/$file"; }; then
      fail "cannot bind-mount $real (needs root with mount rights)"
    fi
    [ "$file" = "$soname" ] || ln -sfn "$file" "$libdir/$soname"
    echo "  /usr/lib/x86_64-linux-gnu/$soname -> $real"
  done
  chroot "$root" /sbin/ldconfig
  chroot "$root" /sbin/ldconfig -p | grep -E 'lib(cuda|nvidia-ml)\.so\.1 ' ||
    fail "ldconfig in the rootfs does not list the driver libraries"
else
  say "no driver libraries to mount (PLUME_EXPECT_BACKEND=cpu on a machine without the NVIDIA driver)"
fi
say "binding /dev and /sys, mounting /proc"
mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev" || fail "cannot bind /dev into the rootfs"
mount --rbind /sys "$root/sys" && mount --make-rslave "$root/sys" || fail "cannot bind /sys into the rootfs"
mount -t proc proc "$root/proc" || fail "cannot mount /proc in the rootfs"

# Runs a command in the image as its user, with its environment and
# working directory (what `docker exec` would do).
# in_image CMD...: the command line that does it, in the array in_image.
# Every step execs the next, so started with & its pid is the command's.
chroot_bin=$(command -v chroot)
image_cmd() {
  in_image=(env -i "${img_env[@]}" HOME="$img_home" HOSTNAME="$(cat /proc/sys/kernel/hostname)"
    "$chroot_bin" --userspec="$img_uid:$img_gid" --groups="$img_gid" "$root"
    /bin/sh -c 'cd "$1" || exit 1; shift; exec "$@"' sh "$img_workdir" "$@")
}
in_image() { image_cmd "$@"; "${in_image[@]}"; }
say "in the image: id, store volume"
in_image sh -c 'id; ls -ldn "$PLUME_STORE_DIR"' | tee "$work/id.txt"
grep -q "uid=$img_uid" "$work/id.txt" || fail "the chroot does not run as uid $img_uid"
if [ -n "$img_store_dir" ]; then
  grep -q " $img_uid $img_gid " "$work/id.txt" || fail "$img_store_dir is not owned by $img_uid:$img_gid"
fi

port_free() { "$py" -c "import socket; s=socket.socket(); s.bind(('0.0.0.0',$1))" 2>/dev/null; }
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc_port=50051
metrics_port=9464
port_args=()
if ! { port_free 50051 && port_free 9464; }; then
  grpc_port=$(free_port)
  metrics_port=$(free_port)
  port_args=(--grpc_address=0.0.0.0:"$grpc_port" --metrics_address=0.0.0.0:"$metrics_port")
  say "50051 or 9464 is taken here: passing ${port_args[*]}"
fi
# `docker run IMAGE ARGS`: the entrypoint with ARGS in place of CMD.
say "starting ${img_entrypoint[*]} --backend=auto ${port_args[*]} as $img_user in the chroot"
image_cmd "${img_entrypoint[@]}" --backend=auto "${port_args[@]}"
"${in_image[@]}" >"$work/server.log" 2>&1 &
server_pid=$!
# The image's CLI, from outside the chroot: the image's own loader and
# libraries (its LD_LIBRARY_PATH, then its system lib dirs), so nothing of
# the host's user space but the kernel is involved.
loader="$root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
[ -f "$loader" ] && [ ! -L "$loader" ] || fail "no ld-linux-x86-64.so.2 in the rootfs's /usr/lib/x86_64-linux-gnu"
libpath=""
IFS=: read -r -a ldp <<<"$img_ld_library_path"
for d in "${ldp[@]}" /usr/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu; do
  [ -n "$d" ] && libpath="${libpath:+$libpath:}$root$d"
done
cli() { "$loader" --library-path "$libpath" "$root/opt/plume/bin/plume" "$@"; }
target="127.0.0.1:$grpc_port"
for _ in $(seq 300); do
  cli --server "$target" --timeout 1 health >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; fail "the entrypoint exited"; }
  sleep 0.2
done
cat "$work/server.log"
say "outside: plume health (the image's CLI)"
cli --server "$target" health | tee "$work/health.txt"
grep -q SERVING "$work/health.txt" || fail "health is not SERVING"
say "in the image: the HEALTHCHECK command (${img_healthcheck[*]})"
[ ${#img_healthcheck[@]} -gt 0 ] || fail "the image has no HEALTHCHECK"
in_image "${img_healthcheck[@]/127.0.0.1:50051/$target}" || fail "the HEALTHCHECK command failed"

say "server log: the backend --backend=auto picked (want $expect)"
grep -E "info backend " "$work/server.log" || fail "no backend line in the server log"
if [ "$expect" = cuda ]; then
  grep -q "backend cuda device" "$work/server.log" || fail "--backend=auto did not pick CUDA"
  grep -q "NVML: exporting plume_gpu_utilization_ratio" "$work/server.log" ||
    fail "no NVML in the server (libnvidia-ml.so.1 not visible in the image?)"
  maps=$(grep -oE '/[^ ]*lib(cuda|nvidia-ml)\.so[^ ]*' "/proc/$server_pid/maps" | sort -u)
  echo "$maps"
  # The paths as this (the host's) root sees them: the mounts in the rootfs.
  echo "$maps" | grep -qE "^($root)?/usr/lib/x86_64-linux-gnu/libcuda\.so" ||
    fail "plume-server has not loaded the mounted libcuda"
else
  grep -q "info backend cpu," "$work/server.log" || fail "--backend=auto did not fall back to the CPU"
fi

# A CPU-backend server of the same image, as scripts/gpu-e2e.sh compares
# against: in the chroot, no store, ports of its own (its ready file says).
image_cmd plume-server --backend=cpu --grpc_address=127.0.0.1:0 --metrics_address=127.0.0.1:0 \
  --store_dir= --ready_file=/tmp/plume-ref-ready.json
"${in_image[@]}" >"$work/server-cpu-ref.log" 2>&1 &
ref_pid=$!
for _ in $(seq 300); do
  [ -s "$root/tmp/plume-ref-ready.json" ] && break
  kill -0 "$ref_pid" 2>/dev/null || { cat "$work/server-cpu-ref.log"; fail "the CPU reference server exited"; }
  sleep 0.1
done
ref="127.0.0.1:$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["grpc_port"])' "$root/tmp/plume-ref-ready.json")"

say "outside: upload a seeded random 1000x3001 matrix (E4M3, row scales), GEMV 13 float32 and 13 float16 vectors"
"$py" - "$work" <<'PY'
import sys, numpy as np
d = sys.argv[1]
rng = np.random.default_rng(20260)
np.save(f"{d}/w.npy", rng.standard_normal((1000, 3001), dtype=np.float32))
np.save(f"{d}/x.npy", rng.standard_normal((13, 3001), dtype=np.float32))
np.save(f"{d}/x16.npy", rng.standard_normal((13, 3001)).astype(np.float16))
PY
for s in image ref; do
  addr=$target; [ "$s" = ref ] && addr=$ref
  cli --server "$addr" upload imagecheck "$work/w.npy" --format e4m3 --scale row >"$work/upload-$s.txt" 2>&1 ||
    { cat "$work/upload-$s.txt"; fail "upload to the $s server failed"; }
  cli --server "$addr" gemv imagecheck "$work/x.npy" -o "$work/y_$s.npy"
  cli --server "$addr" gemv imagecheck "$work/x16.npy" -o "$work/y16_$s.npy"
done
cli --server "$target" info imagecheck | grep -E "^(rows|cols|format|scale_mode|placement|backend):" || true
"$py" - "$work" "$expect" <<'PY'
import sys, numpy as np
d, expect = sys.argv[1], sys.argv[2]
w = np.load(f"{d}/w.npy").astype(np.float64)
ok = True
for suffix, xname in (("", "x"), ("16", "x16")):
    x = np.load(f"{d}/{xname}.npy").astype(np.float64)
    y = np.load(f"{d}/y{suffix}_image.npy").astype(np.float64)
    c = np.load(f"{d}/y{suffix}_ref.npy").astype(np.float64)
    ref = x @ w.T
    if y.shape != ref.shape or not np.isfinite(y).all():
        print(f"x{suffix or '32'}: shape {y.shape} (want {ref.shape}) or not finite: FAIL"); ok = False; continue
    q = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    b = np.linalg.norm(y - c) / np.linalg.norm(c)
    good = 0 < q < 0.06 and b <= 1e-5
    ok &= good
    print(f"x{suffix or '32'}: {expect} backend vs float64 numpy rel. L2 {q:.4f} (E4M3 quantization, bound 0.06); "
          f"vs the image's CPU backend {b:.3g} (bound 1e-5): {'ok' if good else 'FAIL'}")
sys.exit(0 if ok else 1)
PY

say "outside: /metrics"
"$py" -c "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())" \
  "http://127.0.0.1:$metrics_port/metrics" >"$work/metrics.txt"
"$py" - "$work/metrics.txt" "$expect" <<'PY'
import re, sys
text, expect = open(sys.argv[1]).read(), sys.argv[2]
series = {}
for line in text.splitlines():
    if line and not line.startswith("#"):
        name, _, value = line.rpartition(" ")
        series[name] = float(value)
problems = []
build = [n for n in series if n.startswith("plume_build_info{")]
print("\n".join(build))
labels = dict(re.findall(r'(\w+)="([^"]*)"', build[0])) if build else {}
if labels.get("backend") != "cpu,cuda" or labels.get("cuda", "none") == "none":
    problems.append(f"plume_build_info does not say a CUDA build: {labels}")
# Summed: newer servers label it by matrix.
vectors = sum(v for k, v in series.items() if k == "plume_vectors_total" or k.startswith("plume_vectors_total{"))
if vectors != 26:
    problems.append(f"plume_vectors_total sums to {vectors:g}, want 26")
mem = {k: v for k, v in series.items() if k.startswith("plume_device_memory_")}
util = {k: v for k, v in series.items() if k.startswith("plume_gpu_utilization_ratio")}
for k, v in sorted({**mem, **util}.items()):
    print(f"{k} {v:g}")
if expect == "cuda":
    for g in ("plume_device_memory_total_bytes", "plume_device_memory_used_bytes"):
        if not series.get(g, 0) > 0:
            problems.append(f"{g} is {series.get(g)}, want > 0")
    if not util:
        problems.append("no plume_gpu_utilization_ratio (NVML)")
elif mem:
    problems.append("device memory gauges on the CPU backend")
if problems:
    sys.exit("FAIL: /metrics: " + "; ".join(problems))
print("metrics ok")
PY

if [ -n "$img_store_dir" ]; then
  say "the store volume $img_store_dir after the upload (owned by the image's user)"
  find "$root$img_store_dir" -mindepth 1 -maxdepth 2 -printf '  %u:%g %s %P\n' | head -10
  [ -n "$(find "$root$img_store_dir" -mindepth 1 -uid "$img_uid" -print -quit)" ] ||
    fail "nothing written by uid $img_uid in $img_store_dir"
fi

say "SIGTERM to plume-server: graceful stop"
kill -TERM "$server_pid"
rc=0
wait "$server_pid" || rc=$?
server_pid=""
tail -2 "$work/server.log"
grep -q "plume-server stopped" "$work/server.log" || fail "no graceful stop after SIGTERM"
[ "$rc" = 0 ] || fail "plume-server exited $rc after SIGTERM"
say "the image serves with --backend=auto on the $expect backend: health, GEMV (vs numpy and the CPU backend), metrics, store, stop"
