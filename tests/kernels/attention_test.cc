// Attention over the paged FP8 K/V cache: KvAppend's quantization, the naive
// reference (naive::Attention) against a test-local FP64 softmax(QK^T)V on the
// dequantized cache, and the CPU backend's FP32 path (ref::Attention) against
// the naive reference.
//
// Bounds (relative L2 over the whole output):
//   reference vs test-local FP64: 1e-6 (both FP64; the local one reads KvDequantize's
//                                 floats, decode * scale rounded to FP32: 2^-24 relative)
//   ref::Attention vs reference:  1e-5 (F32 outputs); F16 outputs 1e-3, BF16 8e-3
//   dequantized cache vs source:  E4M3 0.05, E5M2 0.1 (FP8's own rounding)
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "plume/kernels/fp8.h"
#include "plume/kernels/half.h"
#include "plume/kernels/kv_layout.h"
#include "plume/reference/attention.h"
#include "plume/reference/naive.h"
#include "plume/reference/thread_pool.h"
#include "tests/common/attention_reference.h"
#include "tests/common/gemv_reference.h"

namespace {

using namespace plume;
using ref::HostKvCache;
using plume::testing::NaiveAttention;
using plume::testing::RandomNormal;
using plume::testing::RelL2;

struct Case {
  int64_t batch = 1, heads = 4, kv_heads = 2, q_len = 1, seq = 64, dim = 64;
  bool causal = false;
  Fp8Format format = Fp8Format::kE4M3;
  KvScaleMode mode = KvScaleMode::kTokenBlock;
  uint32_t seed = 1;

  std::string Name() const {
    return "b" + std::to_string(batch) + " h" + std::to_string(heads) + "/" + std::to_string(kv_heads) +
           " q" + std::to_string(q_len) + " s" + std::to_string(seq) + " d" + std::to_string(dim) +
           (causal ? " causal " : " ") + (format == Fp8Format::kE4M3 ? "e4m3 " : "e5m2 ") +
           KvScaleModeName(mode);
  }
};

// K/V source values: normal, with per-head and per-token magnitudes that
// differ, so that every scale mode has something to do.
std::vector<float> KvSource(const Case& c, uint32_t seed) {
  std::vector<float> x = RandomNormal(c.kv_heads * c.seq * c.dim, seed);
  for (int64_t h = 0; h < c.kv_heads; ++h)
    for (int64_t t = 0; t < c.seq; ++t)
      for (int64_t d = 0; d < c.dim; ++d)
        x[size_t((h * c.seq + t) * c.dim + d)] *= std::ldexp(1.0f, int(h % 3) - 1 + int(t % 5 == 0));
  return x;
}

struct Built {
  HostKvCache cache;
  std::vector<float> k, v, q;  // sources
  std::vector<float> kd, vd;   // dequantized cache
  AttentionQueries p;  // shape, scale and mask; q and out set per call
};

Built Build(const Case& c, int64_t piece = 0) {
  Built b{HostKvCache({c.kv_heads, c.dim, c.mode}, c.format), KvSource(c, c.seed), KvSource(c, c.seed + 1),
          RandomNormal(c.batch * c.heads * c.q_len * c.dim, c.seed + 2), {}, {}, {}};
  if (piece <= 0) {
    b.cache.Append(b.k.data(), b.v.data(), c.seq);
  } else {
    // Append in pieces of `piece` tokens (decoding-style growth).
    for (int64_t t0 = 0; t0 < c.seq; t0 += piece) {
      const int64_t n = std::min(piece, c.seq - t0);
      std::vector<float> kp(size_t(c.kv_heads * n * c.dim)), vp(kp.size());
      for (int64_t h = 0; h < c.kv_heads; ++h)
        for (int64_t t = 0; t < n; ++t)
          for (int64_t d = 0; d < c.dim; ++d) {
            kp[size_t((h * n + t) * c.dim + d)] = b.k[size_t((h * c.seq + t0 + t) * c.dim + d)];
            vp[size_t((h * n + t) * c.dim + d)] = b.v[size_t((h * c.seq + t0 + t) * c.dim + d)];
          }
      b.cache.Append(kp.data(), vp.data(), n);
    }
  }
  b.kd.resize(b.k.size());
  b.vd.resize(b.v.size());
  ref::KvDequantize(b.cache.view(), b.kd.data(), b.vd.data());
  b.p.batch = c.batch;
  b.p.heads = c.heads;
  b.p.q_len = c.q_len;
  b.p.scale = float(1.0 / std::sqrt(double(c.dim)));
  b.p.causal = c.causal;
  return b;
}

// b's problem with queries q of qt and the output out of ot.
AttentionProblem Problem(const Built& b, const void* q, DType qt, void* out, DType ot) {
  AttentionProblem p{b.cache.view(), b.p};
  p.q = q;
  p.q_dtype = qt;
  p.out = out;
  p.out_dtype = ot;
  return p;
}

std::vector<double> Reference(const Built& b) {
  std::vector<double> out(b.q.size(), std::nan(""));
  naive::Attention(Problem(b, b.q.data(), DType::kF32, nullptr, DType::kF32), out.data());
  return out;
}

std::vector<float> Fast(const Built& b, ThreadPool* pool = nullptr) {
  std::vector<float> out(b.q.size(), std::numeric_limits<float>::quiet_NaN());  // poisoned
  ref::Attention(Problem(b, b.q.data(), DType::kF32, out.data(), DType::kF32), pool);
  return out;
}

void CheckCase(const Case& c, int64_t piece = 0) {
  SCOPED_TRACE(c.Name() + (piece ? " piece " + std::to_string(piece) : ""));
  const Built b = Build(c, piece);
  ASSERT_EQ(b.cache.seq(), c.seq);
  const std::vector<double> want = Reference(b);
  const std::vector<double> naive = NaiveAttention(b.kd, b.vd, c.kv_heads, c.seq, c.dim, b.q, c.batch,
                                                   c.heads, c.q_len, b.p.scale, c.causal);
  EXPECT_LE(RelL2(want, naive), 1e-6);
  const std::vector<float> got = Fast(b);
  for (size_t i = 0; i < got.size(); ++i) ASSERT_TRUE(std::isfinite(got[i])) << "element " << i;
  EXPECT_LE(RelL2(got, want), 1e-5);
  // And the quantization itself is FP8-accurate against the source.
  const double qerr = c.format == Fp8Format::kE4M3 ? 0.05 : 0.1;
  std::vector<double> k64(b.k.begin(), b.k.end());
  if (c.mode != KvScaleMode::kNone) EXPECT_LE(RelL2(b.kd, k64), qerr);
}

TEST(Attention, SeqLengthsModesFormats) {
  for (int64_t seq : {1, 63, 64, 65, 1000})
    for (auto mode : {KvScaleMode::kNone, KvScaleMode::kTensor, KvScaleMode::kHead, KvScaleMode::kTokenBlock})
      for (auto f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
        Case c;
        c.seq = seq;
        c.mode = mode;
        c.format = f;
        c.seed = uint32_t(seq * 7 + int(mode) * 3 + int(f));
        CheckCase(c);
      }
}

TEST(Attention, RaggedHeadDimsAndBatches) {
  for (int64_t dim : {1, 8, 72, 128, 200}) {
    Case c;
    c.dim = dim;
    c.seq = 130;
    c.batch = 3;
    c.q_len = 2;
    c.seed = uint32_t(dim);
    CheckCase(c);
  }
}

TEST(Attention, GroupedQueryHeads) {
  // MHA (heads == kv_heads), GQA (4 and 8 query heads per kv head), MQA (one kv head).
  for (auto [heads, kv] : std::vector<std::pair<int64_t, int64_t>>{{4, 4}, {8, 2}, {32, 4}, {6, 1}}) {
    Case c;
    c.heads = heads;
    c.kv_heads = kv;
    c.seq = 200;
    c.batch = 2;
    c.seed = uint32_t(heads * 10 + kv);
    CheckCase(c);
  }
}

TEST(Attention, GqaHeadsReadTheirOwnKvHead) {
  // With 2 kv heads, query heads 0-1 read kv head 0 and 2-3 read kv head 1:
  // the same query in heads 1 and 2 must give different outputs, in heads 0
  // and 1 the same one.
  Case c;
  c.seq = 65;
  Built b = Build(c);
  for (int64_t h = 1; h < 4; ++h)
    for (int64_t d = 0; d < c.dim; ++d) b.q[size_t(h * c.dim + d)] = b.q[size_t(d)];
  const std::vector<float> out = Fast(b);
  double diff01 = 0, diff12 = 0;
  for (int64_t d = 0; d < c.dim; ++d) {
    diff01 += std::fabs(out[size_t(d)] - out[size_t(c.dim + d)]);
    diff12 += std::fabs(out[size_t(c.dim + d)] - out[size_t(2 * c.dim + d)]);
  }
  EXPECT_EQ(diff01, 0.0);
  EXPECT_GT(diff12, 1e-3);
}

TEST(Attention, Causal) {
  for (int64_t seq : {1, 63, 64, 65, 300})
    for (int64_t q_len : {int64_t{1}, int64_t{5}, seq}) {
      if (q_len > seq) continue;
      Case c;
      c.seq = seq;
      c.q_len = q_len;
      c.causal = true;
      c.batch = 2;
      c.seed = uint32_t(seq + 1000 * q_len);
      CheckCase(c);
    }
}

TEST(Attention, CausalFirstQueryOfAPrefillSeesOnlyTokenZero) {
  Case c;
  c.seq = 70;
  c.q_len = 70;
  c.causal = true;
  c.heads = c.kv_heads = 1;
  const Built b = Build(c);
  const std::vector<float> out = Fast(b);
  for (int64_t d = 0; d < c.dim; ++d) EXPECT_FLOAT_EQ(out[size_t(d)], b.vd[size_t(d)]);
  // And a causal decode step (q_len 1) equals the full, non-causal one.
  Case nc = c;
  nc.q_len = 1;
  Built b1 = Build(nc);
  std::vector<float> full = Fast(b1);
  b1.p.causal = true;
  EXPECT_EQ(Fast(b1), full);
}

TEST(Attention, AppendThenAttend) {
  for (auto mode : {KvScaleMode::kNone, KvScaleMode::kTensor, KvScaleMode::kHead, KvScaleMode::kTokenBlock})
    for (int64_t piece : {1, 7, 64, 100}) {
      Case c;
      c.seq = 300;
      c.mode = mode;
      c.q_len = 2;
      c.causal = true;
      c.seed = uint32_t(piece * 11 + int(mode));
      CheckCase(c, piece);
    }
}

TEST(Attention, AppendMatchesOneUploadWhereScalesAllowIt) {
  // NONE encodes every token alone; TOKEN_BLOCK appends of whole 64-token
  // blocks set each block's scale from the same tokens as one upload does.
  for (auto [mode, piece] : std::vector<std::pair<KvScaleMode, int64_t>>{{KvScaleMode::kNone, 5},
                                                                        {KvScaleMode::kTokenBlock, 64}}) {
    Case c;
    c.seq = 256;
    c.mode = mode;
    const Built once = Build(c), pieces = Build(c, piece);
    EXPECT_EQ(once.kd, pieces.kd);
    EXPECT_EQ(once.vd, pieces.vd);
  }
}

TEST(Attention, TokenBlockScaleGrowsAndReencodes) {
  // One head, D=16: 10 small tokens, then one token 100x larger in the same block.
  const int64_t dim = 16;
  HostKvCache cache({1, dim, KvScaleMode::kTokenBlock}, Fp8Format::kE4M3);
  std::vector<float> small = RandomNormal(10 * dim, 5, 0.01f), big = RandomNormal(dim, 6, 1.0f);
  cache.Append(small.data(), small.data(), 10);
  const float s0 = KvPageScales(cache.view().pages[0], cache.view().layout)[0];
  cache.Append(big.data(), big.data(), 1);
  const float s1 = KvPageScales(cache.view().pages[0], cache.view().layout)[0];
  EXPECT_GT(s1, 50 * s0);
  std::vector<float> k(11 * dim), v(k.size());
  ref::KvDequantize(cache.view(), k.data(), v.data());
  // The big token is encoded to FP8 precision with the new scale ...
  for (int64_t d = 0; d < dim; ++d) EXPECT_NEAR(k[size_t(10 * dim + d)], big[size_t(d)], 0.07 * std::fabs(big[size_t(d)]) + 1e-6);
  // ... and the small ones were re-encoded with it (not left on the old scale).
  double small_abs_err = 0;
  for (int64_t i = 0; i < 10 * dim; ++i) small_abs_err = std::max(small_abs_err, double(std::fabs(k[size_t(i)] - small[size_t(i)])));
  EXPECT_LE(small_abs_err, 0.07 * 4.0);
  // Appending smaller values keeps the block's scale.
  cache.Append(small.data(), small.data(), 1);
  EXPECT_EQ(KvPageScales(cache.view().pages[0], cache.view().layout)[0], s1);
}

TEST(Attention, HugeScoresStayFinite) {
  // Scores in the hundreds: exp() of them overflows FP32 without the max subtraction.
  Case c;
  c.seq = 500;
  c.q_len = 3;
  Built b = Build(c);
  for (auto& x : b.q) x *= 100.0f;
  const std::vector<double> want = Reference(b);
  const std::vector<float> got = Fast(b);
  for (float x : got) ASSERT_TRUE(std::isfinite(x));
  EXPECT_LE(RelL2(got, want), 1e-5);
}

TEST(Attention, TypedQueriesAndOutputs) {
  Case c;
  c.seq = 333;
  c.q_len = 4;
  c.batch = 2;
  const Built b = Build(c);
  const std::vector<double> want = Reference(b);
  const int64_t n = int64_t(b.q.size());
  // F16 output.
  std::vector<uint16_t> h(static_cast<size_t>(n));
  ref::Attention(Problem(b, b.q.data(), DType::kF32, h.data(), DType::kF16));
  std::vector<float> hf(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) hf[size_t(i)] = HalfBitsToFloat(h[size_t(i)]);
  EXPECT_LE(RelL2(hf, want), 1e-3);
  // BF16 output.
  ref::Attention(Problem(b, b.q.data(), DType::kF32, h.data(), DType::kBF16));
  for (int64_t i = 0; i < n; ++i) hf[size_t(i)] = Bf16BitsToFloat(h[size_t(i)]);
  EXPECT_LE(RelL2(hf, want), 8e-3);
  // F16 queries: the same as F32 queries rounded to F16.
  std::vector<uint16_t> qh(static_cast<size_t>(n));
  Built br = Build(c);
  for (int64_t i = 0; i < n; ++i) {
    qh[size_t(i)] = FloatToHalfBits(b.q[size_t(i)]);
    br.q[size_t(i)] = HalfBitsToFloat(qh[size_t(i)]);
  }
  std::vector<float> out(static_cast<size_t>(n));
  ref::Attention(Problem(b, qh.data(), DType::kF16, out.data(), DType::kF32));
  EXPECT_EQ(out, Fast(br));
}

TEST(Attention, ExplicitPoolAndDefaultPoolAgree) {
  Case c;
  c.seq = 1000;
  c.heads = 8;
  c.batch = 4;
  const Built b = Build(c);
  ThreadPool pool(3);
  const std::vector<float> a = Fast(b, &pool), d = Fast(b);
  EXPECT_EQ(a, d);  // each row is computed by one task, in one order
}

TEST(KvLayout, PagesAreAlignedAndSized) {
  for (int64_t dim : {1, 16, 72, 128, 512}) {
    const KvLayout l{8, dim, KvScaleMode::kTokenBlock};
    EXPECT_EQ(l.row_bytes() % 16, 0);
    EXPECT_GE(l.row_bytes(), dim);
    EXPECT_EQ(l.page_bytes() % kKvPageAlign, 0);
    EXPECT_GE(l.page_bytes(), 2 * 8 * 64 * dim + 16 * 4);
    EXPECT_EQ(l.v_row_offset(0, 0), l.codes_bytes());
    EXPECT_EQ(l.k_row_offset(1, 0), 64 * l.row_bytes());
    EXPECT_EQ(l.resident_bytes(65), 2 * l.page_bytes());
    const KvLayout h{8, dim, KvScaleMode::kHead};
    EXPECT_EQ(h.resident_bytes(1), h.page_bytes() + 2 * 8 * 4);
  }
}

// Values outside their enums are refused, with nothing written, rather than
// run as another format, K/V scale mode or dtype.
TEST(Attention, RefusesValuesItDoesNotKnow) {
  Case c;
  c.seq = 40;
  const Built b = Build(c);
  const size_t n = b.q.size();
  std::vector<float> out(n, -7.0f);
  ASSERT_TRUE(ref::Attention(Problem(b, b.q.data(), DType::kF32, out.data(), DType::kF32)));
  ASSERT_NE(out[0], -7.0f);  // a baseline that writes
  auto refused = [&](AttentionProblem p, const char* what) {
    std::vector<float> o(n, -7.0f);
    p.out = o.data();
    EXPECT_FALSE(ref::Attention(p)) << what;
    for (float v : o) ASSERT_EQ(v, -7.0f) << what;
  };
  const AttentionProblem good = Problem(b, b.q.data(), DType::kF32, nullptr, DType::kF32);
  AttentionProblem p = good;
  p.format = static_cast<Fp8Format>(9);
  refused(p, "format 9");
  p = good;
  p.layout.scale_mode = static_cast<KvScaleMode>(9);
  refused(p, "K/V scale mode 9");
  p = good;
  p.q_dtype = DType::kE4M3;
  refused(p, "FP8 queries");
  p = good;
  p.out_dtype = DType::kE5M2;
  refused(p, "FP8 output");
  p = good;
  p.out_dtype = static_cast<DType>(0);
  refused(p, "output dtype 0");
  std::vector<double> want(n, -7.0);
  p = good;
  p.format = static_cast<Fp8Format>(9);
  EXPECT_FALSE(naive::Attention(p, want.data()));
  for (double v : want) ASSERT_EQ(v, -7.0);
}

}  // namespace
