// The Hopper flash prefill's own code (kernels/cuda/src/attention_prefill_images.cuh:
// the image pass and the warp-specialized flash kernel) run on the CPU under
// tests/emu/emu_cuda.h and emu_sm90.h, against the FP64 reference: a check
// of the FP16 images' layout as the wgmma descriptors read it, the m64n128
// accumulator and P fragment layouts, the mbarrier ring's phases, the
// causal / ragged masking, GQA rows, the per-page K and V scales and the
// launch groups, in CI without a GPU. What only hardware shows (the
// asynchrony of wgmma and the bulk copies, timing) is for
// tests/gpu/gpu_attention_test.cc.
#include "tests/emu/emu_cuda.h"  // first: the CUDA built-ins the headers below use
#include "tests/emu/emu_reference.h"
#include "tests/emu/emu_sm90.h"

#include "attention_common.cuh"
#include "attention_prefill_images.cuh"
#include "attention_prefill_wide.cuh"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "plume/reference/attention.h"
#include "plume/reference/naive.h"

namespace plume::cuda {
namespace {

using emu::Normal;

struct Case {
  int64_t dim, seq, kv_heads, heads, q_len, batch;
  bool causal;
  Fp8Format format = Fp8Format::kE4M3;
  KvScaleMode mode = KvScaleMode::kTokenBlock;
  DecodePath path = DecodePath::kNative;
  int64_t budget = kImageBudget;  // image bytes a launch group may take
  int launch_groups = 1;          // the groups that budget should give
  int64_t band_budget = kBandBudget;  // image bytes an L2 band of kv heads may take
  float softmax_scale = 0.09f;
  int64_t zero_page = -1;  // a page whose K and V are all zero (scales 0 under TOKEN_BLOCK)
  bool turns = PLUME_PREFILL_PINGPONG != 0;  // the consumers take turns issuing their MMAs
  bool early_rescale = PLUME_PREFILL_EARLY_RESCALE != 0;  // O rescaled before P V is issued
};

// A problem's shape: K/V rows of `seq` tokens, `q_len` query rows per head.
struct Shape {
  int64_t dim, seq, kv_heads, heads, q_len, batch;
  bool causal;
};

// The two kernels at padded head dim kd, as the launcher picks them.
template <int kD>
void RunGroup(const FaArgs& a, const WgGroups& g, const WgImages& w, bool turns, bool early) {
  EmuLaunch(static_cast<unsigned>(g.tiles), static_cast<unsigned>(w.heads), kImageThreads, [&] {
    switch (a.dec) {
      case Dec::kE4M3Soft: PrefillImageKernel<kD, Dec::kE4M3Soft>(a, w); break;
      case Dec::kE4M3Native: PrefillImageKernel<kD, Dec::kE4M3Native>(a, w); break;
      case Dec::kE5M2Soft: PrefillImageKernel<kD, Dec::kE5M2Soft>(a, w); break;
      case Dec::kE5M2Native: PrefillImageKernel<kD, Dec::kE5M2Native>(a, w); break;
    }
  });
  EmuLaunch(static_cast<unsigned>(a.row_tiles * w.heads), 1, FlashThreads(kD), [&] {
    if constexpr (kD == 512) {
      early ? PrefillImagesWideKernel<kD, true>(a, w) : PrefillImagesWideKernel<kD, false>(a, w);
    } else if (turns) {
      early ? PrefillImagesKernel<kD, true, true>(a, w) : PrefillImagesKernel<kD, true, false>(a, w);
    } else {
      early ? PrefillImagesKernel<kD, false, true>(a, w) : PrefillImagesKernel<kD, false, false>(a, w);
    }
  });
}

// Runs one problem through the image pass and the flash kernel, group by
// group as the launcher does (output poisoned with NaN, images with FP16
// NaN), and returns the rel. L2 error against the FP64 reference; fails if
// an element is left unwritten. K and V rows grow with the token so that
// TOKEN_BLOCK pages get different scales.
double RunPrefill(const Case& c, uint32_t seed, const ref::HostKvCache* given = nullptr,
                  std::vector<float>* got = nullptr, std::vector<double>* expected = nullptr) {
  const KvLayout l{c.kv_heads, c.dim, c.mode};
  ref::HostKvCache own(l, c.format, true);
  if (given == nullptr) {
    auto k = Normal(c.kv_heads * c.seq * c.dim, seed), v = Normal(c.kv_heads * c.seq * c.dim, seed + 1);
    for (int64_t i = 0; i < c.kv_heads * c.seq * c.dim; ++i) {
      const float grow = 1.0f + static_cast<float>((i / c.dim) % c.seq) / 64.0f;  // page by page
      k[i] *= grow;
      v[i] *= grow;
      if (((i / c.dim) % c.seq) / kPage == c.zero_page) k[i] = v[i] = 0.0f;
    }
    EXPECT_TRUE(own.Append(k.data(), v.data(), c.seq));
  }
  const int64_t n = c.batch * c.heads * c.q_len * c.dim;
  const auto q = Normal(n, seed + 2);
  std::vector<float> out(static_cast<size_t>(n), NAN);
  AttentionProblem p;
  static_cast<KvCacheView&>(p) = (given != nullptr ? *given : own).view();
  p.q = q.data();
  p.q_dtype = DType::kF32;
  p.batch = c.batch;
  p.heads = c.heads;
  p.q_len = c.q_len;
  p.scale = c.softmax_scale;
  p.causal = c.causal;
  p.out = out.data();
  p.out_dtype = DType::kF32;
  std::vector<double> want(static_cast<size_t>(n));
  EXPECT_TRUE(naive::Attention(p, want.data()));
  p.path = c.path;
  const int kd = attn::KernelDim(l.row_bytes());
  EXPECT_TRUE(kd == 64 || kd == 128 || kd == 256 || kd == 512) << kd;

  const FaArgs a = MakeFaArgs(p, FlashRows(kd));  // as the launcher picks
  const WgGroups g = Groups(p, kd, c.budget, c.band_budget);
  std::vector<uint4> ws(static_cast<size_t>((g.total + 15) / 16), make_uint4(0x7e007e00u, 0x7e007e00u, 0x7e007e00u, 0x7e007e00u));
  int groups = 0;
  ForEachGroup(a, g, ws.data(), [&](const WgImages& w) {
    ++groups;
    if (kd == 64) RunGroup<64>(a, g, w, c.turns, c.early_rescale);
    if (kd == 128) RunGroup<128>(a, g, w, c.turns, c.early_rescale);
    if (kd == 256) RunGroup<256>(a, g, w, c.turns, c.early_rescale);
    if (kd == 512) RunGroup<512>(a, g, w, c.turns, c.early_rescale);
  });
  EXPECT_EQ(groups, c.launch_groups);
  if (got != nullptr) {
    *got = out;
    *expected = want;
    return 0.0;
  }
  return emu::WrittenRelL2(out, want);
}

// The image layout is the one the descriptors describe.
TEST(PrefillImagesEmu, ImageLayoutMatchesDescriptors) {
  using namespace prefill_image;
  for (int rows : {32, 64, 128, 256, 512}) {
    std::vector<int> seen(static_cast<size_t>(rows * 128), 0);
    for (int r = 0; r < rows; ++r)
      for (int k = 0; k < 128; ++k) {
        const int off = CoreOffset(rows, r, k);
        ASSERT_EQ(off, DescribedOffset(rows, r, k)) << rows << " " << r << " " << k;
        ASSERT_GE(off, 0);
        ASSERT_LT(off, rows * 128);
        ++seen[static_cast<size_t>(off)];
      }
    for (int s : seen) ASSERT_EQ(s, 1);  // a bijection
  }
  for (int kd : {64, 128, 256, 512}) {
    EXPECT_EQ(KOffset(kd, 5, 37), CoreOffset(TileTokens(kd), 5, 37));
    EXPECT_EQ(VOffset(kd, 37, 5), CoreOffset(kd, 37, 5));
    EXPECT_EQ(ImageHalves(kd), TileTokens(kd) * kd);
    // A tile holds whole pages or lies in one (its scales are one or two pages').
    EXPECT_TRUE(TileTokens(kd) % kKvPageTokens == 0 || kKvPageTokens % TileTokens(kd) == 0) << kd;
  }
}

// Causal and not, ragged sequences (a last tile with one page or a part of
// one), query blocks that end inside a tile, GQA rows spanning heads,
// batches, head dims padding to 64, 128, 256 and 512 (the split-head-dim
// kernel), rings of split stages (256, 512) gone round more than once, every
// scale mode, both formats and decode paths. Bound: 2e-3, as on the GPU.
TEST(PrefillImagesEmu, MatchesReference) {
  const Shape shapes[] = {
      {128, 200, 1, 1, 200, 1, true},  {128, 300, 2, 2, 130, 1, true}, {128, 64, 1, 4, 40, 1, false},
      {100, 257, 1, 2, 70, 2, true},   {128, 131, 2, 4, 33, 1, false}, {72, 190, 1, 1, 190, 1, false},
      {128, 129, 1, 1, 129, 1, true},  {64, 300, 2, 2, 150, 1, true},  {40, 150, 1, 4, 60, 1, false},
      {256, 200, 1, 2, 140, 1, true},  {200, 130, 2, 2, 65, 1, false}, {256, 64, 1, 1, 64, 1, true},
      {512, 150, 1, 1, 150, 1, true},  {300, 100, 1, 2, 45, 1, false}, {512, 97, 1, 1, 70, 1, false},
      {64, 1100, 1, 2, 260, 1, true},  // 9 tiles: round the 6-stage ring of head dim 64
  };
  double worst = 0.0;
  int i = 0;
  for (const auto& s : shapes)
    for (KvScaleMode mode : {KvScaleMode::kNone, KvScaleMode::kTensor, KvScaleMode::kHead, KvScaleMode::kTokenBlock}) {
      const Fp8Format format = i % 2 == 0 ? Fp8Format::kE4M3 : Fp8Format::kE5M2;
      const DecodePath path = i % 3 == 0 ? DecodePath::kSoftware : DecodePath::kNative;
      const Case c{s.dim, s.seq, s.kv_heads, s.heads, s.q_len, s.batch, s.causal, format, mode, path};
      SCOPED_TRACE(testing::Message() << "case " << i << " dim " << s.dim << " seq " << s.seq << " q_len "
                                      << s.q_len << " causal " << s.causal << " mode " << static_cast<int>(mode));
      const double err = RunPrefill(c, 100 + static_cast<uint32_t>(i));
      EXPECT_LE(err, 2e-3);
      worst = std::max(worst, err);
      ++i;
    }
  std::printf("Hopper prefill (emulated): worst rel. L2 error %.3g over %d problems\n", worst, i);
}

// The two consumers taking turns to issue their MMAs (PingPong), and O
// rescaled before P V is issued rather than after the P V before it, change
// no arithmetic: the same bits as neither, where both consumers compute the
// same tiles, where one computes more (rows past an offset that is no
// multiple of the tile), where one has no rows, over rings gone round more
// than once, and in the head-dim-512 kernel (early rescale only). Turns that
// do not pair hang the emulation or leave a barrier part-arrived (EmuLaunch
// checks).
TEST(PrefillImagesEmu, TurnsAndEarlyRescaleGiveTheSameBits) {
  const Shape shapes[] = {
      {128, 300, 2, 2, 130, 1, true},  {128, 200, 1, 1, 200, 1, true}, {128, 64, 1, 4, 40, 1, false},
      {100, 257, 1, 2, 70, 2, true},   {64, 1100, 1, 2, 260, 1, true}, {64, 300, 2, 2, 150, 1, true},
      {256, 200, 1, 2, 140, 1, true},  {200, 130, 2, 2, 65, 1, false}, {128, 90, 1, 1, 50, 1, true},
      {512, 150, 1, 1, 150, 1, true},  {300, 100, 1, 2, 45, 1, false},  // the wide kernel: no turns
  };
  int i = 0;
  for (const auto& s : shapes) {
    Case c{s.dim, s.seq, s.kv_heads, s.heads, s.q_len, s.batch, s.causal};
    c.path = i % 2 == 0 ? DecodePath::kNative : DecodePath::kSoftware;
    SCOPED_TRACE(testing::Message() << "dim " << s.dim << " seq " << s.seq << " q_len " << s.q_len);
    std::vector<float> plain, other;
    std::vector<double> want;
    c.turns = c.early_rescale = false;
    RunPrefill(c, 300 + static_cast<uint32_t>(i), nullptr, &plain, &want);
    EXPECT_LE(emu::WrittenRelL2(plain, want), 2e-3);
    for (int v = 1; v < 4; ++v) {
      c.turns = (v & 1) != 0;
      c.early_rescale = (v & 2) != 0;
      RunPrefill(c, 300 + static_cast<uint32_t>(i), nullptr, &other, &want);
      ASSERT_EQ(plain.size(), other.size());
      EXPECT_EQ(std::memcmp(plain.data(), other.data(), plain.size() * sizeof(float)), 0)
          << "turns " << c.turns << " early rescale " << c.early_rescale;
    }
    ++i;
  }
}

// A budget of one kv head's images: three launch groups, same result.
TEST(PrefillImagesEmu, LaunchGroups) {
  Case c{128, 200, 3, 6, 90, 1, true};
  c.budget = 2 * 2 * 128 * 128 * 2;  // two tiles' K and V images: one kv head
  c.launch_groups = 3;
  EXPECT_LE(RunPrefill(c, 7), 2e-3);
}

// The block order: every (kv head, row tile) once; the bands' heads from
// the last down; within a band, the row tiles from the last, heads
// innermost. Bands of 1-4 heads over 1-9 heads, the last band short.
TEST(PrefillImagesEmu, BandOrderCoversEveryBlockOnce) {
  for (int heads = 1; heads <= 9; ++heads)
    for (int band = 1; band <= std::min(heads, 4); ++band)
      for (int row_tiles : {1, 3, 5}) {
        SCOPED_TRACE(testing::Message() << heads << " heads, band " << band << ", " << row_tiles << " row tiles");
        std::vector<int> seen(static_cast<size_t>(heads * row_tiles), 0);
        int prev_h = -1, prev_t = -1, prev_band_low = heads;
        for (int idx = 0; idx < heads * row_tiles; ++idx) {
          int h = -1, t = -1;
          BandPlace(idx, heads, band, row_tiles, h, t);
          ASSERT_GE(h, 0);
          ASSERT_LT(h, heads);
          ASSERT_GE(t, 0);
          ASSERT_LT(t, row_tiles);
          ++seen[static_cast<size_t>(h * row_tiles + t)];
          const int band_low = std::max(0, heads - band * ((heads - 1 - h) / band + 1));
          ASSERT_LE(band_low, prev_band_low);  // bands from the last heads down
          if (idx > 0 && band_low == prev_band_low) {
            // Same band: row tiles do not grow; heads grow within a row tile.
            ASSERT_TRUE(t < prev_t || (t == prev_t && h > prev_h)) << idx;
          } else if (idx > 0) {
            ASSERT_EQ(prev_t, 0);  // the band before was finished
            ASSERT_EQ(t, row_tiles - 1);
          }
          prev_h = h;
          prev_t = t;
          prev_band_low = band_low;
        }
        for (int n : seen) ASSERT_EQ(n, 1);
      }
}

// Bands of two kv heads over five (the last band one head), causal GQA
// rows, and bands inside launch groups: the same bits as one band (the
// order of the blocks changes no arithmetic), and within the bound.
TEST(PrefillImagesEmu, L2Bands) {
  const auto same_as_one_band = [](Case c, uint32_t seed) {
    std::vector<float> banded, whole;
    std::vector<double> want;
    RunPrefill(c, seed, nullptr, &banded, &want);
    c.band_budget = kBandBudget;  // every head in one band
    RunPrefill(c, seed, nullptr, &whole, &want);
    ASSERT_EQ(banded.size(), whole.size());
    EXPECT_EQ(std::memcmp(banded.data(), whole.data(), banded.size() * sizeof(float)), 0);
    EXPECT_LE(RunPrefill(c, seed), 2e-3);  // one band's error; the banded bits equal it
  };
  const int64_t head_images = 2 * 2 * 128 * 128 * 2;  // two tiles' K and V images at D = 128, S = 200
  Case c{128, 200, 5, 10, 90, 1, true};
  c.band_budget = 2 * head_images;
  same_as_one_band(c, 21);
  c.budget = 3 * head_images;  // groups of 3 and 2 heads; bands of 2 and 1, then one of 2
  c.launch_groups = 2;
  same_as_one_band(c, 22);
  Case wide{512, 150, 3, 3, 150, 1, true};
  wide.band_budget = 1;  // one head a band
  same_as_one_band(wide, 23);
}

// Inputs the usual cases never give: a negative softmax scale, and a page
// of zero K and V, whose scales are zero under TOKEN_BLOCK (in a tile beside
// a page with nonzero ones, and as a tile of its own at D = 256) and nonzero
// under HEAD.
TEST(PrefillImagesEmu, NegativeSoftmaxScaleAndZeroScaledPage) {
  for (int64_t dim : {128, 256}) {
    Case neg{dim, 300, 2, 4, 120, 1, true};
    neg.softmax_scale = -0.09f;
    EXPECT_LE(RunPrefill(neg, 11), 2e-3) << "negative scale, dim " << dim;
    for (KvScaleMode mode : {KvScaleMode::kTokenBlock, KvScaleMode::kHead}) {
      Case zero{dim, 300, 2, 4, 120, 1, true, Fp8Format::kE4M3, mode};
      zero.zero_page = 1;  // tokens 64..127
      EXPECT_LE(RunPrefill(zero, 12), 2e-3) << "zero page, dim " << dim << " mode " << static_cast<int>(mode);
    }
  }
}

// An E4M3 NaN code in K (a non-saturating append past the TENSOR scale): the
// rows that see its token are NaN, as in the reference, the others finite and
// right, on both decode paths (the software path patches NaN codes back).
TEST(PrefillImagesEmu, NanCodeInKGivesNanRows) {
  for (DecodePath path : {DecodePath::kNative, DecodePath::kSoftware}) {
    const Case c{128, 203, 2, 4, 20, 1, true, Fp8Format::kE4M3, KvScaleMode::kTensor, path};
    const KvLayout l{c.kv_heads, c.dim, c.mode};
    ref::HostKvCache cache(l, c.format, false);
    auto k = Normal(2 * 200 * 128, 5), v = Normal(2 * 200 * 128, 6);
    ASSERT_TRUE(cache.Append(k.data(), v.data(), 200));
    k = Normal(2 * 3 * 128, 7);
    v = Normal(2 * 3 * 128, 8);
    k[5] = 1e6f;  // kv head 0, token 200
    ASSERT_TRUE(cache.Append(k.data(), v.data(), 3));
    std::vector<float> got;
    std::vector<double> want;
    RunPrefill(c, 9, &cache, &got, &want);
    int nan_rows = 0;
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(std::isnan(got[i]), std::isnan(want[i])) << "element " << i;
      if (std::isnan(want[i])) {
        if (i % c.dim == 0) ++nan_rows;
        continue;
      }
      num += (got[i] - want[i]) * (got[i] - want[i]);
      den += want[i] * want[i];
    }
    EXPECT_EQ(nan_rows, 2 * 3);  // heads 0 and 1 (kv head 0), queries at 200..202
    EXPECT_LE(std::sqrt(num / den), 2e-3);
  }
}

}  // namespace
}  // namespace plume::cuda
