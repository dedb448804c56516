#!/usr/bin/env bash
# Server CPU time per streamed GEMV (and per EchoStream item), before/after, interleaved.
B=/work/main/build/gpu90
tck=$(getconf CLK_TCK)
for round in 1 2 3; do
  for v in before after; do
    rm -f ready.json
    ./plume-server.$v --grpc_address=127.0.0.1:0 --metrics_address=127.0.0.1:0 --backend=cpu --store_dir= --ready_file=ready.json > server-$v.log 2>&1 &
    sp=$!
    for i in $(seq 50); do [ -s ready.json ] && break; sleep 0.1; done
    A=127.0.0.1:$(python3 -c "import json; print(json.load(open('ready.json'))['grpc_port'])")
    M=http://127.0.0.1:$(python3 -c "import json; print(json.load(open('ready.json'))['metrics_port'])")/metrics
    $B/client/plume --server $A upload w w.npy --format e4m3 --scale row > /dev/null 2>&1
    for mode in "" "--echo"; do
      for c in 1 8 32; do
        cpu0=$(awk '{print $14+$15}' /proc/$sp/stat)
        out=$($B/client/plume --server $A bench w $mode --mode stream --concurrency $c --dtype f16 --max-seconds 3 --window-ms 500 2>&1 | grep -E "^ +[0-9]" | tail -1)
        cpu1=$(awk '{print $14+$15}' /proc/$sp/stat)
        rps=$(echo "$out" | awk '{print $2}')
        n=$(curl -s $M | grep -E "^plume_requests_total\{code=\"OK\",method=\"$([ -n "$mode" ] && echo EchoStream || echo GemvStream)\"" | awk '{print $2}')
        echo "$round $v ${mode:-gemv} c=$c rps=$rps cpu_s=$(( (cpu1-cpu0) )) ticks total_items=$n"
      done
    done
    kill $sp; wait $sp 2>/dev/null
  done
done
