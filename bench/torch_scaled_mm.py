"""cuBLASLt FP8 GEMM through PyTorch (torch._scaled_mm), the path most users
take, on the GEMV benchmark's shapes: E4M3 weights, tensor-wise scales, BF16
output. Weights rotate across copies (>= 1 GiB in all) so L2 can't hold them;
each call is timed with CUDA events and the median is printed.
Run on the GPU machine by bench/run_gpu_bench.sh."""
import json
import sys

import torch

SHAPES = [(4096, 4096), (8192, 8192), (16384, 16384), (28672, 8192), (8192, 28672)]
BATCHES = [1, 2, 4, 8, 16, 32, 64]
ITERS = int(sys.argv[1]) if len(sys.argv) > 1 else 200


def median_us(fn, iters):
    for i in range(10):
        fn(i)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        starts[i].record()
        fn(i)
        ends[i].record()
    torch.cuda.synchronize()
    ms = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    return ms[iters // 2] * 1000.0


def main():
    torch.manual_seed(0)
    dev = torch.device("cuda")
    out = []
    for rows, cols in SHAPES:
        nbytes = rows * cols
        copies = max(2, (1 << 30) // nbytes + 1)
        ws = [torch.randn(rows, cols, device=dev).to(torch.float8_e4m3fn) for _ in range(copies)]
        one = torch.ones((), device=dev)
        for b in BATCHES:
            # _scaled_mm needs every dimension to be a multiple of 16.
            n = max(16, (b + 15) // 16 * 16)
            x = torch.randn(n, cols, device=dev).to(torch.float8_e4m3fn)
            us = median_us(lambda i: torch._scaled_mm(x, ws[i % copies].t(), scale_a=one,
                                                       scale_b=one, out_dtype=torch.bfloat16),
                           ITERS)
            row = {"shape": f"{rows}x{cols}", "batch": b, "padded_batch": n,
                   "kernel": "torch._scaled_mm", "median_us": round(us, 3),
                   "gbps": round(nbytes / us / 1e3, 1)}
            out.append(row)
            print(f"  {row['shape']:<12} b={b:<3} torch-scaled-mm n={n:<3} {us:9.2f} us "
                  f"{row['gbps']:8.1f} GB/s", flush=True)
        del ws
        torch.cuda.empty_cache()
    return out


if __name__ == "__main__":
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    res = main()
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "results": res}, f, indent=1)
