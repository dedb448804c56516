#!/usr/bin/env bash
# How fast an FP8 checkpoint tensor uploads pre-packed to the CPU backend over
# loopback: writes a ROWS x COLS F8_E4M3 safetensors file with a 128x128
# block scale tensor (weight_scale_inv, as DeepSeek-V3 ships), starts
# plume-server --backend=cpu (memory only, then with a durable store), and
# times `plume upload` of it (reading the file, packing, sending, the
# server's validation and copy; with a durable store also its write and
# fsync). Each is repeated REPEATS times. Prints GB/s of file bytes (codes),
# and beside it the CPU seconds the client and the server spent on it (user +
# system, from /usr/bin/time and /proc/PID/stat) and the 1-minute load
# average: on a shared machine the wall time alone says little.
# Usage: bench/run_fp8_upload_bench.sh BUILD_DIR [ROWS [COLS [REPEATS]]]
#   (default 32768 32768 3: a 1 GiB tensor)
set -euo pipefail
build=${1:?usage: bench/run_fp8_upload_bench.sh BUILD_DIR [ROWS [COLS [REPEATS]]]}
rows=${2:-32768}
cols=${3:-$rows}
repeats=${4:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
# Debian's python3 (numpy); the first python3 on PATH may lack it.
py=/usr/bin/python3
[ -x "$py" ] || py=python3
work=$(mktemp -d)
# pid 0 once no server runs: `kill 0` would signal this script's whole
# process group (a pipe it feeds, the shell that ran it).
trap '[ "$pid" -eq 0 ] || kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
pid=0
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "commit: $(git -C "$root" rev-parse --short HEAD)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(nproc) cores"
echo "command: bench/run_fp8_upload_bench.sh $build $rows $cols $repeats"
"$py" - "$work/ckpt.safetensors" "$rows" "$cols" <<'PY'
import json, struct, sys
import numpy as np
path, rows, cols = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(7)
codes = rng.integers(0, 256, size=(rows, cols), dtype=np.uint8)
codes[(codes & 0x7F) == 0x7F] = 0x3C  # no NaN codes
tiles = rng.uniform(1 / 256, 1 / 4, size=((rows + 127) // 128, (cols + 127) // 128)).astype(np.float32)
header = {"w.weight": {"dtype": "F8_E4M3", "shape": [rows, cols], "data_offsets": [0, codes.nbytes]},
          "w.weight_scale_inv": {"dtype": "F32", "shape": list(tiles.shape),
                                 "data_offsets": [codes.nbytes, codes.nbytes + tiles.nbytes]}}
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    f.write(codes.tobytes())
    f.write(tiles.tobytes())
PY
bytes=$((rows * cols))
for store in none disk; do
  rm -rf "$work/store" "$work/ready.json"
  flag=--store_dir=
  [ "$store" = disk ] && flag=--store_dir="$work/store"
  "$build/server/main/plume-server" --backend=cpu --grpc_address=127.0.0.1:0 \
    --metrics_address=127.0.0.1:0 "$flag" --ready_file="$work/ready.json" >"$work/server-$store.log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do [ -s "$work/ready.json" ] && break; sleep 0.1; done
  port=$("$py" -c "import json,sys; print(json.load(open(sys.argv[1]))['grpc_port'])" "$work/ready.json")
  for i in $(seq "$repeats"); do
    s0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    t0=$(date +%s.%N)
    /usr/bin/time -f "%U %S" -o "$work/time" "$build/client/plume" --server "127.0.0.1:$port" --timeout 600 \
      upload "w$i" "$work/ckpt.safetensors" --tensor w.weight >"$work/cli.log" 2>&1 || { cat "$work/cli.log"; exit 1; }
    t1=$(date +%s.%N)
    s1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    "$py" -c "import os, sys; s = float(sys.argv[2]) - float(sys.argv[1]); b = int(sys.argv[3])
u, k = (float(v) for v in open(sys.argv[6]).read().split()[-2:])
server = (int(sys.argv[8]) - int(sys.argv[7])) / os.sysconf('SC_CLK_TCK')
print(f'store={sys.argv[4]} run={sys.argv[5]} seconds={s:.3f} GB/s={b / s / 1e9:.2f} '
      f'client_cpu={u + k:.2f} server_cpu={server:.2f} load={os.getloadavg()[0]:.1f}')" \
      "$t0" "$t1" "$bytes" "$store" "$i" "$work/time" "$s0" "$s1"
    "$build/client/plume" --server "127.0.0.1:$port" delete "w$i" >/dev/null
  done
  kill -TERM "$pid"
  wait "$pid" || true
  pid=0
done
