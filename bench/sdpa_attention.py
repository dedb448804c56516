#!/usr/bin/env python3
"""PyTorch SDPA with FP16 K/V on the shapes of bench/gpu_attention_bench.cu.

Decode: q [batch, 32, 1, D] against K/V [1, 8, seq, D], D = 128, 64, 256,
batch 1, 4, 16, 64 (one cache, as
plume's batch shares its cache), GQA through enable_gqa when this PyTorch has
it, else K/V repeated to 32 heads (more bytes; the JSON says which). Prefill:
4-D q/k/v [1, 1, 8192, 512] and [1, 32, 4096, D] causal, D = 64, 128, 256. CUDA events,
medians. Usage: sdpa_attention.py [ITERS] [JSON] [decode|prefill] (the last: that half alone)
"""
import json
import statistics
import sys

import torch
import torch.nn.functional as F


def median_us(fn, iters):
    for _ in range(10):
        fn()
    times = []
    for _ in range(iters):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1000.0)
    return statistics.median(times)


def SupportsGqa():
    """Whether SDPA takes enable_gqa (PyTorch >= 2.5); the builtin has no
    inspectable signature, so ask it with a tiny call."""
    try:
        q = torch.zeros(1, 2, 1, 8, device="cuda", dtype=torch.float16)
        kv = torch.zeros(1, 1, 1, 8, device="cuda", dtype=torch.float16)
        F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
        return True
    except TypeError:
        return False


def main():
    iters = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    out = sys.argv[2] if len(sys.argv) > 2 else None
    only = sys.argv[3] if len(sys.argv) > 3 else ""
    dev = torch.device("cuda")
    gqa = SupportsGqa()
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, enable_gqa={gqa}")
    rows = []
    for dim in (128, 64, 256) if only != "prefill" else ():
        for seq in (1024, 8192, 32768, 131072):
            k = torch.randn(1, 8, seq, dim, device=dev, dtype=torch.float16)
            v = torch.randn_like(k)
            for batch in (1, 4, 16, 64):
                q = torch.randn(batch, 32, 1, dim, device=dev, dtype=torch.float16)
                if gqa:
                    kk, vv = k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)
                    fn = lambda: F.scaled_dot_product_attention(q, kk, vv, enable_gqa=True)
                    kv_bytes = 2 * 8 * seq * dim * 2
                else:
                    kk = k.repeat_interleave(4, dim=1).expand(batch, -1, -1, -1)
                    vv = v.repeat_interleave(4, dim=1).expand(batch, -1, -1, -1)
                    fn = lambda: F.scaled_dot_product_attention(q, kk, vv)
                    kv_bytes = 2 * 32 * seq * dim * 2
                try:
                    us = median_us(fn, iters)
                except RuntimeError as e:  # e.g. a kernel refusing stride-0 batches
                    print(f"  decode D={dim} seq={seq} b={batch}: {e}")
                    continue
                rows.append({"kind": "decode", "seq": seq, "batch": batch, "heads": 32, "kv_heads": 8,
                             "head_dim": dim, "q_len": 1, "causal": False, "gqa": gqa,
                             "median_us": us, "kv_bytes": kv_bytes})
                print(f"  sdpa decode D={dim:<3} seq={seq:<6} b={batch:<2} {us:10.2f} us "
                      f"{kv_bytes / us / 1e3:8.1f} GB/s")
            del k, v
    prefills = ((1, 8192, 512, False), (32, 4096, 64, True), (32, 4096, 128, True), (32, 4096, 256, True))
    for heads, seq, dim, causal in prefills if only != "decode" else ():
        q = torch.randn(1, heads, seq, dim, device=dev, dtype=torch.float16)
        k = torch.randn_like(q)
        v = torch.randn_like(q)
        us = median_us(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), iters)
        flops = 4.0 * heads * seq * seq * dim * (0.5 if causal else 1.0)
        rows.append({"kind": "prefill", "seq": seq, "batch": 1, "heads": heads, "kv_heads": heads,
                     "head_dim": dim, "q_len": seq, "causal": causal, "median_us": us, "flops": flops})
        print(f"  sdpa prefill heads={heads} S={seq} D={dim} {'causal' if causal else 'full'}"
              f" {us:10.2f} us {flops / us / 1e6:7.1f} TFLOP/s")
    if out:
        with open(out, "w") as f:
            json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(), "results": rows},
                      f, indent=1)


if __name__ == "__main__":
    main()
