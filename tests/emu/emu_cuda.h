// Host emulation of the device helpers of kernels/cuda/src/fp8_regs.cuh and
// of the CUDA built-ins the attention kernels use, so that their headers
// (kernels/cuda/src/attention_*.cuh, included after this one) compile and run
// on the CPU. It defines PLUME_CUDA_EMULATION, so attention_device.cuh leaves
// the device helpers and the shared memory macros to it. The kernels run: one fiber per CUDA thread on one OS thread, blocks one
// after another, scheduled round robin; __syncthreads and the warp-collective
// operations (shuffles, mma) are barriers at which a fiber yields until its
// block or warp has arrived. Deterministic, and fast even on a loaded
// machine. Shared memory is function statics (PLUME_SHARED: shared by the
// block's fibers) and g_dyn_smem (PLUME_DYNAMIC_SMEM). mma.sync m16n8k16 is
// emulated as a warp-collective product with the fragment layout of the PTX ISA ("Matrix
// Fragments for mma.m16n8k16 with floating point type"): A row g / g+8,
// columns 2t, 2t+1 (+8); B rows 2t, 2t+1 (+8), column g; C row g / g+8,
// columns 2t, 2t+1 (g = lane / 4, t = lane % 4). The native FP8 conversion is
// emulated with plume's FP8 decode; the software paths run the kernels' own
// bit tricks (prmt emulated). Test-only: tests/emu/attention_emu_test.cc.
#pragma once
#define PLUME_CUDA_EMULATION 1
// The toolkit's headers first: the keyword macros below would break them.
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <vector_types.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <functional>
#include <thread>
#include <vector>
#include <memory>
#include "plume/kernels/fp8.h"
#include "plume/kernels/half.h"
#include "plume/kernels/types.h"

#undef __global__
#undef __device__
#undef __forceinline__
#undef __launch_bounds__
#undef __align__
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

// Shared memory (attention_device.cuh's macros): a block's arrays are function
// statics, the dynamic shared memory one static buffer.
#define PLUME_SHARED static
#define PLUME_DYNAMIC_SMEM(name) __half* const name = g_dyn_smem

struct EmuDim { unsigned x = 0, y = 0, z = 0; };
inline EmuDim threadIdx, blockIdx;  // of the running fiber
inline EmuDim blockDim, gridDim;
inline __half g_dyn_smem[227 * 1024 / 2];  // dynamic shared memory: the most a block may opt into (227 KB)
inline uint32_t g_xchg[64][32][16];  // per warp, lane, words
// EmuLaunch runs a grid's blocks in order, or last to first when this is set
// (the block of a unit that finishes last changes with it).
inline bool g_emu_blocks_reversed = false;

// A barrier of `n` fibers: each arrival yields until the last one arrives.
struct EmuBarrier {
  int n = 0, arrived = 0;
  uint64_t generation = 0;
};
// Fibers switch by saving the callee-saved registers on their own stack and
// swapping stack pointers (x86-64 System V): no system call, unlike
// swapcontext, which sets the signal mask at every switch.
extern "C" void plume_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .weak plume_emu_switch
  .type plume_emu_switch, @function
plume_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size plume_emu_switch, .-plume_emu_switch
)");
inline void* g_sched_sp = nullptr;  // the scheduler's, while a fiber runs
inline void** g_cur_sp = nullptr;   // where the running fiber's is saved
inline void EmuYield() { plume_emu_switch(g_cur_sp, g_sched_sp); }
inline void EmuArrive(EmuBarrier& b) {
  const uint64_t gen = b.generation;
  if (++b.arrived == b.n) {
    b.arrived = 0;
    ++b.generation;
    return;
  }
  while (b.generation == gen) EmuYield();
}
inline EmuBarrier g_block_barrier;
inline EmuBarrier g_warp_barriers[64];
inline EmuBarrier g_group_barriers[16];  // per warp group of 128 threads (emu_sm90.h)
inline EmuBarrier g_named_barriers[16];  // bar.sync id, count: sized at first use (emu_sm90.h)
inline void __syncthreads() { EmuArrive(g_block_barrier); }
inline void WarpSync() { EmuArrive(g_warp_barriers[threadIdx.x / 32]); }
inline void __syncwarp() { WarpSync(); }
inline float __shfl_xor_sync(unsigned, float v, int o) {
  const int w = threadIdx.x / 32, l = threadIdx.x % 32;
  memcpy(&g_xchg[w][l][0], &v, 4);
  WarpSync();
  float r;
  memcpy(&r, &g_xchg[w][l ^ o][0], 4);
  WarpSync();
  return r;
}
inline int __shfl_sync(unsigned, int v, int src) {
  const int w = threadIdx.x / 32, l = threadIdx.x % 32;
  memcpy(&g_xchg[w][l][0], &v, 4);
  WarpSync();
  int r;
  memcpy(&r, &g_xchg[w][src & 31][0], 4);
  WarpSync();
  return r;
}
inline float __shfl_sync(unsigned, float v, int src) {
  const int w = threadIdx.x / 32, l = threadIdx.x % 32;
  memcpy(&g_xchg[w][l][0], &v, 4);
  WarpSync();
  float r;
  memcpy(&r, &g_xchg[w][src & 31][0], 4);
  WarpSync();
  return r;
}
template <class T> T __ldg(const T* p) { return *p; }
template <class T> T __ldcg(const T* p) { return *p; }
// One OS thread runs every fiber, and a fiber yields only at barriers: the
// atomics are plain read-modify-writes, and fences have nothing to order.
inline unsigned atomicAdd(unsigned* a, unsigned v) {
  const unsigned old = *a;
  *a = old + v;
  return old;
}
inline unsigned atomicExch(unsigned* a, unsigned v) {
  const unsigned old = *a;
  *a = v;
  return old;
}
inline void __threadfence() {}
inline int __all_sync(unsigned, int pred) {
  const int w = threadIdx.x / 32, l = threadIdx.x % 32;
  g_xchg[w][l][0] = pred != 0;
  WarpSync();
  int all = 1;
  for (int i = 0; i < 32; ++i) all &= g_xchg[w][i][0] != 0;
  WarpSync();
  return all;
}

using std::min;
using std::max;
inline uint32_t __byte_perm(uint32_t a, uint32_t b, uint32_t s) {
  uint8_t bytes[8];
  memcpy(bytes, &a, 4);
  memcpy(bytes + 4, &b, 4);
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= uint32_t(bytes[(s >> (4 * i)) & 7]) << (8 * i);
  return r;
}
inline __half EmuUshortAsHalf(unsigned short u) {
  __half_raw r;
  r.x = u;
  return __half(r);
}
#define __ushort_as_half EmuUshortAsHalf

namespace plume::cuda {
enum class Dec : uint8_t { kE4M3Soft, kE4M3Native, kE5M2Soft, kE5M2Native };
namespace {
// prmt with sign-replicate mode: selector nibble bit 3 set => replicate the sign of the byte.
inline uint32_t Prmt(uint32_t a, uint32_t sel) {
  uint8_t bytes[8] = {0};
  memcpy(bytes, &a, 4);
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t n = (sel >> (4 * i)) & 0xf;
    uint8_t b = bytes[n & 7];
    if (n & 8) b = (b & 0x80) ? 0xff : 0x00;
    r |= uint32_t(b) << (8 * i);
  }
  return r;
}
inline uint16_t CodeToHalfBits(uint8_t c, plume::Fp8Format f) {
  return plume::FloatToHalfBits(plume::fp8::Decode(c, f));
}
template <Dec kDec>
inline void DecodeWord(uint32_t w, uint32_t& lo, uint32_t& hi) {
  if constexpr (kDec == Dec::kE5M2Soft) {
    lo = __byte_perm(w, 0u, 0x1404);
    hi = __byte_perm(w, 0u, 0x3424);
  } else if constexpr (kDec == Dec::kE4M3Soft) {
    lo = (Prmt(w, 0x9180) << 7) & 0xBF80BF80u;
    hi = (Prmt(w, 0xB3A2) << 7) & 0xBF80BF80u;
  } else {
    const auto f = kDec == Dec::kE4M3Native ? plume::Fp8Format::kE4M3 : plume::Fp8Format::kE5M2;
    uint16_t h[4];
    for (int i = 0; i < 4; ++i) h[i] = CodeToHalfBits(uint8_t(w >> (8 * i)), f);
    lo = h[0] | uint32_t(h[1]) << 16;
    hi = h[2] | uint32_t(h[3]) << 16;
  }
}
inline float H2F(uint16_t h) { return plume::HalfBitsToFloat(h); }
// Warp-collective m16n8k16 (row.col) with the PTX fragment layout.
inline void Mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                uint32_t b1) {
  const int w = threadIdx.x / 32, l = threadIdx.x % 32;
  uint32_t* x = g_xchg[w][l];
  x[0] = a0; x[1] = a1; x[2] = a2; x[3] = a3; x[4] = b0; x[5] = b1;
  WarpSync();
  float A[16][16], B[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    const uint32_t* y = g_xchg[w][lane];
    auto put = [&](float (*M)[16], int r, int c, uint32_t v) { M[r][c] = H2F(v & 0xffff); M[r][c + 1] = H2F(v >> 16); };
    put(A, g, 2 * t, y[0]);
    put(A, g + 8, 2 * t, y[1]);
    put(A, g, 2 * t + 8, y[2]);
    put(A, g + 8, 2 * t + 8, y[3]);
    B[2 * t][g] = H2F(y[4] & 0xffff); B[2 * t + 1][g] = H2F(y[4] >> 16);
    B[2 * t + 8][g] = H2F(y[5] & 0xffff); B[2 * t + 9][g] = H2F(y[5] >> 16);
  }
  WarpSync();
  const int g = l >> 2, t = l & 3;
  for (int e = 0; e < 4; ++e) {
    const int r = g + (e >= 2 ? 8 : 0), c = 2 * t + (e & 1);
    double s = 0;
    for (int k = 0; k < 16; ++k) s += double(A[r][k]) * B[k][c];
    d[e] += float(s);
  }
}
// movmatrix.m8n8.trans.b16: lane (g, t) gets column g, rows 2t and 2t + 1.
inline uint32_t MovTrans(uint32_t x) {
  const int w = threadIdx.x / 32, l = threadIdx.x % 32;
  g_xchg[w][l][0] = x;
  WarpSync();
  const int g = l >> 2, t = l & 3;
  auto el = [&](int r, int c) { return (g_xchg[w][4 * r + c / 2][0] >> (16 * (c & 1))) & 0xffffu; };
  const uint32_t r = el(2 * t, g) | el(2 * t + 1, g) << 16;
  WarpSync();
  return r;
}
inline void Store(void* y, plume::DType t, int64_t i, float v) {
  if (t == plume::DType::kF32) static_cast<float*>(y)[i] = v;
  else if (t == plume::DType::kF16) static_cast<uint16_t*>(y)[i] = plume::FloatToHalfBits(v);
  else static_cast<uint16_t*>(y)[i] = plume::FloatToBf16Bits(v);
}
// cp.async: the copy happens at once (the kernels wait before reading anyway).
inline void CpAsync16(void* dst, const void* src, bool valid) {
  if (valid) memcpy(dst, src, 16);
  else memset(dst, 0, 16);
}
inline void CpAsync4(void* dst, const void* src) { memcpy(dst, src, 4); }
inline void CpAsyncCommit() {}
template <int kPending> inline void CpAsyncWait() {}
inline bool HasE4M3Nan(uint32_t w) { return (((w & 0x7f7f7f7fu) + 0x01010101u) & 0x80808080u) != 0; }
}  // namespace
}  // namespace plume::cuda

// Runs fn on a grid, one block at a time, one fiber per CUDA thread.
template <class F>
void EmuLaunch(unsigned gx, unsigned gy, unsigned threads, F fn) {
  constexpr size_t kStack = 256 * 1024;
  struct Fiber {
    void* sp = nullptr;
    std::vector<char> stack;
    bool done = false;
  };
  static std::vector<Fiber> fibers;  // reused: stacks are allocated once
  if (fibers.size() < threads) fibers.resize(threads);
  static std::function<void()> s_body;
  static Fiber* s_fiber;
  s_body = fn;
  gridDim = {gx, gy, 1};
  blockDim = {threads, 1, 1};
  for (unsigned i = 0; i < gx * gy; ++i) {
    const unsigned blk = g_emu_blocks_reversed ? gx * gy - 1 - i : i;
    const unsigned bx = blk % gx, by = blk / gx;
    g_block_barrier = EmuBarrier{static_cast<int>(threads)};
    for (unsigned w = 0; w < threads / 32; ++w) g_warp_barriers[w] = EmuBarrier{32};
    for (unsigned w = 0; w < threads / 128; ++w) g_group_barriers[w] = EmuBarrier{128};
    for (EmuBarrier& b : g_named_barriers) b = EmuBarrier{};
    // A new fiber's stack holds what plume_emu_switch pops: six registers,
    // then the entry as the return address, so that the entry starts as if
    // called (rsp % 16 == 8).
    static void (*const entry)() = [] {
      s_body();
      s_fiber->done = true;
      EmuYield();  // never resumed
    };
    for (unsigned t = 0; t < threads; ++t) {
      Fiber& f = fibers[t];
      f.stack.resize(kStack);
      f.done = false;
      const uintptr_t top = reinterpret_cast<uintptr_t>(f.stack.data() + kStack) & ~uintptr_t{15};
      void** sp = reinterpret_cast<void**>(top - 16);
      sp[0] = reinterpret_cast<void*>(entry);
      sp -= 6;
      for (int r = 0; r < 6; ++r) sp[r] = nullptr;
      f.sp = sp;
    }
    blockIdx = {bx, by, 0};
    for (bool running = true; running;) {
      running = false;
      for (unsigned t = 0; t < threads; ++t) {
        Fiber& f = fibers[t];
        if (f.done) continue;
        running = true;
        threadIdx = {t, 0, 0};
        s_fiber = &f;
        g_cur_sp = &f.sp;
        plume_emu_switch(&g_sched_sp, f.sp);
      }
    }
    // A named barrier left part-arrived had an arrival (bar.arrive) that no
    // wait took, or a wait that never came.
    for (int id = 0; id < 16; ++id) {
      EXPECT_EQ(g_named_barriers[id].arrived, 0) << "named barrier " << id << " left part-arrived, block " << blk;
    }
  }
}
