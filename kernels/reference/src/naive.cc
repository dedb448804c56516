// The naive reference (plume/reference/naive.h): plain FP64 loops over the
// codec headers. Nothing here may come from the CPU backend's kernels
// (reference.cc, gemv_*.cc, attention.cc): this file is what they are tested
// against.
#include "plume/reference/naive.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#include "plume/kernels/fp8.h"
#include "plume/kernels/half.h"
#include "plume/kernels/kv_layout.h"
#include "plume/kernels/layout.h"

namespace plume::naive {
namespace {

bool KnownFormat(Fp8Format f) { return f == Fp8Format::kE4M3 || f == Fp8Format::kE5M2; }

bool KnownMode(ScaleMode m) {
  switch (m) {
    case ScaleMode::kNone:
    case ScaleMode::kTensor:
    case ScaleMode::kRow:
    case ScaleMode::kBlock128:
    case ScaleMode::kBlock128x128: return true;
  }
  return false;
}

bool KnownKvMode(KvScaleMode m) {
  switch (m) {
    case KvScaleMode::kNone:
    case KvScaleMode::kTensor:
    case KvScaleMode::kHead:
    case KvScaleMode::kTokenBlock: return true;
  }
  return false;
}

// Element i of an array of `t`, exactly, as a double (FP8 codes times
// `scale`); false for a dtype outside the enum.
bool Widen(const void* src, DType t, float scale, int64_t i, double* out) {
  const auto* p = static_cast<const uint8_t*>(src);
  uint16_t h;
  switch (t) {
    case DType::kF32: {
      float f;
      std::memcpy(&f, p + 4 * i, 4);
      *out = f;
      return true;
    }
    case DType::kF16:
      std::memcpy(&h, p + 2 * i, 2);
      *out = HalfBitsToFloat(h);
      return true;
    case DType::kBF16:
      std::memcpy(&h, p + 2 * i, 2);
      *out = Bf16BitsToFloat(h);
      return true;
    case DType::kE4M3:
    case DType::kE5M2:
      *out = double(fp8::Decode(p[i], static_cast<Fp8Format>(t))) * double(scale);
      return true;
  }
  return false;
}

// Widens n elements; false for a dtype outside the enum.
bool WidenAll(const void* src, DType t, float scale, int64_t n, std::vector<double>* out) {
  out->resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (!Widen(src, t, scale, i, &(*out)[static_cast<size_t>(i)])) return false;
  }
  return true;
}

// The codes of (kv head, token) of K or V.
const uint8_t* KvRow(const KvCacheView& c, bool is_v, int64_t head, int64_t token) {
  const uint8_t* page = c.pages[token / kKvPageTokens];
  const int64_t t = token % kKvPageTokens;
  return page + (is_v ? c.layout.v_row_offset(head, t) : c.layout.k_row_offset(head, t));
}

}  // namespace

bool Gemv(const GemvProblem& p, double* out) {
  if (!KnownFormat(p.format) || !KnownMode(p.scale_mode)) return false;
  std::vector<double> x;
  if (!WidenAll(p.x, p.x_dtype, p.x_scale, p.batch * p.cols, &x)) return false;
  const PackedLayout l = p.layout();
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t r = 0; r < p.rows; ++r) {
      double sum = 0;
      for (int64_t c = 0; c < p.cols; ++c) {
        const double w = double(fp8::Decode(CodeAt(p.words, l, r, c), p.format)) *
                         double(ScaleAt(p.scales, p.scale_mode, l, r, c));
        sum += w * x[static_cast<size_t>(b * p.cols + c)];
      }
      out[b * p.rows + r] = sum;
    }
  return true;
}

bool Attention(const AttentionProblem& p, double* out) {
  const KvLayout& l = p.layout;
  const bool q_ok = p.q_dtype == DType::kF32 || p.q_dtype == DType::kF16 || p.q_dtype == DType::kBF16;
  if (!KnownFormat(p.format) || !KnownKvMode(l.scale_mode) || !q_ok) return false;
  const int64_t dim = l.head_dim, group = p.heads / l.kv_heads, seq = p.seq;
  std::vector<double> q;
  WidenAll(p.q, p.q_dtype, 1.0f, p.batch * p.heads * p.q_len * dim, &q);
  // One kv head at a time, on threads of its own: the cache dequantized in
  // FP64, then every query row that reads it.
  auto head = [&](int64_t kvh) {
    std::vector<double> kd(static_cast<size_t>(seq * dim)), vd(kd.size()), s(static_cast<size_t>(seq));
    for (int64_t t = 0; t < seq; ++t) {
      const double ks = KvScaleAt(l, p.pages, p.k_scales, p.v_scales, false, kvh, t);
      const double vs = KvScaleAt(l, p.pages, p.k_scales, p.v_scales, true, kvh, t);
      for (int64_t d = 0; d < dim; ++d) {
        kd[t * dim + d] = double(fp8::Decode(KvRow(p, false, kvh, t)[d], p.format)) * ks;
        vd[t * dim + d] = double(fp8::Decode(KvRow(p, true, kvh, t)[d], p.format)) * vs;
      }
    }
    for (int64_t b = 0; b < p.batch; ++b)
      for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h)
        for (int64_t i = 0; i < p.q_len; ++i) {
          const int64_t row = (b * p.heads + h) * p.q_len + i;
          const double* qr = q.data() + row * dim;
          // Causal: query i sits at position seq - q_len + i.
          const int64_t n = p.causal ? seq - p.q_len + i + 1 : seq;
          double m = -std::numeric_limits<double>::infinity();
          for (int64_t t = 0; t < n; ++t) {
            double dot = 0;
            for (int64_t d = 0; d < dim; ++d) dot += qr[d] * kd[t * dim + d];
            s[t] = dot * double(p.scale);
            m = std::max(m, s[t]);
          }
          double sum = 0;
          for (int64_t t = 0; t < n; ++t) sum += (s[t] = std::exp(s[t] - m));
          double* o = out + row * dim;
          std::fill(o, o + dim, 0.0);
          for (int64_t t = 0; t < n; ++t)
            for (int64_t d = 0; d < dim; ++d) o[d] += s[t] * vd[t * dim + d];
          for (int64_t d = 0; d < dim; ++d) o[d] /= sum;
        }
  };
  const int64_t nt = std::max<int64_t>(
      1, std::min<int64_t>(l.kv_heads, std::max(1u, std::thread::hardware_concurrency())));
  std::vector<std::thread> threads;
  for (int64_t j = 0; j < nt; ++j) {
    threads.emplace_back([&, j] {
      for (int64_t kvh = j; kvh < l.kv_heads; kvh += nt) head(kvh);
    });
  }
  for (auto& t : threads) t.join();
  return true;
}

}  // namespace plume::naive
