"""Turns gpu_gemv_bench's JSON (and torch_scaled_mm.py's) into the markdown
tables of bench/RESULTS-gpu.md, with the issue's targets checked against the
same run. Usage: gpu_results_table.py BENCH.json [TORCH.json] [F32.json]"""
import json
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def main():
    bench = load(sys.argv[1])
    torch = load(sys.argv[2])["results"] if len(sys.argv) > 2 and sys.argv[2] != "-" else []
    f32 = load(sys.argv[3])["results"] if len(sys.argv) > 3 else []
    rows = bench["results"]

    def get(shape, batch, kernel, variant=None):
        for r in rows + f32 + torch:
            if r["shape"] == shape and r["batch"] == batch and r["kernel"] == kernel and (
                    variant is None or r.get("variant") == variant):
                return r["median_us"]
        return None

    shapes = []
    for r in rows:
        if r["shape"] not in shapes and r["shape"] != "4GiB":
            shapes.append(r["shape"])
    batches = sorted({r["batch"] for r in rows if r["kernel"] == "plume"})
    ceiling_4g = get("4GiB", 0, "read")
    out = []
    out.append(f"Device: {bench['device']}; medians of {bench['iters']} timed launches "
               "(CUDA events, weights rotating across >= 1 GiB of copies).")
    if ceiling_4g:
        out.append(f"Read ceiling, 4 GiB read once: {4 * 1024**3 / ceiling_4g / 1e3:.0f} GB/s.")
    out.append("")
    out.append("### plume vs the baselines (E4M3, ROW scales, F16 activations, F32 out)")
    out.append("")
    out.append("| shape | batch | read ceiling µs | plume native µs | plume software µs | "
               "% of ceiling (native / sw) | cuBLASLt FP8 µs | torch._scaled_mm µs | "
               "cuBLAS FP16 µs | cuBLAS FP32 µs | plume vs cuBLASLt |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in shapes:
        ceil = get(s, 0, "read")
        for b in batches:
            nat = get(s, b, "plume", "e4m3 row native x=f16")
            sw = get(s, b, "plume", "e4m3 row software x=f16")
            lt = get(s, b, "cublasLt-fp8")
            tm = get(s, b, "torch._scaled_mm")
            h = get(s, b, "cublas-fp16")
            f = get(s, b, "cublas-fp32")
            best = min(v for v in (nat, sw) if v is not None)

            def fmt(v):
                return f"{v:.1f}" if v is not None else "n/a"
            pct = " / ".join(f"{100 * ceil / v:.0f}%" if v else "n/a" for v in (nat, sw))
            out.append(f"| {s} | {b} | {fmt(ceil)} | {fmt(nat)} | {fmt(sw)} | {pct} | {fmt(lt)} | "
                       f"{fmt(tm)} | {fmt(h)} | {fmt(f)} | "
                       f"{(lt / best if lt else float('nan')):.2f}x |")
    out.append("")
    out.append("### Every format, scaling mode and decode path (batch 1 and 16)")
    out.append("")
    out.append("| shape | format | path | batch | none µs | tensor µs | row µs | block128 µs | "
               "row / tensor | block128 / tensor |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for s in shapes:
        for fm in ("e4m3", "e5m2"):
            for path in ("native", "software"):
                for b in (1, 16):
                    v = {m: get(s, b, "plume", f"{fm} {m} {path} x=f16")
                         for m in ("none", "tensor", "row", "block128")}
                    if v["tensor"] is None:
                        continue
                    cells = " | ".join(f"{v[m]:.1f}" if v[m] else "n/a"
                                       for m in ("none", "tensor", "row", "block128"))
                    out.append(f"| {s} | {fm} | {path} | {b} | {cells} | "
                               f"{v['row'] / v['tensor']:.3f} | {v['block128'] / v['tensor']:.3f} |")
    if f32:
        out.append("")
        out.append("### F32 activations (hi + lo FP16 split, E4M3 ROW)")
        out.append("")
        out.append("| shape | batch | native µs | software µs |")
        out.append("|---|---|---|---|")
        for r in f32:
            if r["kernel"] == "plume" and "native" in r["variant"]:
                sw = next((q["median_us"] for q in f32 if q["kernel"] == "plume" and
                           q["shape"] == r["shape"] and q["batch"] == r["batch"] and
                           "software" in q["variant"]), None)
                out.append(f"| {r['shape']} | {r['batch']} | {r['median_us']:.1f} | "
                           f"{sw:.1f} |" if sw else f"| {r['shape']} | {r['batch']} | "
                           f"{r['median_us']:.1f} | n/a |")

    quant = [r for r in rows if r["kernel"] == "quantize"]
    if quant and ceiling_4g:
        peak = 4 * 1024**3 / ceiling_4g / 1e3  # GB/s
        out.append("")
        out.append("### GPU quantize-and-pack (uploads): source read once + codes written, "
                   "against the 4 GiB read ceiling")
        out.append("")
        out.append("| shape | source | tensor µs (%) | row µs (%) | block128 µs (%) |")
        out.append("|---|---|---|---|---|")
        for sh in shapes:
            for src in ("f32", "f16", "bf16"):
                cells = []
                for m in ("tensor", "row", "block128"):
                    r = next((q for q in quant if q["shape"] == sh and
                              q["variant"] == f"e4m3 {m} from {src}"), None)
                    cells.append(f"{r['median_us']:.0f} ({100 * r['gbps'] / peak:.0f}%)" if r else "n/a")
                out.append(f"| {sh} | {src} | " + " | ".join(cells) + " |")

    # Targets.
    s = "16384x16384"
    ceil = get(s, 0, "read")
    nat1 = get(s, 1, "plume", "e4m3 row native x=f16")
    sw1 = get(s, 1, "plume", "e4m3 row software x=f16")
    best1 = min(nat1, sw1)
    lt1 = get(s, 1, "cublasLt-fp8")
    tm1 = get(s, 1, "torch._scaled_mm")
    out.append("")
    out.append("### Targets (issue 3), from this run")
    out.append("")

    def line(text, ok):
        out.append(f"- {'MET' if ok else 'NOT MET'}: {text}")
    line(f"16384², batch 1, E4M3 ROW ≥ 90% of the read ceiling: native {100 * ceil / nat1:.1f}%, "
         f"software {100 * ceil / sw1:.1f}% ({ceil:.1f} µs ceiling)", ceil / best1 >= 0.9)
    line(f"≥ 1.15x faster than cuBLASLt FP8 (tensor-wise) at 16384² batch 1: "
         f"{lt1 / best1:.2f}x ({lt1:.1f} µs vs {best1:.1f} µs)", lt1 / best1 >= 1.15)
    if tm1:
        line(f"same against cuBLASLt through PyTorch (torch._scaled_mm, batch padded to 16): "
             f"{tm1 / best1:.2f}x ({tm1:.1f} µs)", tm1 / best1 >= 1.15)
    for path in ("native", "software"):
        b1 = get(s, 1, "plume", f"e4m3 row {path} x=f16")
        b16 = get(s, 16, "plume", f"e4m3 row {path} x=f16")
        b64 = get(s, 64, "plume", f"e4m3 row {path} x=f16")
        line(f"{path}: batch 16 ≤ 1.15x batch 1: {b16 / b1:.2f}x", b16 / b1 <= 1.15)
        line(f"{path}: batch 64 ≤ 1.6x batch 1: {b64 / b1:.2f}x", b64 / b1 <= 1.6)
    line(f"software decode ≥ 85% of the ceiling at batch 1: {100 * ceil / sw1:.1f}%",
         ceil / sw1 >= 0.85)
    c4 = get("4096x4096", 0, "read")
    p4 = min(get("4096x4096", 1, "plume", f"e4m3 row {p} x=f16") for p in ("native", "software"))
    line(f"4096² batch 1 ≥ 65% of the ceiling: {100 * c4 / p4:.1f}% ({p4:.1f} µs vs {c4:.1f} µs)",
         c4 / p4 >= 0.65)
    worst = 0.0
    for fm in ("e4m3", "e5m2"):
        for path in ("native", "software"):
            t = get(s, 1, "plume", f"{fm} tensor {path} x=f16")
            for m in ("row", "block128"):
                v = get(s, 1, "plume", f"{fm} {m} {path} x=f16")
                if t and v:
                    worst = max(worst, v / t - 1)
    line(f"ROW and BLOCK128 cost ≤ 3% over TENSOR (16384², batch 1, worst of formats and paths): "
         f"{100 * worst:+.1f}%", worst <= 0.03)
    if quant and ceiling_4g:
        big = [q for q in quant if q["shape"] == "16384x16384"]
        best = max(big, key=lambda q: q["gbps"])
        worst = min(big, key=lambda q: q["gbps"])
        line(f"GPU quantization ≥ 70% of bandwidth (16384²): best {best['variant']} "
             f"{100 * best['gbps'] / peak:.0f}%, worst {worst['variant']} "
             f"{100 * worst['gbps'] / peak:.0f}%", worst["gbps"] / peak >= 0.7)
    print("\n".join(out))


if __name__ == "__main__":
    main()
