// The CUDA attention kernels' own code (their headers in kernels/cuda/src)
// run on the CPU under tests/emu/emu_cuda.h, against the FP64 reference: a
// check of their indexing, fragment layouts, masking, page splits and combine
// that runs in CI without a GPU. It cannot see what only hardware shows
// (timing, races the barriers hide, the real cvt and mma instructions);
// tests/gpu/gpu_attention_test.cc runs the kernels for real. The flash
// prefill (attention_prefill.cu) is not emulated.
#include "tests/emu/emu_cuda.h"  // first: the CUDA built-ins the headers below use
#include "tests/emu/emu_reference.h"

#include "attention_combine.cuh"
#include "attention_common.cuh"
#include "attention_decode.cuh"
#include "attention_decode_few.cuh"
#include "attention_decode_mma.cuh"
#include "attention_prefill_fallback.cuh"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <random>

#include "plume/reference/attention.h"
#include "plume/reference/naive.h"

namespace plume::cuda {
namespace {

using emu::Normal;

using namespace attn;

struct Shape {
  int64_t dim, seq, kv_heads, heads, q_len, batch;
  bool causal;
  Fp8Format format;
  KvScaleMode mode;
  DecodePath path;
  bool cuda_cores = false;  // decode: the CUDA-core kernel even where a tensor-core one serves
  // Decode: the splits merged by the combine kernel (as past kFusedUnits
  // tiles), not by each unit's last block; and the blocks run last to first.
  bool combine_kernel = false;
  bool reversed = false;
  int splits = 3;  // decode: splits of the pages at most
};

// Runs one problem through the decode kernel (its splits merged by the last
// block of each unit, or by the combine kernel) or the prefill kernel (output
// poisoned with NaN) and returns the rel. L2 error against the FP64
// reference; fails if an element is left unwritten.
double RunEmulated(const Shape& s, bool prefill, const ref::HostKvCache* given = nullptr,
                   std::vector<float>* got = nullptr, std::vector<double>* expected = nullptr) {
  const KvLayout l{s.kv_heads, s.dim, s.mode};
  ref::HostKvCache own(l, s.format, true);
  if (given == nullptr) {
    const auto k = Normal(s.kv_heads * s.seq * s.dim, 1), v = Normal(s.kv_heads * s.seq * s.dim, 2);
    EXPECT_TRUE(own.Append(k.data(), v.data(), s.seq));
  }
  const int64_t n = s.batch * s.heads * s.q_len * s.dim;
  const auto q = Normal(n, 3);
  std::vector<float> out(static_cast<size_t>(n), NAN);
  AttentionProblem p;
  static_cast<KvCacheView&>(p) = (given != nullptr ? *given : own).view();
  p.q = q.data();
  p.q_dtype = DType::kF32;
  p.batch = s.batch;
  p.heads = s.heads;
  p.q_len = s.q_len;
  p.scale = 0.11f;
  p.causal = s.causal;
  p.out = out.data();
  p.out_dtype = DType::kF32;
  std::vector<double> want(static_cast<size_t>(n));
  naive::Attention(p, want.data());
  const Dec dec = PickDec(s.format, s.path);
  const int kd = KernelDim(l.row_bytes());
  const int64_t rows = s.batch * (s.heads / s.kv_heads) * s.q_len;  // of one kv head
  if (prefill) {
    const int tiles = static_cast<int>((rows + kPrefillRows - 1) / kPrefillRows);
    const Params k2 = MakeParams(p, dec, kPrefillRows, tiles, 0, 1, nullptr, 0);
    const int dv = std::min(kd, kMaxDv);
    const auto units = static_cast<unsigned>(s.kv_heads * tiles);
    EmuLaunch(units, static_cast<unsigned>((s.dim + dv - 1) / dv), kPrefillThreads, [&] {
      switch (kd) {
        case 64: PrefillKernel<64>(k2, dec); break;
        case 128: PrefillKernel<128>(k2, dec); break;
        case 256: PrefillKernel<256>(k2, dec); break;
        case 512: PrefillKernel<512>(k2, dec); break;
        default: ADD_FAILURE() << "no prefill kernel for head dim " << kd; break;
      }
    });
  } else {
    // The tensor-core decodes serve padded head dims 64, 128 and 256, the FP32
    // one the rest (and those where the GPU's shared memory is short).
    const bool mma = MmaDim(kd) && !s.cuda_cores, few = mma && rows <= kFewRows;
    const bool soft = s.path == DecodePath::kSoftware;
    const bool shared =
        kd == 128 && soft && mma && !few && std::min<int64_t>(kMmaRows, (rows + 15) / 16 * 16) > 32;
    const int tile_rows = few   ? kFewRows
                          : mma ? static_cast<int>(std::min<int64_t>(kMmaRows, (rows + 15) / 16 * 16))
                                : kRows;
    const int tiles = static_cast<int>((rows + tile_rows - 1) / tile_rows);
    const int pages = static_cast<int>(KvLayout::pages_for(s.seq));
    const auto [pps, splits] = emu::SplitPages(pages, s.splits);
    const auto units = static_cast<unsigned>(s.kv_heads * tiles);
    const int64_t slots = int64_t{units} * splits * tile_rows;
    std::vector<float> ws(static_cast<size_t>(slots * (2 + s.dim)), NAN);
    std::vector<unsigned> counters(units, 0);
    const Params k2 = MakeParams(p, dec, tile_rows, tiles, pps, splits, ws.data(), slots * 2 * 4,
                                 s.combine_kernel ? nullptr : counters.data());
    // The kernel the dispatch would launch: its table for the CUDA-core decode.
    const KernelFn fn = WithDec<KernelFn>(dec, [&](auto d) -> KernelFn {
      constexpr Dec kDec = decltype(d)::value;
      if (!mma) return DecodeKernelFor<kDec>(kd);
      const auto at = [&](auto dim) -> KernelFn {
        constexpr int kD = decltype(dim)::value;
        if (few) return DecodeFewKernel<kDec, kD>;
        if constexpr (kD == 128) {
          if (shared) return DecodeMmaKernel<kDec, kD, true>;
        }
        return DecodeMmaKernel<kDec, kD, false>;
      };
      switch (kd) {
        case 64: return at(std::integral_constant<int, 64>{});
        case 128: return at(std::integral_constant<int, 128>{});
        case 256: return at(std::integral_constant<int, 256>{});
        default: return nullptr;
      }
    });
    EXPECT_NE(fn, nullptr);
    if (fn == nullptr) return INFINITY;
    g_emu_blocks_reversed = s.reversed;
    EmuLaunch(units, static_cast<unsigned>(splits), static_cast<unsigned>(DecodeThreads(kd)), [&] { fn(k2); });
    if (s.combine_kernel) {
      EmuLaunch(static_cast<unsigned>(s.batch * s.heads * s.q_len), 1, kCombineThreads, [&] { CombineKernel<false>(k2); });
    }
    g_emu_blocks_reversed = false;
    // Every unit's last block set its counter back for the next launch.
    EXPECT_EQ(std::count(counters.begin(), counters.end(), 0u), static_cast<std::ptrdiff_t>(units));
  }
  if (got != nullptr) {
    *got = out;
    *expected = want;
    return 0.0;
  }
  return emu::WrittenRelL2(out, want);
}

constexpr KvScaleMode kModes[] = {KvScaleMode::kNone, KvScaleMode::kTensor, KvScaleMode::kHead,
                                  KvScaleMode::kTokenBlock};
constexpr DecodePath kPaths[] = {DecodePath::kNative, DecodePath::kSoftware};
constexpr Fp8Format kFormats[] = {Fp8Format::kE4M3, Fp8Format::kE5M2};

TEST(AttentionEmu, DecodeKernel) {
  int i = 0;
  double worst = 0.0;
  for (int64_t dim : {64, 100, 128, 256, 512, 1000})
    for (int64_t seq : {1, 63, 64, 65, 1000})
      for (bool gqa : {false, true}) {
        const int64_t q_len = i % 3 == 0 ? 1 : i % 3 == 1 ? 3 : 8;
        // Head dims 64 and 256 have both kernels: every other case takes the
        // CUDA-core one (the GPUs whose shared memory is short run it).
        const bool cuda_cores = (dim == 64 || dim == 256) && i % 2 == 1;
        const Shape s{dim,        seq, 2, gqa ? 8 : 2, q_len, i % 5 == 0 ? 2 : 1, i % 2 == 0 && q_len <= seq,
                      i % 4 < 2 ? Fp8Format::kE4M3 : Fp8Format::kE5M2, kModes[i % 4], kPaths[i / 4 % 2],
                      cuda_cores, i % 3 == 2, i % 7 >= 4};
        SCOPED_TRACE(::testing::Message() << "D=" << dim << " seq=" << seq << " q_len=" << q_len
                                          << " gqa=" << gqa << " cuda_cores=" << cuda_cores
                                          << " combine_kernel=" << s.combine_kernel << " reversed="
                                          << s.reversed << " case " << i);
        const double err = RunEmulated(s, false);
        EXPECT_LE(err, 1e-5);
        worst = std::max(worst, err);
        ++i;
      }
  std::printf("decode kernel (emulated): worst rel. L2 error %.3g over %d problems\n", worst, i);
}

// At most four query rows per kv head (DecodeFewKernel, head dims padding to
// 64, 128 and 256): GQA group 4 at batch 1, causal rows at distinct
// positions, ragged head dims, every decode path and scale mode.
TEST(AttentionEmu, DecodeFewRows) {
  int i = 0;
  for (int64_t dim : {128, 100, 64, 40, 256, 200})
    for (int64_t seq : {1, 65, 1000})
      for (int64_t q_len : {1, 2}) {
        const Shape s{dim, seq, 2, q_len == 1 ? 8 : 4, q_len, 1, q_len <= seq,
                      i % 2 == 0 ? Fp8Format::kE4M3 : Fp8Format::kE5M2, kModes[i % 4], kPaths[i / 2 % 2],
                      false, false, i % 3 == 1};
        SCOPED_TRACE(::testing::Message() << "D=" << dim << " seq=" << seq << " q_len=" << q_len << " case " << i);
        EXPECT_LE(RunEmulated(s, false), 1e-5);
        ++i;
      }
}

// 3 and 4 m-tiles of query rows per kv head (the tensor-core decode with the
// page decoded once to shared memory, the software decode's kernel): batch 2
// or 3 at GQA group 8, q_len 3, a ragged head dim, both formats, every scale
// mode.
TEST(AttentionEmu, DecodeSharedPage) {
  int i = 0;
  for (int64_t dim : {128, 120})
    for (int64_t seq : {70, 1000})
      for (int64_t batch : {2, 3}) {
        const Shape s{dim, seq, 1, 8, 3, batch, i % 2 == 1,
                      i % 2 == 0 ? Fp8Format::kE4M3 : Fp8Format::kE5M2, kModes[i % 4], DecodePath::kSoftware,
                      false, false, i % 2 == 1};
        SCOPED_TRACE(::testing::Message() << "D=" << dim << " seq=" << seq << " batch=" << batch << " case " << i);
        EXPECT_LE(RunEmulated(s, false), 1e-5);
        ++i;
      }
}

// More splits than a warp has lanes (the merge weighs them 32 at a time):
// one page a split, 41 and 66 of them, merged by the last block or by the
// combine kernel, on each decode kernel.
TEST(AttentionEmu, DecodeManySplits) {
  int i = 0;
  for (int64_t seq : {2600, 4200})
    for (int64_t dim : {64, 128, 512})
      for (bool combine_kernel : {false, true}) {
        // GQA group 16 at D = 64 runs the tensor-core decode, 4 at D = 128
        // its few-rows kernel, D = 512 the CUDA-core one.
        const Shape s{dim, seq, 1, dim == 64 ? 16 : dim == 128 ? 4 : 2, 1, 1, true, kFormats[i % 2], kModes[i % 4],
                      kPaths[i / 2 % 2], false, combine_kernel, i % 3 == 0, 1000};
        SCOPED_TRACE(::testing::Message() << "D=" << dim << " seq=" << seq
                                          << " combine_kernel=" << combine_kernel << " case " << i);
        EXPECT_LE(RunEmulated(s, false), 1e-5);
        ++i;
      }
}

TEST(AttentionEmu, PrefillKernel) {
  int i = 0;
  double worst = 0.0;
  for (int64_t dim : {64, 128, 200, 256, 512})
    for (int64_t seq : {63, 65, 300})
      for (bool gqa : {false, true}) {
        const int64_t q_len = i % 3 == 0 ? 16 : i % 3 == 1 || dim > 128 ? 61 : 257;
        const Shape s{dim, seq, 1, gqa ? 2 : 1, q_len, i % 4 == 1 ? 2 : 1, i % 2 != 1 && q_len <= seq,
                      i % 4 < 2 ? Fp8Format::kE4M3 : Fp8Format::kE5M2, kModes[i % 4], kPaths[i / 4 % 2]};
        SCOPED_TRACE(::testing::Message() << "D=" << dim << " seq=" << seq << " q_len=" << q_len
                                          << " gqa=" << gqa << " case " << i);
        const double err = RunEmulated(s, true);
        EXPECT_LE(err, 2e-3);
        worst = std::max(worst, err);
        ++i;
      }
  std::printf("prefill kernel (emulated): worst rel. L2 error %.3g over %d problems\n", worst, i);
}

// The kernel tables answer a value they have no kernel for with nullptr (the
// dispatch then fails with cudaErrorInvalidValue) instead of running another.
TEST(AttentionEmu, UnknownValuesPickNoKernel) {
  for (int kd : {64, 256, 512, 1024}) EXPECT_NE(DecodeKernelFor<Dec::kE4M3Soft>(kd), nullptr) << kd;
  // 128 is the tensor-core decodes' head dim, not this table's.
  for (int kd : {0, 32, 100, 128, 2048}) EXPECT_EQ(DecodeKernelFor<Dec::kE5M2Native>(kd), nullptr) << kd;
  const auto pick64 = [](auto d) -> KernelFn { return DecodeKernelFor<decltype(d)::value>(64); };
  EXPECT_NE(WithDec<KernelFn>(Dec::kE5M2Soft, pick64), nullptr);
  EXPECT_EQ(WithDec<KernelFn>(static_cast<Dec>(7), pick64), nullptr);
  EXPECT_EQ(KernelDim(1025), 0);
}

// An E4M3 NaN code in K (a non-saturating append past the TENSOR scale): the
// rows that see its token are NaN, as in the reference, the others finite and
// right, on every decode path (the software path patches NaN codes back).
TEST(AttentionEmu, NanCodeInKGivesNanRows) {
  const KvLayout l{2, 64, KvScaleMode::kTensor};
  ref::HostKvCache cache(l, Fp8Format::kE4M3, false);
  auto k = Normal(2 * 200 * 64, 5), v = Normal(2 * 200 * 64, 6);
  ASSERT_TRUE(cache.Append(k.data(), v.data(), 200));
  k = Normal(2 * 3 * 64, 7);
  v = Normal(2 * 3 * 64, 8);
  k[5] = 1e6f;  // head 0, token 200
  ASSERT_TRUE(cache.Append(k.data(), v.data(), 3));
  for (bool prefill : {false, true})
    for (DecodePath path : kPaths) {
      const int64_t q_len = prefill ? 20 : 4;
      const Shape s{64, 203, 2, 4, q_len, 1, true, Fp8Format::kE4M3, KvScaleMode::kTensor, path};
      std::vector<float> got;
      std::vector<double> want;
      RunEmulated(s, prefill, &cache, &got, &want);
      int64_t nan_rows = 0;
      double num = 0.0, den = 0.0;
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(std::isnan(got[i]), std::isnan(want[i])) << "element " << i << " prefill " << prefill;
        if (std::isnan(want[i])) {
          nan_rows += i % 64 == 0;
          continue;
        }
        num += (got[i] - want[i]) * (got[i] - want[i]);
        den += want[i] * want[i];
      }
      EXPECT_EQ(nan_rows, 2 * (prefill ? 3 : 3));  // heads 0 and 1 (kv head 0), queries at 200..202
      EXPECT_LE(std::sqrt(num / den), prefill ? 2e-3 : 1e-5);
    }
}

// The decoders the kernels use, for every code at every byte of a word:
// the software E4M3 decode (values times 2^-8) keeps NaN codes NaN (0x7e00)
// and leaves the word's other codes as decoded; every path agrees with the
// format's definition.
TEST(AttentionEmu, WordDecodersOverEveryCode) {
  std::mt19937 rng(21);
  for (const Dec dec : {Dec::kE4M3Soft, Dec::kE4M3Native, Dec::kE5M2Soft, Dec::kE5M2Native}) {
    const bool e4 = dec == Dec::kE4M3Soft || dec == Dec::kE4M3Native;
    const Fp8Format f = e4 ? Fp8Format::kE4M3 : Fp8Format::kE5M2;
    const float factor = dec == Dec::kE4M3Soft ? 1.0f / 256.0f : 1.0f;
    for (int code = 0; code < 256; ++code) {
      for (int b = 0; b < 4; ++b) {
        uint32_t w = static_cast<uint32_t>(rng());
        w = (w & ~(0xffu << (8 * b))) | static_cast<uint32_t>(code) << (8 * b);
        uint32_t lo = 0, hi = 0;
        DecodeWordRt(dec, w, lo, hi);  // DecodeWordNan<dec>
        const uint16_t halves[4] = {static_cast<uint16_t>(lo), static_cast<uint16_t>(lo >> 16),
                                    static_cast<uint16_t>(hi), static_cast<uint16_t>(hi >> 16)};
        for (int i = 0; i < 4; ++i) {
          const uint8_t c = static_cast<uint8_t>(w >> (8 * i));
          const float want = fp8::Decode(c, f);
          const float got = HalfBitsToFloat(halves[i]);
          SCOPED_TRACE(::testing::Message() << "dec " << static_cast<int>(dec) << " code 0x" << std::hex
                                            << int(c) << " at byte " << i);
          if (std::isnan(want)) {
            EXPECT_TRUE(std::isnan(got));
          } else {
            EXPECT_EQ(got, want * factor);
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace plume::cuda
