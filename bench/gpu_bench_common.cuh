// Pieces shared by the GPU benchmarks (gpu_gemv_bench, gpu_attention_bench):
// error checks, device fills of random data, the read-ceiling kernel and the
// CUDA-event timer (medians).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

namespace {

#define CHECK_CUDA(expr)                                                                   \
  do {                                                                                     \
    const cudaError_t e_ = (expr);                                                         \
    if (e_ != cudaSuccess) {                                                               \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr,                   \
                   cudaGetErrorString(e_));                                                \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)
// --------------------------------------------------------------- device fills

__device__ uint32_t Hash(uint64_t i, uint32_t seed) {
  uint64_t z = i * 0x9E3779B97F4A7C15ull + seed;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return static_cast<uint32_t>(z ^ (z >> 31));
}

// Random FP8 codes with no NaN or infinity (E4M3: low 7 bits != 0x7f;
// E5M2: exponent != 31).
__global__ void FillCodes(uint32_t* w, int64_t n, uint32_t seed, bool e4m3) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    uint32_t v = Hash(i, seed), out = 0;
    for (int b = 0; b < 4; ++b) {
      uint32_t c = (v >> (8 * b)) & 0xff;
      if (e4m3 ? (c & 0x7f) == 0x7f : (c & 0x7c) == 0x7c) c &= 0xb3;
      out |= c << (8 * b);
    }
    w[i] = out;
  }
}

__device__ float Uniform(uint64_t i, uint32_t seed) {
  return (Hash(i, seed) >> 8) * (1.0f / 16777216.0f) * 2.0f - 1.0f;  // [-1, 1)
}

__global__ void FillHalf(__half* p, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    p[i] = __float2half(Uniform(i, seed));
  }
}

__global__ void FillFloat(float* p, int64_t n, uint32_t seed, float lo) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    p[i] = lo + fabsf(Uniform(i, seed));
  }
}

// The read ceiling: every byte read once with 16-byte loads, four in flight
// per thread, a value kept so the loads can't be dropped.
__global__ void ReadKernel(const uint4* p, int64_t n, uint32_t* sink) {
  uint32_t acc = 0;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 a = __ldcs(p + i), b = __ldcs(p + i + stride), c = __ldcs(p + i + 2 * stride),
                d = __ldcs(p + i + 3 * stride);
    acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^
           d.z ^ d.w;
  }
  for (; i < n; i += stride) {
    const uint4 v = __ldcs(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) sink[0] = acc;
}

constexpr int kFillBlocks = 4096;

// ------------------------------------------------------------------ timing

struct Timer {
  cudaStream_t stream;
  std::vector<cudaEvent_t> ev;
  explicit Timer(cudaStream_t s, int iters) : stream(s), ev(2 * static_cast<size_t>(iters)) {
    for (auto& e : ev) CHECK_CUDA(cudaEventCreate(&e));
  }
  ~Timer() {
    for (auto& e : ev) cudaEventDestroy(e);
  }
  // Median microseconds of `iters` launches of fn(i), after warm-up.
  double Median(const std::function<void(int)>& fn) {
    const int iters = static_cast<int>(ev.size() / 2);
    for (int i = 0; i < 10; ++i) fn(i);
    for (int i = 0; i < iters; ++i) {
      CHECK_CUDA(cudaEventRecord(ev[2 * i], stream));
      fn(i);
      CHECK_CUDA(cudaEventRecord(ev[2 * i + 1], stream));
    }
    CHECK_CUDA(cudaStreamSynchronize(stream));
    CHECK_CUDA(cudaGetLastError());
    std::vector<float> ms(static_cast<size_t>(iters));
    for (int i = 0; i < iters; ++i) CHECK_CUDA(cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]));
    std::nth_element(ms.begin(), ms.begin() + iters / 2, ms.end());
    return ms[static_cast<size_t>(iters / 2)] * 1000.0;
  }
};

}  // namespace
