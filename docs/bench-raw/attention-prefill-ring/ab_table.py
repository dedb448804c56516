import re,sys,glob,os,statistics,collections,json
# usage: pab.py DIR BASE OTHER... ; DIR holds prefill-<lib>-r<k>.log and sdpa-prefill.json
d,base,others=sys.argv[1],sys.argv[2],sys.argv[3:]
t=collections.defaultdict(dict)  # (D,path) -> {(lib,r): us}
for f in glob.glob(os.path.join(d,'prefill-*-r*.log')):
    m=re.match(r'prefill-(.+)-r(\d+)\.log',os.path.basename(f)); lib,r=m.group(1),int(m.group(2))
    for line in open(f):
        m=re.match(r'\s+prefill\s+(native|software)\s+seq=(\d+).*?D=(\d+).*?\s([\d.]+) us',line)
        if m: t[(int(m.group(3)),m.group(1))][(lib,r)]=float(m.group(4))
rounds=sorted({r for v in t.values() for (_,r) in v})
sd={}
try:
    for e in json.load(open(os.path.join(d,'sdpa-prefill.json')))['results']:
        if e['kind']=='prefill': sd[e['head_dim']]=round(e['median_us'],1)
except Exception as ex: pass
print("| D | path | "+base+" | "+" | ".join(f"{o} | ÷{base} per round" for o in others)+" | SDPA |")
print("|---|---|---|"+"---|---|"*len(others)+"---|")
for (D,p) in sorted(t):
    v=t[(D,p)]
    med=lambda lib: statistics.median([v[(lib,r)] for r in rounds if (lib,r) in v]) if any((lib,r) in v for r in rounds) else float('nan')
    row=f"| {D} | {p} | {med(base):.1f}"
    for o in others:
        rr=" / ".join(f"{v[(o,r)]/v[(base,r)]:.3f}" for r in rounds if (o,r) in v and (base,r) in v)
        row+=f" | {med(o):.1f} | {rr}"
    row+=f" | {sd.get(D,'')} |"
    print(row)
