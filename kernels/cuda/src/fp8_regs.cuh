// Helpers shared by the CUDA kernels (GEMV, attention): FP8 codes decoded to
// FP16 pairs in registers, the m16n8k16 tensor-core product, typed stores,
// and the device's multiprocessor count and compute capability. Included by
// the .cu files only (internal linkage).
#pragma once

#include <cuda_fp16.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <type_traits>

#include "plume/cuda/check.h"

#include "plume/kernels/half.h"
#include "plume/kernels/types.h"

namespace plume::cuda {

// How W's codes become FP16 pairs. Outside the unnamed namespace: the
// attention kernels' translation units pass it to one another.
enum class Dec : uint8_t { kE4M3Soft, kE4M3Native, kE5M2Soft, kE5M2Native };

namespace {

// Calls pick(std::integral_constant<Dec, d>{}) with the decoder of a format
// and path as a constant and returns what it returns; R{} for a value that
// is not a format (the callers' kernel tables then fail the launch).
template <typename R, typename F>
R DispatchDec(Fp8Format format, bool native, F&& pick) {
  switch (format) {
    case Fp8Format::kE4M3:
      return native ? pick(std::integral_constant<Dec, Dec::kE4M3Native>{})
                    : pick(std::integral_constant<Dec, Dec::kE4M3Soft>{});
    case Fp8Format::kE5M2:
      return native ? pick(std::integral_constant<Dec, Dec::kE5M2Native>{})
                    : pick(std::integral_constant<Dec, Dec::kE5M2Soft>{});
  }
  return R{};
}

// ------------------------------------------------------------------ decoding

__device__ __forceinline__ uint32_t Prmt(uint32_t a, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(0u), "r"(sel));
  return r;
}

// One 32-bit word of four codes (c0 in the low byte) to two FP16 pairs:
// lo = (c0, c1), hi = (c2, c3), each pair's first value in the low half.
template <Dec kDec>
__device__ __forceinline__ void DecodeWord(uint32_t w, uint32_t& lo, uint32_t& hi) {
  if constexpr (kDec == Dec::kE5M2Soft) {
    // An E5M2 code is the high byte of the FP16 with the same value.
    lo = __byte_perm(w, 0u, 0x1404);
    hi = __byte_perm(w, 0u, 0x3424);
  } else if constexpr (kDec == Dec::kE4M3Soft) {
    // Each code with its sign replicated into the next byte (prmt's sign
    // mode) is the code as a signed 16-bit number. Shifted left by 7 the
    // magnitude (exponent and mantissa) lands in FP16 bits 7..13 and the sign
    // in bit 15; clearing bit 14 leaves the code's value times 2^-8 as an
    // FP16, subnormals included. decode_factor scales it back. NaN codes read
    // as 480 * 2^-8; nan_rows fixes their rows.
    lo = (Prmt(w, 0x9180) << 7) & 0xBF80BF80u;
    hi = (Prmt(w, 0xB3A2) << 7) & 0xBF80BF80u;
  } else {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    constexpr bool kE4 = kDec == Dec::kE4M3Native;
    if constexpr (kE4) {
      asm("{\n .reg .b16 l, h;\n mov.b32 {l, h}, %2;\n cvt.rn.f16x2.e4m3x2 %0, l;\n"
          " cvt.rn.f16x2.e4m3x2 %1, h;\n}"
          : "=r"(lo), "=r"(hi) : "r"(w));
    } else {
      asm("{\n .reg .b16 l, h;\n mov.b32 {l, h}, %2;\n cvt.rn.f16x2.e5m2x2 %0, l;\n"
          " cvt.rn.f16x2.e5m2x2 %1, h;\n}"
          : "=r"(lo), "=r"(hi) : "r"(w));
    }
#else
    lo = hi = 0;  // never runs: the launcher refuses the native path before sm_89
#endif
  }
}

// d += A (16x16, FP16, row-major) * B (16x8, FP16, column-major), FP32.
__device__ __forceinline__ void Mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                    uint32_t a3, uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
  // sm_75: the k16 product as two k8 products.
  asm("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(b0));
  asm("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a2), "r"(a3), "r"(b1));
#endif
}

// The 8x8 FP16 matrix whose rows lane (g, t) holds as (row g, columns 2t,
// 2t + 1), transposed, in the same layout (movmatrix; sm_75+).
__device__ __forceinline__ uint32_t MovTrans(uint32_t x) {
  uint32_t r;
  asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(r) : "r"(x));
  return r;
}

// ------------------------------------------------------------ async copies

// The shared-memory address of a generic pointer into shared memory.
__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronous on sm_80+ (cp.async), zeros where
// !valid (no bytes are read then); a plain copy before sm_80.
__device__ __forceinline__ void CpAsync16(void* dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src),
               "r"(valid ? 16 : 0));
#else
  *static_cast<uint4*>(dst) = valid ? *static_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);
#endif
}

// 4 bytes global -> shared, as CpAsync16.
__device__ __forceinline__ void CpAsync4(void* dst, const void* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(src));
#else
  *static_cast<uint32_t*>(dst) = *static_cast<const uint32_t*>(src);
#endif
}

__device__ __forceinline__ void CpAsyncCommit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most kPending of this thread's committed groups are in flight.
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
}

// ------------------------------------------------------------------- output

__device__ __forceinline__ void Store(void* y, DType t, int64_t i, float v) {
  if (t == DType::kF32) {
    static_cast<float*>(y)[i] = v;
  } else if (t == DType::kF16) {
    static_cast<__half*>(y)[i] = __float2half_rn(v);
  } else {
    static_cast<uint16_t*>(y)[i] = FloatToBf16Bits(v);
  }
}

// True when one of the four E4M3 codes of w is a NaN code (all seven low
// bits set): the software E4M3 decode reads those as finite numbers.
__device__ __forceinline__ bool HasE4M3Nan(uint32_t w) {
  return (((w & 0x7f7f7f7fu) + 0x01010101u) & 0x80808080u) != 0;
}

// ----------------------------------------------------------------- device

struct DeviceInfo {
  int sms = 0;
  int cc = 0;          // major * 10 + minor
  int smem_optin = 0;  // shared memory a block may opt in to, bytes
};

cudaError_t GetDeviceInfo(int device, DeviceInfo* info) {
  static constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices][3];  // [0] = 0: unknown
  if (device >= 0 && device < kMaxDevices && cache[device][0].load(std::memory_order_acquire) != 0) {
    info->cc = cache[device][1].load(std::memory_order_relaxed);
    info->smem_optin = cache[device][2].load(std::memory_order_relaxed);
    info->sms = cache[device][0].load(std::memory_order_relaxed);
    return cudaSuccess;
  }
  int major = 0, minor = 0, sms = 0, optin = 0;
  PLUME_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  PLUME_CUDA_TRY(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  PLUME_CUDA_TRY(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  PLUME_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  info->sms = sms;
  info->cc = major * 10 + minor;
  info->smem_optin = optin;
  if (device >= 0 && device < kMaxDevices) {
    cache[device][1].store(info->cc, std::memory_order_relaxed);
    cache[device][2].store(optin, std::memory_order_relaxed);
    cache[device][0].store(sms, std::memory_order_release);
  }
  return cudaSuccess;
}

// Resident blocks per multiprocessor of a kernel launched with `threads`
// threads and `smem` bytes of dynamic shared memory, asked of the runtime once
// per (kernel, device); where static and dynamic shared memory together pass
// 48 KB, the kernel's dynamic shared memory limit is raised first. Lookups on
// the request path take no lock.
cudaError_t KernelBlocksPerSm(const void* fn, int threads, size_t smem, int device, int* out) {
  struct Entry {
    std::atomic<const void*> fn{nullptr};
    std::atomic<int> device{-1};
    std::atomic<int> blocks{0};
  };
  static constexpr int kMaxEntries = 256;
  static Entry table[kMaxEntries];
  static std::atomic<int> used{0};
  static std::mutex mu;  // writers only
  const int n = used.load(std::memory_order_acquire);
  for (int i = 0; i < n; ++i) {
    if (table[i].fn.load(std::memory_order_relaxed) == fn &&
        table[i].device.load(std::memory_order_relaxed) == device) {
      *out = table[i].blocks.load(std::memory_order_relaxed);
      return cudaSuccess;
    }
  }
  // A launch gets 48 KB of shared memory, static and dynamic together,
  // without opting in: the few-rows decode at head dim 128 takes 48 KB
  // dynamic plus the split merge's static word.
  cudaFuncAttributes attr{};
  PLUME_CUDA_TRY(cudaFuncGetAttributes(&attr, fn));
  if (smem + attr.sharedSizeBytes > 48 * 1024) {
    PLUME_CUDA_TRY(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  }
  int blocks = 0;
  PLUME_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, fn, threads, smem));
  blocks = blocks < 1 ? 1 : blocks;
  *out = blocks;
  std::lock_guard<std::mutex> lock(mu);
  const int i = used.load(std::memory_order_relaxed);
  if (i < kMaxEntries) {  // a full table only means asking the runtime again
    table[i].fn.store(fn, std::memory_order_relaxed);
    table[i].device.store(device, std::memory_order_relaxed);
    table[i].blocks.store(blocks, std::memory_order_relaxed);
    used.store(i + 1, std::memory_order_release);
  }
  return cudaSuccess;
}

// A kernel as its launcher runs it; fn nullptr where none serves.
struct KernelFit {
  const void* fn = nullptr;
  size_t smem = 0;  // dynamic shared memory, bytes
  int threads = 0;
};

// Whether `device` has compute capability 9.0 and runs, for every FP8
// decoder, the kernel pick(dec) gives (a KernelFit): it exists, its shared
// memory fits and a block is resident. The sm_90a kernels' availability.
template <class Pick>
bool Sm90RunsEveryDecoder(int device, Pick pick) {
  DeviceInfo info;
  if (GetDeviceInfo(device, &info) != cudaSuccess || info.cc != 90) return false;
  for (Dec dec : {Dec::kE4M3Soft, Dec::kE4M3Native, Dec::kE5M2Soft, Dec::kE5M2Native}) {
    const KernelFit f = pick(dec);
    int blocks = 0;
    if (f.fn == nullptr || f.smem > static_cast<size_t>(info.smem_optin) ||
        KernelBlocksPerSm(f.fn, f.threads, f.smem, device, &blocks) != cudaSuccess || blocks < 1) {
      return false;
    }
  }
  return true;
}

}  // namespace
}  // namespace plume::cuda
