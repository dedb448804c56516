"""Turns gpu_gemv_bench's JSON (and torch_scaled_mm.py's) into the markdown
tables of bench/RESULTS-gpu.md, with the GEMV targets (the "Against the
targets" section there) checked against the same run. Usage: gpu_results_table.py BENCH.json[,MORE.json...] [TORCH.json] [F32.json]
(the BENCH files are one run's gpu_gemv_bench outputs, read in order: the
first that has a row wins)."""
import json
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def main():
    parts = [load(path) for path in sys.argv[1].split(",")]
    bench = parts[0]
    for extra in parts[1:]:
        bench["results"] = bench["results"] + extra["results"]
    torch = load(sys.argv[2])["results"] if len(sys.argv) > 2 and sys.argv[2] != "-" else []
    f32 = load(sys.argv[3])["results"] if len(sys.argv) > 3 else []
    rows = bench["results"]

    def get(shape, batch, kernel, variant=None):
        for r in rows + f32 + torch:
            if r["shape"] == shape and r["batch"] == batch and r["kernel"] == kernel and (
                    variant is None or r.get("variant", "").startswith(variant)):
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
    out.append("plume is the dispatcher's choice (auto: measured per shape and batch bucket on "
               "first use); the pre-Hopper path is the mma.sync kernel forced (`--kernels mma`), "
               "which is what sm_80/86/89 GPUs run.")
    out.append("")
    out.append("| shape | batch | read ceiling µs | plume native µs (kernel) | plume software µs | "
               "% of ceiling (native / sw) | pre-Hopper path µs | cuBLASLt FP8 µs | "
               "cuBLAS FP16 µs | plume vs cuBLASLt (time ratio) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    def kern(shape, b, variant):
        for r in rows:
            if r["shape"] == shape and r["batch"] == b and r["kernel"] == "plume" and \
                    r.get("variant", "").startswith(variant):
                return r["variant"].split("k=")[-1]
        return "?"
    for s in shapes:
        ceil = get(s, 0, "read")
        for b in batches:
            nat = get(s, b, "plume", "e4m3 row native x=f16")
            sw = get(s, b, "plume", "e4m3 row software x=f16")
            pre = get(s, b, "plume-mma", "e4m3 row native x=f16")
            lt = get(s, b, "cublasLt-fp8")
            h = get(s, b, "cublas-fp16")

            def fmt(v):
                return f"{v:.1f}" if v is not None else "n/a"
            pct = " / ".join(f"{100 * ceil / v:.0f}%" if v else "n/a" for v in (nat, sw))
            ratio = f"{nat / lt:.2f}" if (nat and lt) else "n/a"
            out.append(f"| {s} | {b} | {fmt(ceil)} | {fmt(nat)} ({kern(s, b, 'e4m3 row native x=f16')}) | "
                       f"{fmt(sw)} | {pct} | {fmt(pre)} | {fmt(lt)} | {fmt(h)} | {ratio} |")
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

    # Targets, from this run: medians, E4M3 ROW, F16 activations.
    out.append("")
    out.append("### Targets, from this run")
    out.append("")

    def line(text, ok):
        out.append(f"- {'MET' if ok else 'NOT MET'}: {text}")
    big = [s for s in shapes if s != "4096x4096"]
    for s in shapes:
        ceil = get(s, 0, "read")
        for b in batches:
            nat = get(s, b, "plume", "e4m3 row native x=f16")
            sw = get(s, b, "plume", "e4m3 row software x=f16")
            lt = get(s, b, "cublasLt-fp8")
            h = get(s, b, "cublas-fp16")
            if None in (nat, lt):
                continue
            if s in big and b <= 16:
                line(f"{s} batch {b}: ≥ 93% of the read ceiling ({100 * ceil / nat:.1f}%) and "
                     f"≤ 1.03x cuBLASLt's time ({nat / lt:.2f}x)", ceil / nat >= 0.93 and nat / lt <= 1.03)
            elif s in big:
                line(f"{s} batch {b}: ≤ 1.15x cuBLASLt's time ({nat / lt:.2f}x)", nat / lt <= 1.15)
            else:
                line(f"{s} batch {b}: ≤ 1.3x cuBLASLt's time ({nat / lt:.2f}x)", nat / lt <= 1.3)
            if h:
                line(f"{s} batch {b}: not slower than cuBLAS FP16 ({nat:.1f} vs {h:.1f} µs)", nat <= h)
            if sw:
                line(f"{s} batch {b}: software decode within 5% of native ({sw / nat:.3f}x)",
                     sw <= 1.05 * nat)
    s = "16384x16384"
    b1 = get(s, 1, "plume", "e4m3 row native x=f16")
    b64 = get(s, 64, "plume", "e4m3 row native x=f16")
    if b1 and b64:
        line(f"16384² batch 64 ≤ 1.15x plume's batch 1: {b64 / b1:.2f}x", b64 / b1 <= 1.15)
    pre16 = get(s, 16, "plume-mma", "e4m3 row native x=f16")
    ceil = get(s, 0, "read")
    if pre16 and ceil:
        line(f"pre-Hopper path ≥ 80% of the read ceiling at 16384² batch 16: {100 * ceil / pre16:.1f}%",
             ceil / pre16 >= 0.8)

    print("\n".join(out))


if __name__ == "__main__":
    main()
