// Attention over the paged FP8 K/V cache: appends (quantization),
// dequantization and the FP32 CPU path (the FP64 reference is apart, in
// naive.cc). Layout: plume/kernels/kv_layout.h.
#include "plume/reference/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "plume/kernels/fp8.h"
#include "plume/reference/api.h"
#include "plume/reference/thread_pool.h"

namespace plume {

const char* KvScaleModeName(KvScaleMode m) {
  switch (m) {
    case KvScaleMode::kNone: return "none";
    case KvScaleMode::kTensor: return "tensor";
    case KvScaleMode::kHead: return "head";
    case KvScaleMode::kTokenBlock: return "block";
  }
  return "unknown";
}

namespace ref {
namespace {

ThreadPool& PoolOr(ThreadPool* pool) { return pool ? *pool : ThreadPool::Default(); }

// The scale of a group of n floats: amax / fp8_max over its finite values (as
// ComputeScales, with one TENSOR group).
float GroupScale(const float* x, int64_t n, Fp8Format f) {
  float s = 1.0f;
  ComputeScales(x, 1, n, ScaleMode::kTensor, f, &s);
  return s;
}

void EncodeRow(const float* x, int64_t n, float scale, Fp8Format f, bool saturate, uint8_t* row) {
  for (int64_t d = 0; d < n; ++d) row[d] = fp8::Encode(x[d] / scale, f, saturate);
}

// TOKEN_BLOCK: stores tokens [t, t + n) of head `head` (source rows `src`,
// stride head_dim) into the block that holds cache positions [pos, pos + n),
// which already holds `within` tokens.
void AppendBlock(const KvCacheMut& c, uint8_t* page, bool is_v, int64_t head, int64_t within,
                 const float* src, int64_t n) {
  const KvLayout& l = c.layout;
  const int64_t dim = l.head_dim;
  float& scale = KvPageScales(page, l)[is_v ? l.v_scale_index(head) : l.k_scale_index(head)];
  auto row = [&](int64_t t) {
    return page + (is_v ? l.v_row_offset(head, t) : l.k_row_offset(head, t));
  };
  const float need = GroupScale(src, n * dim, c.format);
  float s = need;
  if (within > 0) {
    const float old = scale;
    bool all_zero = true;
    for (int64_t t = 0; t < within && all_zero; ++t)
      for (int64_t d = 0; d < dim; ++d) all_zero &= (row(t)[d] & 0x7f) == 0;
    if (need > old && !all_zero) {
      // Re-encode the block's earlier tokens with the larger scale.
      for (int64_t t = 0; t < within; ++t) {
        uint8_t* r = row(t);
        for (int64_t d = 0; d < dim; ++d)
          r[d] = fp8::Encode(fp8::Decode(r[d], c.format) * old / need, c.format, c.saturate);
      }
    } else if (!all_zero) {
      s = old;
    }
  }
  scale = s;
  for (int64_t t = 0; t < n; ++t) EncodeRow(src + t * dim, dim, s, c.format, c.saturate, row(within + t));
}

void AppendOne(const KvCacheMut& c, bool is_v, const float* x, int64_t tokens) {
  const KvLayout& l = c.layout;
  const int64_t dim = l.head_dim;
  float* global = is_v ? c.v_scales : c.k_scales;
  if (c.seq == 0) {
    if (l.scale_mode == KvScaleMode::kTensor) {
      global[0] = GroupScale(x, l.kv_heads * tokens * dim, c.format);
    } else if (l.scale_mode == KvScaleMode::kHead) {
      for (int64_t h = 0; h < l.kv_heads; ++h)
        global[h] = GroupScale(x + h * tokens * dim, tokens * dim, c.format);
    }
  }
  for (int64_t h = 0; h < l.kv_heads; ++h) {
    const float* src = x + h * tokens * dim;
    for (int64_t t = 0; t < tokens;) {
      const int64_t pos = c.seq + t;
      uint8_t* page = c.pages[pos / kKvPageTokens];
      const int64_t within = pos % kKvPageTokens;
      const int64_t n = std::min(tokens - t, kKvPageTokens - within);
      if (l.scale_mode == KvScaleMode::kTokenBlock) {
        AppendBlock(c, page, is_v, h, within, src + t * dim, n);
      } else {
        const float s = l.scale_mode == KvScaleMode::kNone     ? 1.0f
                        : l.scale_mode == KvScaleMode::kTensor ? global[0]
                                                               : global[h];
        for (int64_t i = 0; i < n; ++i) {
          uint8_t* row = page + (is_v ? l.v_row_offset(h, within + i) : l.k_row_offset(h, within + i));
          EncodeRow(src + (t + i) * dim, dim, s, c.format, c.saturate, row);
        }
      }
      t += n;
    }
  }
}

struct DecodeLut {
  float v[2][256];
  DecodeLut() {
    for (int c = 0; c < 256; ++c) {
      v[0][c] = fp8::Decode(static_cast<uint8_t>(c), Fp8Format::kE4M3);
      v[1][c] = fp8::Decode(static_cast<uint8_t>(c), Fp8Format::kE5M2);
    }
  }
  const float* For(Fp8Format f) const { return v[f == Fp8Format::kE4M3 ? 0 : 1]; }
};
const DecodeLut& Lut() {
  static const DecodeLut lut;
  return lut;
}

const uint8_t* Row(const KvCacheView& c, bool is_v, int64_t head, int64_t token) {
  const uint8_t* page = c.pages[token / kKvPageTokens];
  const int64_t t = token % kKvPageTokens;
  return page + (is_v ? c.layout.v_row_offset(head, t) : c.layout.k_row_offset(head, t));
}

// Whether p holds only values the code paths here are chosen for (a cast
// from a wire or file value may be anything).
bool Known(const AttentionProblem& p) {
  auto wide = [](DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; };
  const KvScaleMode m = p.layout.scale_mode;
  return (p.format == Fp8Format::kE4M3 || p.format == Fp8Format::kE5M2) &&
         (m == KvScaleMode::kNone || m == KvScaleMode::kTensor || m == KvScaleMode::kHead ||
          m == KvScaleMode::kTokenBlock) &&
         wide(p.q_dtype) && wide(p.out_dtype);
}

// The number of cache tokens query i may see.
int64_t VisibleTokens(const KvCacheView& c, const AttentionQueries& p, int64_t i) {
  return p.causal ? c.seq - p.q_len + i + 1 : c.seq;
}

}  // namespace

void KvAppend(const KvCacheMut& cache, const float* k, const float* v, int64_t tokens) {
  if (tokens <= 0) return;
  AppendOne(cache, false, k, tokens);
  AppendOne(cache, true, v, tokens);
}

HostKvCache::HostKvCache(KvLayout layout, Fp8Format format, bool saturate)
    : layout_(layout),
      format_(format),
      saturate_(saturate),
      k_scales_(static_cast<size_t>(layout.global_scales()), 1.0f),
      v_scales_(k_scales_.size(), 1.0f) {}

HostKvCache::~HostKvCache() {
  for (uint8_t* p : pages_) std::free(p);
}

HostKvCache::HostKvCache(HostKvCache&& o) noexcept
    : layout_(o.layout_),
      format_(o.format_),
      saturate_(o.saturate_),
      pages_(std::move(o.pages_)),
      k_scales_(std::move(o.k_scales_)),
      v_scales_(std::move(o.v_scales_)),
      seq_(o.seq_) {
  o.pages_.clear();
  o.seq_ = 0;
}

bool HostKvCache::Reserve(int64_t tokens) {
  const size_t bytes = static_cast<size_t>(layout_.page_bytes());
  while (pages() < KvLayout::pages_for(tokens)) {
    void* p = std::aligned_alloc(static_cast<size_t>(kKvPageAlign), bytes);
    if (p == nullptr) return false;
    std::memset(p, 0, bytes);
    pages_.push_back(static_cast<uint8_t*>(p));  // the table grows geometrically
  }
  return true;
}

bool HostKvCache::Append(const float* k, const float* v, int64_t tokens) {
  if (!Reserve(seq_ + tokens)) return false;
  KvAppend({layout_, format_, saturate_, pages_.data(), k_scales_.data(), v_scales_.data(), seq_}, k, v,
           tokens);
  seq_ += tokens;
  return true;
}

bool HostKvCache::Restore(int64_t seq, const uint8_t* pages, const float* k_scales,
                          const float* v_scales) {
  if (seq_ != 0 || !Reserve(seq)) return false;
  const size_t bytes = static_cast<size_t>(layout_.page_bytes());
  for (int64_t p = 0; p < KvLayout::pages_for(seq); ++p) {
    std::memcpy(pages_[static_cast<size_t>(p)], pages + static_cast<size_t>(p) * bytes, bytes);
  }
  std::copy(k_scales, k_scales + k_scales_.size(), k_scales_.begin());
  std::copy(v_scales, v_scales + v_scales_.size(), v_scales_.begin());
  seq_ = seq;
  return true;
}

KvCacheView HostKvCache::view() const {
  return {layout_, format_, pages_.data(), k_scales_.data(), v_scales_.data(), seq_};
}

void KvDequantize(const KvCacheView& c, float* k, float* v) {
  const KvLayout& l = c.layout;
  const int64_t dim = l.head_dim;
  for (int64_t h = 0; h < l.kv_heads; ++h)
    for (int64_t t = 0; t < c.seq; ++t) {
      const float ks = KvScaleAt(l, c.pages, c.k_scales, c.v_scales, false, h, t);
      const float vs = KvScaleAt(l, c.pages, c.k_scales, c.v_scales, true, h, t);
      const uint8_t* kr = Row(c, false, h, t);
      const uint8_t* vr = Row(c, true, h, t);
      for (int64_t d = 0; d < dim; ++d) {
        k[(h * c.seq + t) * dim + d] = fp8::Decode(kr[d], c.format) * ks;
        v[(h * c.seq + t) * dim + d] = fp8::Decode(vr[d], c.format) * vs;
      }
    }
}

namespace {

// Query rows per task of the FP32 path: the rows that share a decoded tile.
constexpr int64_t kRowsPerTask = 8;

struct F32Task {
  const KvCacheView* c;
  const float* q;
  const AttentionQueries* p;
  float* out;
};

// q . k in FP32 with 16 independent partial sums, so the compiler can keep
// them in vector registers (a single running sum cannot be vectorized
// without reassociating it).
float Dot(const float* q, const float* k, int64_t n) {
  constexpr int L = 16;
  float part[L] = {};
  int64_t d = 0;
  for (; d + L <= n; d += L)
    for (int l = 0; l < L; ++l) part[l] += q[d + l] * k[d + l];
  float dot = 0.0f;
  for (int l = 0; l < L; ++l) dot += part[l];
  for (; d < n; ++d) dot += q[d] * k[d];
  return dot;
}

// Rows [r0, r1) of kv head kvh's rows, ordered (batch, head in group, i).
void RunRows(const F32Task& a, int64_t kvh, int64_t r0, int64_t r1) {
  const KvCacheView& c = *a.c;
  const AttentionQueries& p = *a.p;
  const KvLayout& l = c.layout;
  const int64_t dim = l.head_dim, group = p.heads / l.kv_heads;
  const int64_t nr = r1 - r0;
  const float* lut = Lut().For(c.format);
  const float neg_inf = -std::numeric_limits<float>::infinity();

  std::vector<const float*> qrow(static_cast<size_t>(nr));
  std::vector<float*> orow(static_cast<size_t>(nr));
  std::vector<int64_t> limit(static_cast<size_t>(nr));
  int64_t max_limit = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t i = r % p.q_len, g = (r / p.q_len) % group, b = r / (p.q_len * group);
    const int64_t row = (b * p.heads + kvh * group + g) * p.q_len + i;
    qrow[size_t(r - r0)] = a.q + row * dim;
    orow[size_t(r - r0)] = a.out + row * dim;
    limit[size_t(r - r0)] = VisibleTokens(c, p, i);
    max_limit = std::max(max_limit, limit[size_t(r - r0)]);
  }
  std::vector<float> m(size_t(nr), neg_inf), sum(size_t(nr), 0.0f);
  std::vector<float> acc(size_t(nr * dim), 0.0f);
  std::vector<float> kt(size_t(kKvPageTokens * dim)), vt(kt.size()), s(static_cast<size_t>(kKvPageTokens));

  for (int64_t t0 = 0; t0 < max_limit; t0 += kKvPageTokens) {
    const int64_t n = std::min(kKvPageTokens, max_limit - t0);
    const uint8_t* page = c.pages[t0 / kKvPageTokens];
    for (int64_t t = 0; t < n; ++t) {
      const uint8_t* kr = page + l.k_row_offset(kvh, t);
      const uint8_t* vr = page + l.v_row_offset(kvh, t);
      float* kd = kt.data() + t * dim;
      float* vd = vt.data() + t * dim;
      for (int64_t d = 0; d < dim; ++d) kd[d] = lut[kr[d]];
      for (int64_t d = 0; d < dim; ++d) vd[d] = lut[vr[d]];
    }
    const float ks = KvScaleAt(l, c.pages, c.k_scales, c.v_scales, false, kvh, t0) * p.scale;
    const float vs = KvScaleAt(l, c.pages, c.k_scales, c.v_scales, true, kvh, t0);
    for (int64_t r = 0; r < nr; ++r) {
      const int64_t nt = std::min(n, limit[size_t(r)] - t0);
      if (nt <= 0) continue;
      const float* qr = qrow[size_t(r)];
      float mnew = m[size_t(r)];
      for (int64_t t = 0; t < nt; ++t) {
        s[size_t(t)] = Dot(qr, kt.data() + t * dim, dim) * ks;
        mnew = std::max(mnew, s[size_t(t)]);
      }
      // Rescale what was accumulated under the old maximum (0 on the first tile).
      const float corr = std::exp(m[size_t(r)] - mnew);
      float* ar = acc.data() + r * dim;
      float l_sum = sum[size_t(r)] * corr;
      for (int64_t d = 0; d < dim; ++d) ar[d] *= corr;
      for (int64_t t = 0; t < nt; ++t) {
        const float e = std::exp(s[size_t(t)] - mnew);
        l_sum += e;
        const float w = e * vs;
        const float* vd = vt.data() + t * dim;
        for (int64_t d = 0; d < dim; ++d) ar[d] += w * vd[d];
      }
      sum[size_t(r)] = l_sum;
      m[size_t(r)] = mnew;
    }
  }
  for (int64_t r = 0; r < nr; ++r) {
    const float inv = 1.0f / sum[size_t(r)];
    for (int64_t d = 0; d < dim; ++d) orow[size_t(r)][d] = acc[size_t(r * dim + d)] * inv;
  }
}

// The fast path: FP32 online softmax over page tiles; each page's K/V rows are
// decoded once per kv head for all the query rows that share it (GQA groups,
// batch and q_len). F32 queries and outputs (Attention converts).
void AttentionF32(const KvCacheView& c, const float* q, const AttentionQueries& p, float* out,
                  ThreadPool* pool) {
  const KvLayout& l = c.layout;
  if (p.batch <= 0 || p.heads <= 0 || p.q_len <= 0 || c.seq <= 0) return;
  const int64_t rows = p.batch * (p.heads / l.kv_heads) * p.q_len;  // per kv head
  const int64_t chunks = (rows + kRowsPerTask - 1) / kRowsPerTask;
  const F32Task a{&c, q, &p, out};
  auto body = [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t kvh = t / chunks, r0 = (t % chunks) * kRowsPerTask;
      RunRows(a, kvh, r0, std::min(rows, r0 + kRowsPerTask));
    }
  };
  const int64_t tasks = l.kv_heads * chunks;
  // Tiny problems run inline: the pool's hand-off costs more than they do.
  if (rows * l.kv_heads * c.seq * l.head_dim < (int64_t{1} << 16)) {
    body(0, tasks);
  } else {
    PoolOr(pool).ParallelFor(tasks, 1, body);
  }
}

}  // namespace

bool Attention(const AttentionProblem& p, ThreadPool* pool) {
  if (!Known(p)) return false;
  const KvCacheView& c = p;
  const int64_t n = p.batch * p.heads * p.q_len * c.layout.head_dim;
  std::vector<float> qf;
  const float* qs = static_cast<const float*>(p.q);
  if (p.q_dtype != DType::kF32) {
    qf.resize(static_cast<size_t>(n));
    ToFloat(p.q, p.q_dtype, 1.0f, n, qf.data());
    qs = qf.data();
  }
  if (p.out_dtype == DType::kF32) {
    AttentionF32(c, qs, p, static_cast<float*>(p.out), pool);
    return true;
  }
  std::vector<float> of(static_cast<size_t>(n));
  AttentionF32(c, qs, p, of.data(), pool);
  return FromFloat(of.data(), n, p.out_dtype, p.out);
}

}  // namespace ref
}  // namespace plume
