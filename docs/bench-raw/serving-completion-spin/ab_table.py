import re,sys,glob,collections,statistics
rows=collections.defaultdict(lambda: collections.defaultdict(list))
names=sys.argv[2:]
base=sys.argv[1]
for n in names:
    for d in sorted(glob.glob(f"{base}/{n}-r*/adaptive-r1/serving-table.md")):
        sec=None
        for l in open(d):
            if l.startswith('### Streaming'): sec='stream'
            elif l.startswith('### Unary'): sec='unary'
            elif l.startswith('### Targets'): sec=None
            m=re.match(r'\| (\d+) \| ([\d,]+) \| ([\d,]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|',l)
            if m and sec:
                c=int(m.group(1)); v=float(m.group(2).replace(',','')); e=float(m.group(3).replace(',',''))
                rows[(sec,c)][n].append(dict(vs=v,echo=e,ratio=float(m.group(4)),p50=float(m.group(5)),batch=float(m.group(8)),host=float(m.group(11))))
for k in sorted(rows):
    print(f"\n{k[0]} c={k[1]}")
    for n in names:
        v=rows[k][n]
        if not v: continue
        f=lambda key: " / ".join(f"{x[key]:.3g}" for x in v)
        print(f"  {n:8s} ratio {f('ratio'):22s} v/s {f('vs'):24s} p50 {f('p50'):22s} batch {f('batch'):16s} host {f('host')}")
