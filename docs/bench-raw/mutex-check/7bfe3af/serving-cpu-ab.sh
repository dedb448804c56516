#!/usr/bin/env bash
# Interleaved: for each round, each server binary: start, upload, stream c=1,8,32 and echo c=8,32.
B=/work/main/build/gpu90
for round in 1 2; do
  for v in before after; do
    rm -f ready.json
    ./plume-server.$v --grpc_address=127.0.0.1:0 --metrics_address=127.0.0.1:0 --backend=cpu --store_dir= --ready_file=ready.json > server-$v.log 2>&1 &
    sp=$!
    for i in $(seq 50); do [ -s ready.json ] && break; sleep 0.1; done
    A=127.0.0.1:$(python3 -c "import json; print(json.load(open('ready.json'))['grpc_port'])")
    $B/client/plume --server $A upload w w.npy --format e4m3 --scale row > /dev/null 2>&1
    echo "== round $round $v stream"
    $B/client/plume --server $A bench w --mode stream --concurrency 1,8,32 --dtype f16 --max-seconds 4 --window-ms 500 2>&1 | grep -E "^ +[0-9]" | awk '{print $1, $2, $4, $6}'
    echo "== round $round $v echo"
    $B/client/plume --server $A bench w --echo --mode stream --concurrency 1,8,32 --dtype f16 --max-seconds 4 --window-ms 500 2>&1 | grep -E "^ +[0-9]" | awk '{print $1, $2, $4, $6}'
    kill $sp; wait $sp 2>/dev/null
  done
done
