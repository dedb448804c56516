// The Hopper GEMV's data layouts, emulated on the CPU with the kernel's own
// index functions (kernels/cuda/src/gemv_wgmma_layout.h): W codes placed in a
// shared-memory tile as TMA's 128-byte swizzle puts them, read back as each
// lane of each warp reads them, decoded to A fragments; the activation image
// written as ImagePrepKernel writes it and read as wgmma reads a K-major,
// unswizzled B operand through a descriptor with kLeadingBytes /
// kStrideBytes; the accumulators placed by AccRow / AccCol. The emulated
// 64 x N x 128 product must equal the plain FP64 dot products, for both FP8
// formats and every N the kernel uses. What only hardware shows (the real
// instructions, the pipeline's timing) is tests/gpu/gpu_gemv_test.cc's job.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "kernels/cuda/src/gemv_wgmma_layout.h"
#include "plume/kernels/fp8.h"

namespace plume::cuda::wgmma_layout {
namespace {

TEST(WgmmaLayout, ChunkColIsAPermutationMatchingTheLaneWords) {
  std::set<int> seen;
  for (int s = 0; s < kSteps; ++s) {
    for (int kk = 0; kk < 16; ++kk) {
      const int col = ChunkCol(s, kk);
      ASSERT_GE(col, 0);
      ASSERT_LT(col, kChunk);
      seen.insert(col);
      // Lane t's word s holds codes 32t + 4s .. 32t + 4s + 3; the A fragment
      // gives lane t the k indices 2t, 2t+1 (codes 0, 1) and 2t+8, 2t+9 (2, 3).
      const int t = (kk & 7) >> 1;
      const int code_in_word = (kk >> 3) * 2 + (kk & 1);
      EXPECT_EQ(col, 32 * t + 4 * s + code_in_word);
    }
  }
  EXPECT_EQ(seen.size(), size_t(kChunk));
}

TEST(WgmmaLayout, SwizzleIsABijectionAndConflictFree) {
  std::set<int> seen;
  for (int r = 0; r < kTileRows; ++r) {
    for (int b = 0; b < kChunk; ++b) seen.insert(SwizzledOffset(r, b));
  }
  EXPECT_EQ(seen.size(), size_t(kTileBytes));
  EXPECT_EQ(*seen.rbegin(), kTileBytes - 1);
  // A 16-byte shared load is served a quarter warp (8 lanes) at a time: the
  // 8 lanes of each quarter must touch 8 distinct 16-byte bank groups.
  for (int w = 0; w < 8; ++w) {
    for (int half = 0; half < 2; ++half) {       // row g or g + 8
      for (int piece = 0; piece < 2; ++piece) {  // bytes 32t.. or 32t + 16..
        for (int quarter = 0; quarter < 4; ++quarter) {
          std::set<int> banks;
          for (int lane = quarter * 8; lane < quarter * 8 + 8; ++lane) {
            const int g = lane >> 2, t = lane & 3;
            const int r = (w >> 2) * 64 + AccRow(w & 3, g, 0) + 8 * half;
            banks.insert((SwizzledOffset(r, 32 * t + 16 * piece) % 128) / 16);
          }
          EXPECT_EQ(banks.size(), 8u) << "warp " << w << " quarter " << quarter;
        }
      }
    }
  }
}

// Paired stages: TMA writes two 64-row boxes (rows r0 .. r0 + 63 of chunks
// 2i and 2i + 1) at the slot's start and 8 KiB in, each swizzled from its own
// 1024-byte aligned destination; warp group h, reading the slot as rows
// 64h + r of a 128-row tile, must find row r0 + r of chunk PairChunk(i, h).
TEST(WgmmaLayout, PairedStageHalvesAreTheWarpGroupsChunks) {
  constexpr int kCols = 6 * kChunk;
  std::mt19937 rng(11);
  std::vector<uint8_t> w(size_t(kPairRows) * kCols);
  for (auto& c : w) c = static_cast<uint8_t>(rng());
  for (int i = 0; i < 3; ++i) {
    std::vector<uint8_t> slot(size_t(kTileBytes), 0xEE);
    for (int h = 0; h < 2; ++h) {
      const int chunk = PairChunk(i, h);
      for (int r = 0; r < kPairRows; ++r) {
        for (int b = 0; b < kChunk; ++b) {
          slot[size_t(h * kTileBytes / 2 + SwizzledOffset(r, b))] =
              w[size_t(r) * kCols + chunk * kChunk + b];
        }
      }
    }
    for (int h = 0; h < 2; ++h) {
      for (int r = 0; r < kPairRows; ++r) {
        for (int b = 0; b < kChunk; ++b) {
          ASSERT_EQ(slot[size_t(SwizzledOffset(h * 64 + r, b))],
                    w[size_t(r) * kCols + PairChunk(i, h) * kChunk + b])
              << "pair " << i << " warp group " << h << " row " << r << " byte " << b;
        }
      }
    }
  }
  EXPECT_EQ(PairChunk(0, 0), 0);
  EXPECT_EQ(PairChunk(4, 1), 9);
  EXPECT_EQ(2 * kPairRows, kTileRows);
}

// FP16-exact values: the emulation multiplies in FP64 what the tensor cores
// multiply exactly (FP16 x FP16) and adds in FP64 what they add in FP32.
double Fp8Value(uint8_t code, Fp8Format f) { return fp8::Decode(code, f); }

void EmulateTile(int n_cols, Fp8Format format, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int> small(-64, 64);
  // A 128 x 128 tile of W codes (no NaN or infinity codes) and N activation
  // columns of 128 values that are exact in FP16.
  std::vector<uint8_t> w(size_t(kTileRows) * kChunk);
  for (auto& c : w) {
    do {
      c = static_cast<uint8_t>(byte(rng));
    } while (!std::isfinite(Fp8Value(c, format)));
  }
  std::vector<double> x(size_t(n_cols) * kChunk);
  for (auto& v : x) v = small(rng) / 16.0;

  // W as TMA writes it; the activation image as ImagePrepKernel writes it.
  std::vector<uint8_t> tile(size_t(kTileBytes), 0xEE);
  for (int r = 0; r < kTileRows; ++r) {
    for (int b = 0; b < kChunk; ++b) tile[size_t(SwizzledOffset(r, b))] = w[size_t(r) * kChunk + b];
  }
  std::vector<double> image(size_t(n_cols) * kChunk, NAN);
  for (int n = 0; n < n_cols; ++n) {
    for (int s = 0; s < kSteps; ++s) {
      for (int kk = 0; kk < 16; ++kk) {
        image[size_t(ImageOffset(n_cols, n, s, kk))] = x[size_t(n) * kChunk + ChunkCol(s, kk)];
      }
    }
  }
  for (double v : image) ASSERT_FALSE(std::isnan(v)) << "image slot never written";

  // B(kk, n) of step s as the hardware reads it: core matrices of 8 rows (n)
  // x 16 bytes (8 k values), kLeadingBytes apart along k, kStrideBytes along n.
  auto b_at = [&](int s, int kk, int n) {
    const int64_t byte = int64_t{s} * StepBytes(n_cols) + (n >> 3) * kStrideBytes +
                         (kk >> 3) * kLeadingBytes + (n & 7) * 16 + (kk & 7) * 2;
    return image[size_t(byte / 2)];
  };

  // Two warp groups of four warps; each lane reads its words as the kernel does.
  std::vector<double> d(size_t(kTileRows) * n_cols, 0.0);
  for (int warp = 0; warp < 8; ++warp) {
    const int wg = warp >> 2, wi = warp & 3;
    // a[lane][s][reg][half]: the FP16 pairs of the A fragment.
    double a[32][kSteps][4][2];
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane >> 2, t = lane & 3;
      const int ra = wg * 64 + AccRow(wi, g, 0), rb = ra + 8;
      for (int s = 0; s < kSteps; ++s) {
        uint8_t wa[4], wb[4];
        for (int i = 0; i < 4; ++i) {
          wa[i] = tile[size_t(SwizzledOffset(ra, 32 * t + 4 * s + i))];
          wb[i] = tile[size_t(SwizzledOffset(rb, 32 * t + 4 * s + i))];
        }
        // DecodeWord: lo = codes (0, 1), hi = codes (2, 3); regs 0/2 row a, 1/3 row b.
        for (int h = 0; h < 2; ++h) {
          a[lane][s][0][h] = Fp8Value(wa[h], format);
          a[lane][s][2][h] = Fp8Value(wa[2 + h], format);
          a[lane][s][1][h] = Fp8Value(wb[h], format);
          a[lane][s][3][h] = Fp8Value(wb[2 + h], format);
        }
      }
    }
    // The m64nNk16 product of each step: A's element (row 16 wi + g (+8),
    // k 2t + h (+8)) comes from lane (g, t) register {0,1,2,3}.
    for (int s = 0; s < kSteps; ++s) {
      for (int m = 0; m < 16; ++m) {
        for (int kk = 0; kk < 16; ++kk) {
          const int g = m & 7, t = (kk & 7) >> 1, h = kk & 1;
          const int reg = (m >> 3) + 2 * (kk >> 3);
          const double av = a[g * 4 + t][s][reg][h];
          for (int n = 0; n < n_cols; ++n) {
            d[size_t(wg * 64 + wi * 16 + m) * n_cols + n] += av * b_at(s, kk, n);
          }
        }
      }
    }
    // Every accumulator register lands on a distinct (row, column).
    std::set<std::pair<int, int>> places;
    for (int lane = 0; lane < 32; ++lane) {
      for (int j = 0; j < n_cols / 2; ++j) {
        places.insert({AccRow(wi, lane >> 2, j), AccCol(lane & 3, j)});
      }
    }
    EXPECT_EQ(places.size(), size_t(16) * n_cols);
  }

  for (int r = 0; r < kTileRows; ++r) {
    for (int n = 0; n < n_cols; ++n) {
      double want = 0;
      for (int c = 0; c < kChunk; ++c) {
        want += Fp8Value(w[size_t(r) * kChunk + c], format) * x[size_t(n) * kChunk + c];
      }
      ASSERT_NEAR(d[size_t(r) * n_cols + n], want, 1e-9 * (1 + std::fabs(want)))
          << "row " << r << " column " << n << " N " << n_cols;
    }
  }
}

TEST(WgmmaLayout, EmulatedTileProductMatchesTheDotProducts) {
  uint32_t seed = 1;
  for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
    for (int n : {8, 16, 32, 64, 128}) EmulateTile(n, f, seed++);
  }
}

}  // namespace
}  // namespace plume::cuda::wgmma_layout
