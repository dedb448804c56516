# usage: decode_ab.py DIR BASE NEW [kind]: DIR holds decode-<lib>-r<k>.json (gpu_attention_bench
# --only decode --json) and sdpa-decode.json. Prints, per head dim, seq, batch and path: the
# median of the rounds' medians (us) of each library, NEW / BASE per round, NEW's share of the
# read ceiling measured in the same run, and SDPA's time / NEW's.
import collections, glob, json, os, re, statistics, sys
d, base, new = sys.argv[1:4]
kind = sys.argv[4] if len(sys.argv) > 4 else 'decode'
t = collections.defaultdict(dict)  # (D, seq, batch, path) -> {(lib, r): (us, bytes)}
ceil = {}
for f in glob.glob(os.path.join(d, 'decode-*-r*.json')):
    m = re.match(r'decode-(.+)-r(\d+)\.json', os.path.basename(f))
    lib, r = m.group(1), int(m.group(2))
    j = json.load(open(f))
    ceil[(lib, r)] = j['read_ceiling_gbps']
    for e in j['results']:
        if e['kind'] == kind:
            t[(e['head_dim'], e['seq'], e['batch'], e['path'])][(lib, r)] = (e['median_us'], e['kv_bytes'])
sd = {}
try:
    for e in json.load(open(os.path.join(d, 'sdpa-decode.json')))['results']:
        sd[(e['head_dim'], e['seq'], e['batch'])] = e['median_us']
except OSError:
    pass
rounds = sorted({r for v in t.values() for (_, r) in v})
print(f"| D | seq | batch | path | {base} µs | {new} µs | {new} ÷ {base}, per round | {new}: read ceiling | SDPA ÷ {new} |")
print("|---|---|---|---|---|---|---|---|---|")
for key in sorted(t):
    v = t[key]
    med = lambda lib: statistics.median([v[(lib, r)][0] for r in rounds if (lib, r) in v])
    ratios = " / ".join(f"{v[(new, r)][0] / v[(base, r)][0]:.2f}" for r in rounds if (new, r) in v and (base, r) in v)
    share = statistics.median([v[(new, r)][1] / (v[(new, r)][0] * 1e3) / ceil[(new, r)] for r in rounds if (new, r) in v])
    s = sd.get(key[:3])
    sdr = f"{s / med(new):.2f}" if s and key[3] == 'native' else ""
    print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {med(base):.1f} | {med(new):.1f} | {ratios} | {100 * share:.0f}% | {sdr} |")
