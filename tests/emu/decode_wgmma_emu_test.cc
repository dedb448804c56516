// The Hopper decode's own code (kernels/cuda/src/attention_decode_wgmma.cuh)
// run on the CPU under tests/emu/emu_cuda.h and emu_sm90.h, against the FP64
// reference: the FP16 pages' layout as the wgmma descriptors read it, Q's hi
// and lo operands, the S, P and O fragment layouts, the producer's ring and
// the four tile buffers' phases, the two consumers' pages and their merge,
// masking, splits and both split merges, in CI without a GPU. What only
// hardware shows (the asynchrony of wgmma and of the bulk copies, the
// register split, timing) is for tests/gpu/gpu_attention_test.cc.
#include "tests/emu/emu_cuda.h"  // first: the CUDA built-ins the headers below use
#include "tests/emu/emu_reference.h"
#include "tests/emu/emu_sm90.h"

#include "attention_combine.cuh"
#include "attention_common.cuh"
#include "attention_decode_wgmma.cuh"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "plume/reference/attention.h"
#include "plume/reference/naive.h"

namespace plume::cuda {
namespace {

using emu::Normal;

using namespace attn;

struct Case {
  int64_t dim, seq, kv_heads, heads, q_len, batch;
  bool causal;
  Fp8Format format = Fp8Format::kE4M3;
  KvScaleMode mode = KvScaleMode::kTokenBlock;
  DecodePath path = DecodePath::kNative;
  DType q_dtype = DType::kF32;
  int splits = 3;               // splits of the pages at most
  bool combine_kernel = false;  // the splits merged by the combine kernel, not the last block
  bool reversed = false;        // the blocks run last to first
  float q_scale = 1.0f;
};

// The rel. L2 error of the emulated decode against the FP64 reference; fails
// if an output element is left unwritten.
double RunDecode(const Case& c) {
  const KvLayout l{c.kv_heads, c.dim, c.mode};
  ref::HostKvCache cache(l, c.format, true);
  const auto k = Normal(c.kv_heads * c.seq * c.dim, 1), v = Normal(c.kv_heads * c.seq * c.dim, 2);
  EXPECT_TRUE(cache.Append(k.data(), v.data(), c.seq));
  const int64_t n = c.batch * c.heads * c.q_len * c.dim;
  const auto qf = Normal(n, 3, c.q_scale);
  std::vector<uint16_t> qh(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) qh[i] = FloatToHalfBits(qf[i]);
  std::vector<float> out(static_cast<size_t>(n), NAN);
  AttentionProblem p;
  static_cast<KvCacheView&>(p) = cache.view();
  p.q = c.q_dtype == DType::kF32 ? static_cast<const void*>(qf.data()) : static_cast<const void*>(qh.data());
  p.q_dtype = c.q_dtype;
  p.batch = c.batch;
  p.heads = c.heads;
  p.q_len = c.q_len;
  p.scale = 0.11f;
  p.causal = c.causal;
  p.out = out.data();
  p.out_dtype = DType::kF32;
  std::vector<double> want(static_cast<size_t>(n));
  EXPECT_TRUE(naive::Attention(p, want.data()));

  const Dec dec = PickDec(c.format, c.path);
  const int kd = KernelDim(l.row_bytes());
  EXPECT_TRUE(kd == 64 || kd == 128) << kd;
  constexpr int kRows = WgDecode<128>::kRows, kThreads = WgDecode<128>::kThreads;
  static_assert(kRows == WgDecode<64>::kRows && kThreads == WgDecode<64>::kThreads);
  const int64_t rows = c.batch * (c.heads / c.kv_heads) * c.q_len;
  const int tiles = static_cast<int>((rows + kRows - 1) / kRows);
  const int pages = static_cast<int>(KvLayout::pages_for(c.seq));
  const auto [pps, splits] = emu::SplitPages(pages, c.splits);
  const auto units = static_cast<unsigned>(c.kv_heads * tiles);
  const int64_t slots = int64_t{units} * splits * kRows;
  std::vector<float> ws(static_cast<size_t>(slots * (2 + c.dim)), NAN);
  std::vector<unsigned> counters(units, 0);
  const Params k2 = MakeParams(p, dec, kRows, tiles, pps, splits, ws.data(), slots * 2 * 4,
                               c.combine_kernel ? nullptr : counters.data());
  g_emu_blocks_reversed = c.reversed;
  // The kernel as attention_decode_wgmma.cu picks it.
  const KernelFn fn = WithDec<KernelFn>(dec, [&](auto d) -> KernelFn {
    constexpr Dec kDec = decltype(d)::value;
    return kd == 64 ? DecodeWgmmaKernel<64, kDec> : DecodeWgmmaKernel<128, kDec>;
  });
  EmuLaunch(units, static_cast<unsigned>(splits), kThreads, [&] { fn(k2); });
  if (c.combine_kernel) {
    EmuLaunch(static_cast<unsigned>(c.batch * c.heads * c.q_len), 1, kCombineThreads,
              [&] { CombineKernel<false>(k2); });
  }
  g_emu_blocks_reversed = false;
  EXPECT_EQ(std::count(counters.begin(), counters.end(), 0u), static_cast<std::ptrdiff_t>(units));
  return emu::WrittenRelL2(out, want);
}

constexpr KvScaleMode kModes[] = {KvScaleMode::kNone, KvScaleMode::kTensor, KvScaleMode::kHead,
                                  KvScaleMode::kTokenBlock};

// 16 to 128 query rows per kv head (one or two tiles, the last ragged; the
// dispatch takes the kernel over 32 rows, PLUME_DECODE_WGMMA_MIN_ROWS), head
// dims whose rows pad to 64 and 128 bytes (the zeroed columns past a shorter
// row too), both formats and decode paths, every scale mode, FP32 and FP16
// queries, causal rows at distinct positions, one page to many, both split
// merges, blocks in either order.
TEST(DecodeWgmmaEmu, MatchesReference) {
  int i = 0;
  double worst = 0.0;
  for (int64_t dim : {128, 100, 120, 64, 40})
    for (int64_t seq : {1, 64, 65, 700})
      for (int rows_case = 0; rows_case < 4; ++rows_case) {
        // (heads, kv_heads, q_len, batch): 64 rows; 40 rows; 108 rows (causal
        // q_len 3); 16 rows.
        const int64_t heads = rows_case == 1 ? 8 : 4, q_len = rows_case == 2 ? 3 : 1;
        const int64_t batch = rows_case == 0 ? 16 : rows_case == 1 ? 5 : rows_case == 2 ? 9 : 4;
        Case c{dim, seq, 1, heads, q_len, batch, rows_case == 2 && q_len <= seq};
        c.format = i % 2 == 0 ? Fp8Format::kE4M3 : Fp8Format::kE5M2;
        c.mode = kModes[i % 4];
        c.path = i / 2 % 2 == 0 ? DecodePath::kNative : DecodePath::kSoftware;
        c.q_dtype = i % 3 == 1 ? DType::kF16 : DType::kF32;
        c.combine_kernel = i % 5 == 2;
        c.reversed = i % 7 >= 4;
        c.splits = i % 2 == 0 ? 3 : 1;
        if (i % 2 == 1) c.kv_heads = 2, c.heads *= 2;
        SCOPED_TRACE(::testing::Message() << "D=" << dim << " seq=" << seq << " rows case " << rows_case
                                          << " case " << i);
        const double err = RunDecode(c);
        EXPECT_LE(err, 1e-5);
        worst = std::max(worst, err);
        ++i;
      }
  std::printf("Hopper decode (emulated): worst rel. L2 error %.3g over %d problems\n", worst, i);
}

// More pages than the ring and the buffers hold, in splits whose page counts
// are odd and even (each consumer's share differs), and queries whose rows
// span 2^-30 to 2^30 (the rows' powers of two).
TEST(DecodeWgmmaEmu, LongSplitsAndScaledRows) {
  int i = 0;
  for (int splits : {1, 4, 7})
    for (float q_scale : {1e-9f, 1.0f, 1e9f}) {
      Case c{i % 2 == 0 ? 128 : 64, 2000, 2, 8, 1, 10, false};
      c.splits = splits;
      c.q_scale = q_scale;
      c.mode = kModes[(i + 3) % 4];
      c.path = i % 2 == 0 ? DecodePath::kNative : DecodePath::kSoftware;
      c.combine_kernel = i % 2 == 1;
      SCOPED_TRACE(::testing::Message() << "D=" << c.dim << " splits=" << splits << " q_scale=" << q_scale);
      EXPECT_LE(RunDecode(c), 1e-5);
      ++i;
    }
}

}  // namespace
}  // namespace plume::cuda
