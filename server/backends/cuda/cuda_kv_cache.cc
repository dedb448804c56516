// The CUDA backend's K/V caches (pages in device memory) and attention.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "absl/strings/str_cat.h"
#include "plume/cuda/attention.h"
#include "plume/reference/api.h"
#include "plume/reference/attention.h"
#include "server/backends/cuda/cuda_backend.h"
#include "server/backends/cuda/cuda_internal.h"

namespace plume::core {
namespace {

using namespace cuda_internal;

// A K/V cache in device pages: slabs of whole pages (one per append that
// needs new pages), the device page table (capacity grows geometrically) and
// the cache-wide scales, on the device and mirrored on the host.
class CudaKvCache final : public BackendKvCache {
 public:
  explicit CudaKvCache(const KvShape& shape)
      : BackendKvCache(shape),
        k_scales_(static_cast<size_t>(shape.layout().global_scales()), 1.0f),
        v_scales_(k_scales_.size(), 1.0f) {}

  absl::Status Init() {
    const int64_t n = std::max<int64_t>(shape().layout().global_scales(), 1);
    PLUME_RETURN_IF_CUDA(scales_.Allocate(2 * n * 4), "allocating K/V scales");
    return absl::OkStatus();
  }

  int64_t seq() const override { return seq_; }
  const uint8_t* const* table() const { return static_cast<const uint8_t* const*>(table_.p); }
  const float* k_scales_dev() const { return static_cast<const float*>(scales_.p); }
  const float* v_scales_dev() const {
    return k_scales_dev() + std::max<int64_t>(shape().layout().global_scales(), 1);
  }

  // Quantizes `tokens` tokens (k, v: [kv_heads][tokens][head_dim] floats) onto
  // the end of the cache, on `stream`; returns when they are on the device.
  absl::Status Append(const float* k, const float* v, int64_t tokens, cudaStream_t stream) {
    const KvLayout l = shape().layout();
    const int64_t page_bytes = l.page_bytes();
    const int64_t total_pages = KvLayout::pages_for(seq_ + tokens);
    const int64_t have = static_cast<int64_t>(pages_.size());
    const int64_t first = seq_ / kKvPageTokens;  // the first page written
    const int64_t touched = total_pages - first;
    const bool partial = seq_ % kKvPageTokens != 0;

    // Host copies of the touched pages: the partly filled one from the
    // device, new ones zero.
    std::vector<uint8_t> host;
    try {
      host.assign(static_cast<size_t>(touched * page_bytes), 0);
    } catch (const std::bad_alloc&) {
      return absl::ResourceExhaustedError("cuda backend: cannot stage the appended K/V pages");
    }
    if (partial) {
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(host.data(), pages_[first], static_cast<size_t>(page_bytes),
                                           cudaMemcpyDeviceToHost, stream),
                           "reading the last K/V page");
      PLUME_RETURN_IF_CUDA(cudaStreamSynchronize(stream), "reading the last K/V page");
    }
    std::vector<uint8_t*> host_pages(static_cast<size_t>(total_pages), nullptr);
    for (int64_t i = 0; i < touched; ++i) host_pages[first + i] = host.data() + i * page_bytes;
    ref::KvAppend({l, shape().format, shape().saturate, host_pages.data(), k_scales_.data(),
                   v_scales_.data(), seq_},
                  k, v, tokens);

    // New pages: one slab, written whole from the host pages; the partly
    // filled page goes back where it was.
    const int64_t fresh = total_pages - have;
    auto slab = std::make_unique<DeviceAlloc>();
    std::vector<uint8_t*> new_pages;
    if (fresh > 0) {
      PLUME_RETURN_IF_CUDA(slab->Allocate(fresh * page_bytes), absl::StrCat("allocating ", fresh, " K/V pages"));
      for (int64_t i = 0; i < fresh; ++i) new_pages.push_back(static_cast<uint8_t*>(slab->p) + i * page_bytes);
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(slab->p, host_pages[have], static_cast<size_t>(fresh * page_bytes),
                                           cudaMemcpyHostToDevice, stream),
                           "copying K/V pages to the device");
    }
    if (partial) {
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(pages_[first], host_pages[first], static_cast<size_t>(page_bytes),
                                           cudaMemcpyHostToDevice, stream),
                           "copying K/V pages to the device");
    }
    if (seq_ == 0 && l.global_scales() > 0) {
      const size_t n = static_cast<size_t>(l.global_scales()) * 4;
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(scales_.p, k_scales_.data(), n, cudaMemcpyHostToDevice, stream),
                           "copying K/V scales to the device");
      float* v_dev = static_cast<float*>(scales_.p) + std::max<int64_t>(l.global_scales(), 1);
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(v_dev, v_scales_.data(), n,
                                           cudaMemcpyHostToDevice, stream),
                           "copying K/V scales to the device");
    }
    // The page table, grown geometrically (rewritten whole when it moves).
    std::vector<uint8_t*> all = pages_;
    all.insert(all.end(), new_pages.begin(), new_pages.end());
    DeviceAlloc grown;
    int64_t from = have;
    if (total_pages > table_cap_) {
      const int64_t cap = std::max<int64_t>(total_pages, std::max<int64_t>(16, table_cap_ * 2));
      PLUME_RETURN_IF_CUDA(grown.Allocate(cap * int64_t{sizeof(uint8_t*)}), "allocating the K/V page table");
      from = 0;
    }
    void* table = grown.p != nullptr ? grown.p : table_.p;
    if (total_pages > from) {
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(static_cast<uint8_t**>(table) + from, all.data() + from,
                                           static_cast<size_t>(total_pages - from) * sizeof(uint8_t*),
                                           cudaMemcpyHostToDevice, stream),
                           "copying the K/V page table");
    }
    PLUME_RETURN_IF_CUDA(cudaStreamSynchronize(stream), "appending K/V");
    if (grown.p != nullptr) {
      std::swap(table_.p, grown.p);
      table_cap_ = std::max<int64_t>(total_pages, std::max<int64_t>(16, table_cap_ * 2));
    }
    if (slab->p != nullptr) slabs_.push_back(std::move(slab));
    pages_ = std::move(all);
    seq_ += tokens;
    return absl::OkStatus();
  }

  // Pages [first, first + num) to host memory, and the cache-wide scales.
  absl::Status Read(int64_t first, int64_t num, uint8_t* pages, float* k_scales, float* v_scales,
                    cudaStream_t stream) const {
    const int64_t page_bytes = shape().layout().page_bytes();
    if (first < 0 || num < 0 || first + num > static_cast<int64_t>(pages_.size())) {
      return absl::OutOfRangeError(absl::StrCat("cuda backend: pages [", first, ", ", first + num,
                                                ") of a cache of ", pages_.size(), " pages"));
    }
    for (int64_t i = 0; i < num; ++i) {
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(pages + i * page_bytes, pages_[first + i],
                                           static_cast<size_t>(page_bytes), cudaMemcpyDeviceToHost,
                                           stream),
                           "reading K/V pages");
    }
    if (k_scales != nullptr) std::copy(k_scales_.begin(), k_scales_.end(), k_scales);
    if (v_scales != nullptr) std::copy(v_scales_.begin(), v_scales_.end(), v_scales);
    PLUME_RETURN_IF_CUDA(cudaStreamSynchronize(stream), "reading K/V pages");
    return absl::OkStatus();
  }

  // A fresh cache takes `seq` tokens of stored pages (Read's layout) and the
  // cache-wide scales.
  absl::Status Restore(int64_t seq, const uint8_t* pages, const float* k_scales,
                       const float* v_scales, cudaStream_t stream) {
    const KvLayout l = shape().layout();
    const int64_t n_pages = KvLayout::pages_for(seq);
    const int64_t page_bytes = l.page_bytes();
    if (l.global_scales() > 0) {
      std::copy(k_scales, k_scales + l.global_scales(), k_scales_.begin());
      std::copy(v_scales, v_scales + l.global_scales(), v_scales_.begin());
      const size_t n = static_cast<size_t>(l.global_scales()) * 4;
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(scales_.p, k_scales_.data(), n, cudaMemcpyHostToDevice, stream),
                           "copying K/V scales to the device");
      float* v_dev = static_cast<float*>(scales_.p) + std::max<int64_t>(l.global_scales(), 1);
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(v_dev, v_scales_.data(), n, cudaMemcpyHostToDevice, stream),
                           "copying K/V scales to the device");
    }
    if (n_pages > 0) {
      auto slab = std::make_unique<DeviceAlloc>();
      PLUME_RETURN_IF_CUDA(slab->Allocate(n_pages * page_bytes),
                           absl::StrCat("allocating ", n_pages, " K/V pages"));
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(slab->p, pages, static_cast<size_t>(n_pages * page_bytes),
                                           cudaMemcpyHostToDevice, stream),
                           "copying K/V pages to the device");
      const int64_t cap = std::max<int64_t>(n_pages, 16);
      PLUME_RETURN_IF_CUDA(table_.Allocate(cap * int64_t{sizeof(uint8_t*)}), "allocating the K/V page table");
      table_cap_ = cap;
      for (int64_t i = 0; i < n_pages; ++i) pages_.push_back(static_cast<uint8_t*>(slab->p) + i * page_bytes);
      PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(table_.p, pages_.data(),
                                           static_cast<size_t>(n_pages) * sizeof(uint8_t*),
                                           cudaMemcpyHostToDevice, stream),
                           "copying the K/V page table");
      slabs_.push_back(std::move(slab));
    }
    PLUME_RETURN_IF_CUDA(cudaStreamSynchronize(stream), "restoring a K/V cache");
    seq_ = seq;
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<DeviceAlloc>> slabs_;
  std::vector<uint8_t*> pages_;  // device pointers into slabs_, in token order
  DeviceAlloc table_;            // device copy of pages_
  int64_t table_cap_ = 0;
  DeviceAlloc scales_;           // K then V cache-wide scales
  std::vector<float> k_scales_, v_scales_;
  int64_t seq_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<BackendKvCache>> CudaBackend::CreateKv(const KvShape& shape) {
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options_.device), "selecting the device");
  auto c = std::make_unique<CudaKvCache>(shape);
  if (absl::Status st = c->Init(); !st.ok()) return st;
  return std::unique_ptr<BackendKvCache>(std::move(c));
}

absl::Status CudaBackend::AppendKv(BackendKvCache& cache, const KvAppendArgs& args) {
  auto& c = static_cast<CudaKvCache&>(cache);
  const KvShape& s = c.shape();
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options_.device), "selecting the device");
  const int64_t n = s.kv_heads * args.tokens * s.head_dim;
  std::vector<float> k, v;
  try {
    k.resize(static_cast<size_t>(n));
    v.resize(static_cast<size_t>(n));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("cuda backend: cannot stage ", n, " K/V values"));
  }
  ref::ToFloat(args.k, args.src_dtype, 1.0f, n, k.data());
  ref::ToFloat(args.v, args.src_dtype, 1.0f, n, v.data());
  Lane& lane = AcquireLane();
  LaneGuard guard(lane);
  absl::Status st = c.Append(k.data(), v.data(), args.tokens, lane.stream);
  return st.ok() ? st : CopiesDrained(lane.stream, std::move(st));
}

absl::Status CudaBackend::ReadKv(const BackendKvCache& cache, int64_t first_page,
                                int64_t num_pages, uint8_t* pages, float* k_scales,
                                float* v_scales) {
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options_.device), "selecting the device");
  Lane& lane = AcquireLane();
  LaneGuard guard(lane);
  absl::Status st = static_cast<const CudaKvCache&>(cache).Read(first_page, num_pages, pages,
                                                                k_scales, v_scales, lane.stream);
  return st.ok() ? st : CopiesDrained(lane.stream, std::move(st));
}

absl::StatusOr<std::unique_ptr<BackendKvCache>> CudaBackend::KvFromPacked(
    const KvShape& shape, int64_t seq, const uint8_t* pages, const float* k_scales,
    const float* v_scales) {
  auto c = CreateKv(shape);
  if (!c.ok()) return c.status();
  Lane& lane = AcquireLane();
  LaneGuard guard(lane);
  if (absl::Status st = static_cast<CudaKvCache&>(**c).Restore(seq, pages, k_scales, v_scales,
                                                               lane.stream);
      !st.ok()) {
    return CopiesDrained(lane.stream, std::move(st));  // before the cache's pages go
  }
  return c;
}

absl::Status CudaBackend::Attention(const BackendKvCache& cache, const AttentionArgs& args) {
  const auto& c = static_cast<const CudaKvCache&>(cache);
  const KvShape& s = c.shape();
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options_.device), "selecting the device");
  const int64_t elems = args.batch * args.heads * args.q_len * s.head_dim;
  const int64_t q_bytes = elems * DTypeSize(args.q_dtype);
  const int64_t o_bytes = elems * DTypeSize(args.out_dtype);
  const int64_t q_off = 0, o_off = AlignUp(q_bytes, 256);

  Lane& lane = AcquireLane();
  LaneGuard guard(lane);
  if (absl::Status st = lane.EnsurePinned(o_off + o_bytes); !st.ok()) return st;
  if (absl::Status st = Lane::Ensure(lane.dev, lane.dev_bytes, o_off + o_bytes, false, lane.stream);
      !st.ok()) {
    return st;
  }
  char* h = static_cast<char*>(lane.pinned);
  char* d = static_cast<char*>(lane.dev.p);

  // Queries and outputs in pinned memory of ours skip the staging copy.
  const bool q_direct = PinnedRegistry::Get().Contains(args.q, static_cast<size_t>(q_bytes));
  const bool o_direct = PinnedRegistry::Get().Contains(args.out, static_cast<size_t>(o_bytes));
  // A decode's output (whole rows, stored by the split merge) goes from the
  // kernel straight into a pinned out, as GEMV results do (StartGemv); the
  // prefills' scattered fragment stores are copied out.
  const bool out_by_kernel = options_.kernels_write_pinned_results && o_direct &&
                             args.q_len <= cuda::kAttentionDecodeMaxQ &&
                             o_bytes <= kKernelWrittenResultBytes;

  // The call's problem in device memory: the queries and output move to the
  // lane's buffers.
  cuda::AttentionProblem p;
  static_cast<plume::AttentionProblem&>(p) = {
      KvCacheView{s.layout(), s.format, c.table(), c.k_scales_dev(), c.v_scales_dev(), c.seq()}, args};
  p.q = d + q_off;
  p.out = out_by_kernel ? args.out : d + o_off;
  p.path = static_cast<cuda::DecodePath>(decode_path_);
  p.kernel = cuda::AttentionKernel::kAuto;
  const int64_t ws_need = cuda::AttentionWorkspaceBytes(p, options_.device);
  if (ws_need <= 0) return absl::InternalError("cuda backend: attention workspace size unavailable");
  if (absl::Status st = Lane::Ensure(lane.att_ws, lane.att_ws_bytes, ws_need, true, lane.stream);
      !st.ok()) {
    return st;
  }

  if (!q_direct) std::memcpy(h + q_off, args.q, static_cast<size_t>(q_bytes));
  PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(d + q_off, q_direct ? args.q : h + q_off,
                                       static_cast<size_t>(q_bytes), cudaMemcpyHostToDevice,
                                       lane.stream),
                       "copying queries to the device");
  // Past the first copy, a failure waits for what is enqueued: the caller
  // may free the queries once it hears back.
  if (const cudaError_t e = cuda::Attention(p, lane.att_ws.p, lane.att_ws_bytes, lane.stream);
      e != cudaSuccess) {
    return CopiesDrained(lane.stream, CudaStatus(e, "launching attention"));
  }
  if (!out_by_kernel) {
    if (const cudaError_t e = cudaMemcpyAsync(o_direct ? args.out : h + o_off, d + o_off,
                                              static_cast<size_t>(o_bytes), cudaMemcpyDeviceToHost,
                                              lane.stream);
        e != cudaSuccess) {
      return CopiesDrained(lane.stream, CudaStatus(e, "copying attention output from the device"));
    }
  }
  PLUME_RETURN_IF_CUDA(cudaStreamSynchronize(lane.stream), "running attention");
  if (!o_direct) std::memcpy(args.out, h + o_off, static_cast<size_t>(o_bytes));
  if (out_by_kernel) kernel_written_results_.fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

}  // namespace plume::core
