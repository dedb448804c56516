// Host emulation of the Hopper building blocks of kernels/cuda/src/sm90.cuh
// and wgmma.cuh, on top of tests/emu/emu_cuda.h (include that first), so
// that the sm_90a kernels' headers run on the CPU:
//  - mbarriers: the arrival count, the transaction bytes and the phase live
//    in the barrier's own 8 bytes; a wait yields until the phase of the
//    given parity has completed.
//  - Bulk copies happen at once and complete their bytes on the barrier.
//  - Named barriers (bar.sync id, count) are barriers of `count` fibers;
//    bar.arrive counts one arrival and does not wait.
//  - wgmma (m64nNk16, FP16 in, FP32 accumulators) is computed when issued,
//    so fence / commit / wait do nothing. Shared-memory operands are read
//    through their descriptors as the hardware reads the K-major layout
//    without swizzle: element (row r, k) of a k16 step at start address A
//    is at A + (r / 8) * SBO + (k / 8) * LBO + (r % 8) * 16 + (k % 8) * 2
//    bytes, addresses counted from the start of the dynamic shared memory.
//    A descriptor asking for a swizzle fails the test. Register operands
//    and accumulators use the fragment layouts of the PTX ISA ("Register
//    Fragments and Shared Memory Matrix Layouts" for wgmma .m64nNk16): warp
//    w of the group holds rows 16w .. 16w + 15; lane (g, t) holds rows g and
//    g + 8 of those, columns 8i + 2t and 8i + 2t + 1 for each 8-column block
//    i (d[4i + e]: e = 0, 1 row g, e = 2, 3 row g + 8); A's four registers
//    are (row g, k 2t), (row g + 8, k 2t), (row g, k 2t + 8), (row g + 8,
//    k 2t + 8), two halves each.
// It cannot see what only hardware shows: the asynchrony of wgmma and of
// the copies (a register or stage touched too early), timing, bank
// conflicts. Test-only.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

#include "tests/emu/emu_cuda.h"

namespace plume::cuda {
namespace {

inline uint32_t SmemAddr(const void* p) {
  const auto* base = reinterpret_cast<const char*>(g_dyn_smem);
  const auto* q = static_cast<const char*>(p);
  EXPECT_TRUE(q >= base && q < base + sizeof(g_dyn_smem)) << "not in the dynamic shared memory";
  return static_cast<uint32_t>(q - base);
}

struct EmuMbar {
  int32_t tx;        // transaction bytes still to come
  uint16_t pending;  // arrivals still to come in this phase
  uint16_t count_phase;  // expected arrivals (15 bits), phase parity (top bit)
};
static_assert(sizeof(EmuMbar) == sizeof(uint64_t));

inline EmuMbar MbarLoad(const uint64_t* bar) {
  EmuMbar m;
  memcpy(&m, bar, sizeof(m));
  return m;
}
inline void MbarStore(uint64_t* bar, const EmuMbar& m) { memcpy(bar, &m, sizeof(m)); }
inline void MbarMaybeComplete(EmuMbar& m) {
  if (m.pending == 0 && m.tx == 0) {
    m.count_phase ^= 0x8000u;
    m.pending = m.count_phase & 0x7fffu;
  }
}

inline void MbarInit(uint64_t* bar, unsigned count) {
  MbarStore(bar, EmuMbar{0, static_cast<uint16_t>(count), static_cast<uint16_t>(count)});
}
inline void FenceMbarrierInit() {}
inline void MbarArrive(uint64_t* bar) {
  EmuMbar m = MbarLoad(bar);
  EXPECT_GT(m.pending, 0) << "an arrival on a barrier with none expected";
  --m.pending;
  MbarMaybeComplete(m);
  MbarStore(bar, m);
}
inline void MbarExpectTx(uint64_t* bar, unsigned bytes) {
  EmuMbar m = MbarLoad(bar);
  m.tx += static_cast<int32_t>(bytes);
  MbarStore(bar, m);
  MbarArrive(bar);
}
inline void MbarWait(uint64_t* bar, unsigned parity) {
  while (((MbarLoad(bar).count_phase >> 15) & 1u) == (parity & 1u)) EmuYield();
}
inline void BulkLoad(void* dst, const void* src, unsigned bytes, uint64_t* bar) {
  EXPECT_EQ(bytes % 16, 0u);
  memcpy(dst, src, bytes);
  EmuMbar m = MbarLoad(bar);
  m.tx -= static_cast<int32_t>(bytes);
  EXPECT_GE(m.tx, 0) << "more bytes landed than expected";
  MbarMaybeComplete(m);
  MbarStore(bar, m);
}
inline void FenceProxyAsync() {}
inline void NamedBarrier(int id, int threads) {
  EmuBarrier& b = g_named_barriers[id];
  if (b.n == 0) b.n = threads;
  EXPECT_EQ(b.n, threads) << "named barrier " << id << " used with two counts";
  EmuArrive(b);
}
inline void NamedBarrierArrive(int id, int threads) {
  EmuBarrier& b = g_named_barriers[id];
  if (b.n == 0) b.n = threads;
  EXPECT_EQ(b.n, threads) << "named barrier " << id << " used with two counts";
  if (++b.arrived == b.n) {  // the last arrival: release the waiters, wait for nothing
    b.arrived = 0;
    ++b.generation;
  }
}
template <int kRegs> inline void SetMaxRegsDec() {}
template <int kRegs> inline void SetMaxRegsInc() {}

inline void WgmmaFence() {}
inline void WgmmaCommit() {}
template <int kPending> inline void WgmmaWait() {}
template <int kM> inline void FenceOperands(float (&)[kM]) {}
template <int kS, int kM> inline void FenceOperands(uint32_t (&)[kS][kM]) {}

// Element (r, k) of a K-major shared-memory operand through its descriptor.
inline float EmuDescElement(uint64_t desc, int r, int k) {
  const uint32_t start = static_cast<uint32_t>(desc & 0x3FFFu) << 4;
  const uint32_t lbo = static_cast<uint32_t>((desc >> 16) & 0x3FFFu) << 4;
  const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFFu) << 4;
  const uint32_t byte = start + (r >> 3) * sbo + ((k >> 3) & 1) * lbo + (r & 7) * 16 + (k & 7) * 2;
  if (byte + 2 > sizeof(g_dyn_smem)) {
    ADD_FAILURE() << "an operand past the shared memory";
    return NAN;
  }
  uint16_t h;
  memcpy(&h, reinterpret_cast<const char*>(g_dyn_smem) + byte, 2);
  return H2F(h);
}
inline void EmuCheckDesc(uint64_t desc) { EXPECT_EQ(desc >> 62, 0u) << "a swizzled layout: not emulated"; }

// One warp group's operands of the wgmma in progress: A (64 x 16) and B
// (N x 16, K-major), filled by the group's first thread.
inline float g_group_a[16][64][16];
inline float g_group_b[16][256][16];

// d (+)= A * B^T over k16. `fill` (run by the group's first thread once every
// thread of the group has called) writes A and B.
template <int kN, class Fill>
inline void EmuWgmma(float (&d)[kN / 2], Fill fill, int accumulate) {
  static_assert(kN <= 256);
  const int grp = threadIdx.x / 128;
  EmuArrive(g_group_barriers[grp]);
  if (threadIdx.x % 128 == 0) fill(g_group_a[grp], g_group_b[grp]);
  EmuArrive(g_group_barriers[grp]);
  const int w = (threadIdx.x / 32) % 4, g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
  for (int i = 0; i < kN / 8; ++i) {
    for (int e = 0; e < 4; ++e) {
      const int r = 16 * w + g + (e >= 2 ? 8 : 0), n = 8 * i + 2 * t + (e & 1);
      float s = 0.0f;
      for (int k = 0; k < 16; ++k) s += g_group_a[grp][r][k] * g_group_b[grp][n][k];
      float& x = d[4 * i + e];
      x = accumulate ? x + s : s;
    }
  }
  EmuArrive(g_group_barriers[grp]);
}

inline void EmuFillFromDesc(float (*m)[16], int rows, uint64_t desc) {
  EmuCheckDesc(desc);
  for (int r = 0; r < rows; ++r)
    for (int k = 0; k < 16; ++k) m[r][k] = EmuDescElement(desc, r, k);
}

template <int kN>
struct Wgmma {
  // A from the warp group's registers (exchanged through g_xchg), B from
  // shared memory.
  static void Run(float (&d)[kN / 2], const uint32_t (&a)[4], uint64_t desc, int accumulate) {
    const int w = threadIdx.x / 32, l = threadIdx.x % 32, grp = threadIdx.x / 128;
    for (int j = 0; j < 4; ++j) g_xchg[w][l][j] = a[j];
    EmuWgmma<kN>(d, [&](float (*am)[16], float (*bm)[16]) {
      for (int r = 0; r < 64; ++r) {
        for (int k = 0; k < 16; ++k) {
          const int warp = 4 * grp + r / 16, g = r % 8, upper = (r % 16) >= 8;
          const uint32_t word = g_xchg[warp][4 * g + (k % 8) / 2][(upper ? 1 : 0) + (k >= 8 ? 2 : 0)];
          am[r][k] = H2F(static_cast<uint16_t>(word >> (16 * (k & 1))));
        }
      }
      EmuFillFromDesc(bm, kN, desc);
    }, accumulate);
  }
};

inline void WgmmaSs32(float (&d)[16], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  EmuWgmma<32>(d, [&](float (*am)[16], float (*bm)[16]) {
    EmuFillFromDesc(am, 64, desc_a);
    EmuFillFromDesc(bm, 32, desc_b);
  }, accumulate);
}
inline void WgmmaSs64(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  EmuWgmma<64>(d, [&](float (*am)[16], float (*bm)[16]) {
    EmuFillFromDesc(am, 64, desc_a);
    EmuFillFromDesc(bm, 64, desc_b);
  }, accumulate);
}
inline void WgmmaSs128(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  EmuWgmma<128>(d, [&](float (*am)[16], float (*bm)[16]) {
    EmuFillFromDesc(am, 64, desc_a);
    EmuFillFromDesc(bm, 128, desc_b);
  }, accumulate);
}

}  // namespace
}  // namespace plume::cuda
