// The harness of gpu_attention_test.cc: device K/V caches, query and output
// buffers, one case against the FP64 reference on the dequantized cache
// (RunCase, with the worst error per kernel kept for the log) and the grid
// of shapes (Sweep).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "plume/cuda/attention.h"
#include "plume/kernels/half.h"
#include "plume/reference/attention.h"
#include "plume/reference/naive.h"

namespace plume::gpu_attention {

using cuda::AttentionKernel;


inline int DeviceCc() {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return 0;
  return prop.major * 10 + prop.minor;
}

inline std::vector<cuda::DecodePath> Paths() {
  if (DeviceCc() >= 89) return {cuda::DecodePath::kNative, cuda::DecodePath::kSoftware};
  return {cuda::DecodePath::kSoftware};
}

inline const char* PathName(cuda::DecodePath p) { return p == cuda::DecodePath::kNative ? "native" : "software"; }
inline const char* DTypeStr(DType t) { return t == DType::kF32 ? "f32" : t == DType::kF16 ? "f16" : "bf16"; }

// K/V values: normal, with a per-head and a slowly varying per-token
// magnitude so that the scale modes differ, and a few outliers.
inline std::vector<float> KvValues(int64_t heads, int64_t seq, int64_t dim, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(heads * seq * dim));
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t t = 0; t < seq; ++t) {
      const float mag = (1.0f + 0.5f * static_cast<float>(h)) * (1.0f + 0.7f * std::sin(0.01f * t));
      for (int64_t d = 0; d < dim; ++d) {
        float x = n(rng) * mag;
        if ((t * 131 + d * 7 + h) % 997 == 0) x *= 8.0f;
        v[static_cast<size_t>((h * seq + t) * dim + d)] = x;
      }
    }
  return v;
}

// Queries of dtype t: the values the kernel sees, as floats, and the bytes.
struct Queries {
  std::vector<float> f;
  std::vector<uint8_t> bytes;
};

inline Queries MakeQueries(int64_t n, DType t, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Queries q;
  q.f.resize(static_cast<size_t>(n));
  q.bytes.resize(static_cast<size_t>(n * DTypeSize(t)));
  for (int64_t i = 0; i < n; ++i) {
    const float x = dist(rng);
    if (t == DType::kF32) {
      q.f[i] = x;
      std::memcpy(q.bytes.data() + 4 * i, &x, 4);
    } else if (t == DType::kF16) {
      const uint16_t h = FloatToHalfBits(x);
      q.f[i] = HalfBitsToFloat(h);
      std::memcpy(q.bytes.data() + 2 * i, &h, 2);
    } else {
      const uint16_t h = FloatToBf16Bits(x);
      q.f[i] = Bf16BitsToFloat(h);
      std::memcpy(q.bytes.data() + 2 * i, &h, 2);
    }
  }
  return q;
}

inline float OutToFloat(const uint8_t* p, DType t, int64_t i) {
  if (t == DType::kF32) {
    float f;
    std::memcpy(&f, p + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p + 2 * i, 2);
  return t == DType::kF16 ? HalfBitsToFloat(h) : Bf16BitsToFloat(h);
}

// FP64 attention on the dequantized cache, the reference's definition
// (plume/reference/attention.h), threaded over query rows so the big grid
// stays fast. Checked against naive::Attention by
// GpuAttention.ParallelReferenceMatchesTheLibraryReference.
// F32 queries [batch][heads][q_len][head_dim] at q.
inline AttentionQueries F32Queries(const float* q, int64_t batch, int64_t heads, int64_t q_len,
                                   float scale, bool causal) {
  return AttentionQueries{q, DType::kF32, batch, heads, q_len, scale, causal};
}

inline std::vector<double> ParallelReference(const KvCacheView& c, const std::vector<float>& q,
                                             const AttentionQueries& p) {
  const int64_t kvh = c.layout.kv_heads, dim = c.layout.head_dim, seq = c.seq;
  std::vector<float> k(static_cast<size_t>(kvh * seq * dim)), v(k.size());
  ref::KvDequantize(c, k.data(), v.data());
  const int64_t rows = p.batch * p.heads * p.q_len;
  std::vector<double> out(static_cast<size_t>(rows * dim));
  const int64_t group = p.heads / kvh;
  auto work = [&](int64_t r0, int64_t r1) {
    std::vector<double> s(static_cast<size_t>(seq));
    for (int64_t row = r0; row < r1; ++row) {
      const int64_t i = row % p.q_len;
      const int64_t h = row / p.q_len % p.heads;
      const int64_t kh = h / group;
      const int64_t visible = p.causal ? seq - p.q_len + i + 1 : seq;
      const float* qr = q.data() + row * dim;
      double mx = -INFINITY;
      for (int64_t t = 0; t < visible; ++t) {
        const float* kr = k.data() + (kh * seq + t) * dim;
        double dot = 0.0;
        for (int64_t d = 0; d < dim; ++d) dot += double{qr[d]} * double{kr[d]};
        s[t] = dot * double{p.scale};
        mx = std::max(mx, s[t]);
      }
      double sum = 0.0;
      for (int64_t t = 0; t < visible; ++t) sum += (s[t] = std::exp(s[t] - mx));
      double* o = out.data() + row * dim;
      std::fill(o, o + dim, 0.0);
      for (int64_t t = 0; t < visible; ++t) {
        const float* vr = v.data() + (kh * seq + t) * dim;
        const double w = s[t] / sum;
        for (int64_t d = 0; d < dim; ++d) o[d] += w * double{vr[d]};
      }
    }
  };
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(rows, std::thread::hardware_concurrency()));
  std::vector<std::thread> threads;
  for (int64_t j = 0; j < nt; ++j) threads.emplace_back(work, rows * j / nt, rows * (j + 1) / nt);
  for (auto& t : threads) t.join();
  return out;
}

// A host cache copied to the device: one slab of pages, the page table and
// the cache-wide scales.
class DeviceKv {
 public:
  explicit DeviceKv(const ref::HostKvCache& h) {
    const KvLayout& l = h.layout();
    const int64_t pages = h.pages();
    const KvCacheView v = h.view();
    const int64_t g = std::max<int64_t>(l.global_scales(), 1);
    EXPECT_EQ(cudaMalloc(&slab_, static_cast<size_t>(pages * l.page_bytes())), cudaSuccess);
    EXPECT_EQ(cudaMalloc(&table_, static_cast<size_t>(pages) * sizeof(void*)), cudaSuccess);
    EXPECT_EQ(cudaMalloc(&scales_, static_cast<size_t>(2 * g) * 4), cudaSuccess);
    std::vector<const uint8_t*> ptrs;
    for (int64_t i = 0; i < pages; ++i) {
      uint8_t* dst = static_cast<uint8_t*>(slab_) + i * l.page_bytes();
      EXPECT_EQ(cudaMemcpy(dst, v.pages[i], static_cast<size_t>(l.page_bytes()), cudaMemcpyHostToDevice),
                cudaSuccess);
      ptrs.push_back(dst);
    }
    EXPECT_EQ(cudaMemcpy(table_, ptrs.data(), ptrs.size() * sizeof(void*), cudaMemcpyHostToDevice),
              cudaSuccess);
    if (l.global_scales() > 0) {
      EXPECT_EQ(cudaMemcpy(scales_, v.k_scales, static_cast<size_t>(l.global_scales()) * 4,
                           cudaMemcpyHostToDevice), cudaSuccess);
      EXPECT_EQ(cudaMemcpy(static_cast<float*>(scales_) + g, v.v_scales,
                           static_cast<size_t>(l.global_scales()) * 4, cudaMemcpyHostToDevice),
                cudaSuccess);
    }
    g_ = g;
  }
  ~DeviceKv() {
    cudaFree(slab_);
    cudaFree(table_);
    cudaFree(scales_);
  }
  const uint8_t* const* table() const { return static_cast<const uint8_t* const*>(table_); }
  const float* k_scales() const { return static_cast<const float*>(scales_); }
  const float* v_scales() const { return static_cast<const float*>(scales_) + g_; }

 private:
  void* slab_ = nullptr;
  void* table_ = nullptr;
  void* scales_ = nullptr;
  int64_t g_ = 1;
};

struct Case {
  int64_t head_dim, seq, q_len, kv_heads, heads, batch;
  bool causal;
  Fp8Format format;
  KvScaleMode mode;
  DType q_dtype, out_dtype;
};

inline std::string Describe(const Case& c) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), "D=%lld seq=%lld q_len=%lld heads=%lld/%lld batch=%lld %s %s %s q=%s out=%s",
                static_cast<long long>(c.head_dim), static_cast<long long>(c.seq),
                static_cast<long long>(c.q_len), static_cast<long long>(c.heads),
                static_cast<long long>(c.kv_heads), static_cast<long long>(c.batch),
                c.causal ? "causal" : "full", c.format == Fp8Format::kE4M3 ? "e4m3" : "e5m2",
                KvScaleModeName(c.mode), DTypeStr(c.q_dtype), DTypeStr(c.out_dtype));
  return buf;
}

// Rounding of the output dtype, on top of the kernel's own bound.
inline double OutputSlack(DType t) { return t == DType::kF32 ? 0.0 : t == DType::kF16 ? 5e-4 : 4e-3; }

struct Worst {
  double err = 0.0;
  std::string where;
  int runs = 0;
};
inline std::map<std::string, Worst>& WorstErrors() {
  static std::map<std::string, Worst> w;
  return w;
}

// Builds the cache (two appends, so TOKEN_BLOCK re-encodes a partly filled
// block when seq > 1), runs the kernel on every decode path with poisoned
// outputs, and checks against the FP64 reference.
inline void RunCase(const Case& c, AttentionKernel kernel, double bound, uint32_t seed) {
  SCOPED_TRACE(Describe(c));
  const KvLayout layout{c.kv_heads, c.head_dim, c.mode};
  ref::HostKvCache host(layout, c.format, true);
  const auto k = KvValues(c.kv_heads, c.seq, c.head_dim, seed);
  const auto v = KvValues(c.kv_heads, c.seq, c.head_dim, seed + 1);
  const int64_t first = c.seq > 1 ? c.seq * 2 / 3 : c.seq;
  auto slice = [&](const std::vector<float>& x, int64_t t0, int64_t n) {
    std::vector<float> s(static_cast<size_t>(c.kv_heads * n * c.head_dim));
    for (int64_t h = 0; h < c.kv_heads; ++h)
      std::copy_n(x.begin() + (h * c.seq + t0) * c.head_dim, n * c.head_dim,
                  s.begin() + h * n * c.head_dim);
    return s;
  };
  ASSERT_TRUE(host.Append(slice(k, 0, first).data(), slice(v, 0, first).data(), first));
  if (first < c.seq) {
    ASSERT_TRUE(host.Append(slice(k, first, c.seq - first).data(), slice(v, first, c.seq - first).data(),
                            c.seq - first));
  }
  const int64_t n = c.batch * c.heads * c.q_len * c.head_dim;
  const Queries q = MakeQueries(n, c.q_dtype, seed + 2);
  const AttentionQueries rp =
      F32Queries(q.f.data(), c.batch, c.heads, c.q_len,
                static_cast<float>(1.0 / std::sqrt(double(c.head_dim))) * 1.3f, c.causal);
  const std::vector<double> want = ParallelReference(host.view(), q.f, rp);

  DeviceKv dev(host);
  void *d_q = nullptr, *d_out = nullptr, *ws = nullptr;
  const size_t out_bytes = static_cast<size_t>(n * DTypeSize(c.out_dtype));
  ASSERT_EQ(cudaMalloc(&d_q, q.bytes.size()), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d_out, out_bytes), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(d_q, q.bytes.data(), q.bytes.size(), cudaMemcpyHostToDevice), cudaSuccess);
  // A decode runs with either merge of its splits: the combine kernel (the
  // default) and the fused merge in the last blocks (one_launch).
  std::vector<bool> merges{false};
  if (kernel == AttentionKernel::kDecode) merges.push_back(true);
  for (cuda::DecodePath path : Paths()) {
    for (const bool one_launch : merges) {
      SCOPED_TRACE(std::string(PathName(path)) + (one_launch ? " one launch" : " two launches"));
      cuda::AttentionProblem p;
      p.layout = layout;
      p.format = c.format;
      p.pages = dev.table();
      p.k_scales = dev.k_scales();
      p.v_scales = dev.v_scales();
      p.seq = c.seq;
      p.q = d_q;
      p.q_dtype = c.q_dtype;
      p.batch = c.batch;
      p.heads = c.heads;
      p.q_len = c.q_len;
      p.scale = rp.scale;
      p.causal = c.causal;
      p.out = d_out;
      p.out_dtype = c.out_dtype;
      p.path = path;
      p.kernel = kernel;
      p.one_launch = one_launch;
      const int64_t ws_bytes = cuda::AttentionWorkspaceBytes(p, 0);
      ASSERT_GT(ws_bytes, 0) << "kernel unavailable for this shape on this device";
      ASSERT_EQ(cudaMalloc(&ws, static_cast<size_t>(ws_bytes)), cudaSuccess);
      ASSERT_EQ(cudaMemset(ws, 0, static_cast<size_t>(ws_bytes)), cudaSuccess);  // once, as the contract says
      // Twice on one workspace: the second launch finds the counters the first
      // left (zero, or it would merge too early or never) and gives the same bytes.
      std::vector<uint8_t> got(out_bytes), again(out_bytes);
      for (std::vector<uint8_t>* dst : {&got, &again}) {
        ASSERT_EQ(cudaMemset(d_out, 0xff, out_bytes), cudaSuccess);  // NaN in every dtype
        ASSERT_EQ(cuda::Attention(p, ws, ws_bytes, nullptr), cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        ASSERT_EQ(cudaMemcpy(dst->data(), d_out, out_bytes, cudaMemcpyDeviceToHost), cudaSuccess);
      }
      cudaFree(ws);
      ws = nullptr;
      EXPECT_EQ(got, again) << "a second launch on the same workspace differs";
      double num = 0.0, den = 0.0;
      int64_t unwritten = 0;
      for (int64_t i = 0; i < n; ++i) {
        const double g = OutToFloat(got.data(), c.out_dtype, i);
        if (!std::isfinite(g)) ++unwritten;
        num += (g - want[i]) * (g - want[i]);
        den += want[i] * want[i];
      }
      EXPECT_EQ(unwritten, 0) << "elements left NaN (unwritten) or non-finite";
      const double err = std::sqrt(num / std::max(den, 1e-300));
      EXPECT_LE(err, bound + OutputSlack(c.out_dtype));
      const std::string key = std::string(kernel == AttentionKernel::kPrefill          ? "prefill"
                                          : kernel == AttentionKernel::kPrefillMmaSync ? "prefill-mma.sync"
                                          : kernel == AttentionKernel::kPrefillImages  ? "prefill-images"
                                                                                       : "decode") +
                              (one_launch ? "-1launch " : " ") + PathName(path) +
                              " out=" + DTypeStr(c.out_dtype);
      if (c.seq >= 65536) {
        std::printf("rel. L2 error at %lld tokens [%s]: %.3g (%s)\n", static_cast<long long>(c.seq),
                    key.c_str(), err, Describe(c).c_str());
      }
      Worst& w = WorstErrors()[key];
      ++w.runs;
      if (err >= w.err) {
        w.err = err;
        w.where = Describe(c);
      }
    }
  }
  cudaFree(d_q);
  cudaFree(d_out);
}

inline void PrintWorst(const char* kernel) {
  for (const auto& [k, w] : WorstErrors()) {
    if (k.rfind(kernel, 0) != 0) continue;
    std::printf("worst rel. L2 error [%s]: %.3g over %d runs, at %s\n", k.c_str(), w.err, w.runs,
                w.where.c_str());
  }
}

inline constexpr Fp8Format kFormats[] = {Fp8Format::kE4M3, Fp8Format::kE5M2};
inline constexpr KvScaleMode kModes[] = {KvScaleMode::kNone, KvScaleMode::kTensor, KvScaleMode::kHead,
                                  KvScaleMode::kTokenBlock};
inline constexpr DType kDTypes[] = {DType::kF32, DType::kF16, DType::kBF16};

// The full grid of shapes; format, scale mode and dtypes rotate with the case
// number so that every combination of them appears across the grid.
inline void Sweep(AttentionKernel kernel, std::initializer_list<int64_t> q_lens, double bound,
           std::initializer_list<int64_t> dims = {64, 128, 256, 512}) {
  int idx = 0;
  for (int64_t dim : dims)
    for (int64_t seq : {1, 63, 64, 65, 1000, 4097})
      for (int64_t q_len : q_lens)
        for (bool causal : {false, true})
          for (bool gqa : {false, true}) {
            if (causal && q_len > seq) continue;
            const bool decode = kernel == AttentionKernel::kDecode;
            Case c{};
            c.head_dim = dim;
            c.seq = seq;
            c.q_len = q_len;
            c.kv_heads = 2;
            c.heads = gqa ? (decode ? 8 : 4) : 2;
            c.batch = decode ? 2 : 1;
            c.causal = causal;
            c.format = kFormats[idx % 2];
            c.mode = kModes[idx / 2 % 4];
            c.q_dtype = kDTypes[idx / 8 % 3];
            c.out_dtype = kDTypes[(idx / 3 + idx) % 3];
            RunCase(c, kernel, bound, 1000 + idx);
            ++idx;
            if (::testing::Test::HasFatalFailure()) return;  // a CUDA error: later cases would only repeat it
          }
}

}  // namespace plume::gpu_attention
