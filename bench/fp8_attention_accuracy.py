#!/usr/bin/env python3
"""Would FP8 tensor-core products hold the prefill's accuracy bound?

Simulates, in float64 on the CPU, attention with the FP8 rounding that FP8
wgmma would add to the Hopper prefill: Q quantized to E4M3 (a scale per
block of Q rows or per row, amax / 448) for Q K^T, and P quantized to E4M3
(scaled by 1 or by 256 first) for P V. K and V are FP8 codes already (the
cache), so they are exact either way. Each variant's output is compared with
the exact attention of the same Q, K, V: rel. L2 error, against the
tensor-core prefill's bound of 2e-3. "fp16" rows are today's kernels (Q and
P rounded to FP16). Random normal data, fixed seed; causal and full; a
sharper softmax with Q x 3.

Usage: fp8_attention_accuracy.py [S ...]   (default: 1024 4096; D = 128)
Needs numpy.
"""
import sys

import numpy as np


def e4m3(x):
    """Round to nearest-even E4M3 (max 448, subnormal step 2^-9), saturating."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    e = np.maximum(np.floor(np.log2(np.maximum(a, 1e-300))), -6)  # subnormals share 2^-6's step
    step = 2.0 ** (e - 3)
    return np.sign(x) * np.minimum(np.round(a / step) * step, 448.0)  # np.round: half to even


def quantize_rows(q, block):
    """Q in E4M3 with one scale per `block` rows (amax / 448)."""
    out = np.empty_like(q)
    for r in range(0, q.shape[0], block):
        blk = q[r:r + block]
        sc = np.abs(blk).max() / 448.0
        out[r:r + block] = e4m3(blk / sc) * sc
    return out


def attention(q, k, v, causal, p_round):
    s = (q @ k.T) / np.sqrt(q.shape[1])
    if causal:
        s = np.where(np.tril(np.ones(s.shape, bool)), s, -np.inf)
    p = np.exp(s - s.max(1, keepdims=True))
    l = p.sum(1, keepdims=True)
    return (p_round(p) @ v) / l


def main():
    assert e4m3(448.0) == 448 and e4m3(1.0625) == 1.0 and e4m3(1.1875) == 1.25 and e4m3(2.0**-9) == 2.0**-9
    seqs = [int(a) for a in sys.argv[1:]] or [1024, 4096]
    d = 128
    rng = np.random.default_rng(1)
    fp16 = lambda x: x.astype(np.float16).astype(np.float64)
    worst = {}
    print("rel. L2 error against exact attention of the same FP8 K / V (bound: 2e-3)")
    for seq in seqs:
        k = e4m3(rng.standard_normal((seq, d)) * 16) / 16
        v = e4m3(rng.standard_normal((seq, d)) * 16) / 16
        for q_mul in (1.0, 3.0):
            q = rng.standard_normal((seq, d)) * q_mul
            for causal in (True, False):
                ref = attention(q, k, v, causal, lambda p: p)
                variants = {
                    "fp16 Q, fp16 P (today)": attention(fp16(q), k, v, causal, fp16),
                    "fp8 Q per 64 rows, fp16 P": attention(quantize_rows(q, 64), k, v, causal, fp16),
                    "fp8 Q per row, fp16 P": attention(quantize_rows(q, 1), k, v, causal, fp16),
                    "fp16 Q, fp8 P": attention(fp16(q), k, v, causal, e4m3),
                    "fp16 Q, fp8 P x 256": attention(fp16(q), k, v, causal, lambda p: e4m3(p * 256) / 256),
                    "fp8 Q per 64 rows, fp8 P x 256":
                        attention(quantize_rows(q, 64), k, v, causal, lambda p: e4m3(p * 256) / 256),
                }
                for name, out in variants.items():
                    err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
                    worst[name] = max(worst.get(name, 0.0), err)
                    print(f"S={seq} D={d} Qx{q_mul:g} {'causal' if causal else 'full  '} {name:32s} {err:.2e}",
                          flush=True)
    print("worst over the shapes:")
    for name, err in worst.items():
        print(f"  {name:32s} {err:.2e} {'holds' if err <= 2e-3 else 'over the bound'}")


if __name__ == "__main__":
    main()
