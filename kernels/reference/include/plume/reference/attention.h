// Attention over a paged FP8 K/V cache (plume/kernels/kv_layout.h): quantized
// appends and the fast multithreaded FP32 path the CPU backend serves. The
// definition of right it is tested against is naive::Attention
// (plume/reference/naive.h), apart. Callers validate shapes
// first (server/core does).
//
// For queries q [batch, heads, q_len, head_dim] against a cache of `seq`
// tokens with kv_heads heads (heads a multiple of kv_heads; query head h reads
// kv head h / (heads / kv_heads)):
//   out[b,h,i] = sum_t softmax_t(scale * q[b,h,i] . K[kvh,t]) * V[kvh,t]
// where K and V are the dequantized cache. Causal: query i sits at position
// seq - q_len + i and sees tokens t <= that position. The softmax subtracts
// the running row maximum (online softmax), so it never overflows; tokens
// past seq or masked out take no part (they are -inf, never zero scores).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "plume/kernels/kv_layout.h"
#include "plume/kernels/problem.h"
#include "plume/kernels/types.h"

namespace plume {
class ThreadPool;
}

namespace plume::ref {

// A cache to append to: `pages` cover at least seq + tokens tokens, and the
// pages past seq's last one are zero-filled.
struct KvCacheMut {
  KvLayout layout;
  Fp8Format format = Fp8Format::kE4M3;
  bool saturate = true;
  uint8_t* const* pages = nullptr;
  float* k_scales = nullptr;  // written when seq == 0 (TENSOR, HEAD)
  float* v_scales = nullptr;
  int64_t seq = 0;
};

// Quantizes `tokens` new tokens onto the end of the cache. k and v are
// [kv_heads][tokens][head_dim] floats. Scales follow kv_layout.h: with seq ==
// 0, TENSOR/HEAD scales are computed from these tokens (amax / fp8_max over
// the finite values, as ComputeScales); TOKEN_BLOCK blocks get the scale of
// their tokens' amax, and a partly filled block whose new tokens need a larger
// scale is re-encoded with it. The caller then counts seq += tokens.
void KvAppend(const KvCacheMut& cache, const float* k, const float* v, int64_t tokens);

// Writes the dequantized K and V ([kv_heads][seq][head_dim] floats each).
void KvDequantize(const KvCacheView& cache, float* k, float* v);

// A K/V cache in host memory: page allocations (kKvPageAlign-aligned,
// zero-filled), the page table and the cache-wide scales. The CPU backend's
// storage, and the tests'. Not thread-safe: callers order Append against
// readers of view().
class HostKvCache {
 public:
  HostKvCache(KvLayout layout, Fp8Format format, bool saturate = true);
  ~HostKvCache();
  HostKvCache(const HostKvCache&) = delete;
  HostKvCache& operator=(const HostKvCache&) = delete;
  HostKvCache(HostKvCache&&) noexcept;

  // Allocates the pages `tokens` tokens need in all; false when out of memory.
  bool Reserve(int64_t tokens);
  // Reserve(seq + tokens), then KvAppend. k, v: [kv_heads][tokens][head_dim].
  bool Append(const float* k, const float* v, int64_t tokens);

  KvCacheView view() const;
  // Replaces the contents of an empty cache (seq 0) with `seq` tokens: copies
  // pages_for(seq) pages of layout().page_bytes() bytes each, and the
  // cache-wide scales (layout().global_scales() floats each). False when out
  // of memory. For stored caches (the server's durable store).
  bool Restore(int64_t seq, const uint8_t* pages, const float* k_scales, const float* v_scales);
  int64_t seq() const { return seq_; }
  int64_t pages() const { return static_cast<int64_t>(pages_.size()); }
  const KvLayout& layout() const { return layout_; }

 private:
  KvLayout layout_;
  Fp8Format format_;
  bool saturate_;
  std::vector<uint8_t*> pages_;  // owned
  std::vector<float> k_scales_, v_scales_;
  int64_t seq_ = 0;
};

// The fast path the CPU backend serves: FP32 online softmax over page tiles;
// each page's K/V rows are decoded once per kv head for all the query rows
// that share it (GQA groups, batch and q_len). Typed queries (F32/F16/BF16)
// and outputs (F32/F16/BF16, RNE). Relative L2 error against
// naive::Attention <= 1e-5 for F32 outputs (tests/kernels/attention_test.cc).
// Host memory. pool == nullptr: ThreadPool::Default(). False, with nothing
// written, for a format, K/V scale mode or dtype outside its enum.
bool Attention(const AttentionProblem& p, ThreadPool* pool = nullptr);

}  // namespace plume::ref
