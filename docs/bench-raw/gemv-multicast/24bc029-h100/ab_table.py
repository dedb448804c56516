import re,sys,collections,statistics
# usage: abn.py LOG BASE OTHER... ; prints per (shape,batch) the wgmma-forced and auto medians and ratios per round
log,basen,others=sys.argv[1],sys.argv[2],sys.argv[3:]
d=collections.defaultdict(dict)   # (shape,b,kind) -> {(lib,round): (us,k)}
bl={}
cur=None;rnd=None
for line in open(log):
    m=re.match(r'== round (\d+) (\S+)',line)
    if m: rnd,cur=int(m.group(1)),m.group(2); continue
    m=re.match(r'\s+(\d+x\d+)\s+b=(\d+)\s+(\S+)\s+(.*?)\s+([\d.]+) us',line)
    if not m: continue
    shape,b,what,desc,us=m.groups(); b=int(b)
    if b==0: continue
    if what in('plume','plume-wgmma'):
        k=re.search(r'k=(\w+)',desc).group(1)
        d[(shape,b,'auto' if what=='plume' else 'wgmma')][(cur,rnd)]=(float(us),k)
    elif what=='cublasLt-fp8': bl[(shape,b)]=float(us)
    elif what=='cublas-fp16' or what=='cublas': bl.setdefault(('f16',shape,b),float(us))
rounds=sorted({r for v in d.values() for (_,r) in v})
for kind in ('wgmma','auto'):
    print(f"\n### {kind}\n")
    print("| shape | batch | "+basen+" | "+" | ".join(f"{o} | {o}÷{basen} per round" for o in others)+" | cuBLASLt |")
    print("|---|---|---|"+"---|---|"*len(others)+"---|")
    for (s,b,kd) in d:
        if kd!=kind: continue
        v=d[(s,b,kd)]
        def med(lib): 
            xs=[v[(lib,r)][0] for r in rounds if (lib,r) in v]; return statistics.median(xs) if xs else float('nan')
        def ks(lib): return "/".join(v[(lib,r)][1] for r in rounds if (lib,r) in v)
        row=f"| {s} | {b} | {med(basen):.2f}"+(f" ({ks(basen)})" if kind=='auto' else "")
        for o in others:
            rat=" / ".join(f"{v[(o,r)][0]/v[(basen,r)][0]:.3f}" for r in rounds if (o,r) in v and (basen,r) in v)
            row+=f" | {med(o):.2f}"+(f" ({ks(o)})" if kind=='auto' else "")+f" | {rat}"
        c=bl.get((s,b)); row+=f" | {c:.2f} |" if c else " | |"
        print(row)
