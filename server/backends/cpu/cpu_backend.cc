#include "server/backends/cpu/cpu_backend.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "plume/reference/api.h"
#include "plume/reference/attention.h"
#include "plume/reference/thread_pool.h"

namespace plume::core {
namespace {

// A call with a value outside its enum (core validates first, so only a
// direct caller gets here): refused, never run as another value.
absl::Status Unknown(const char* what, const char* which) {
  return absl::InvalidArgumentError(
      absl::StrCat("cpu backend: cannot ", what, ": ", which, " are not ones it knows"));
}

// Resident memory of 16 KiB or more is mapped on its own, page by page,
// rather than taken from the malloc heap: a matrix lives long, and one
// allocated among a request's short-lived buffers would pin the heap's top,
// so that RSS after a churn of uploads and deletes would stay at its
// high-water mark (chaos_test compares RSS before and after one). Unmapping
// on delete gives the pages back at once. Smaller matrices come from the heap
// (64-byte aligned), so that many tiny ones take neither a page nor a
// mapping each.
class HostMemory {
 public:
  HostMemory() = default;
  HostMemory(HostMemory&& o) noexcept { *this = std::move(o); }
  HostMemory& operator=(HostMemory&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(mapped_bytes_, o.mapped_bytes_);
    return *this;
  }
  ~HostMemory() {
    if (data_ == nullptr) return;
    if (mapped_bytes_ > 0) {
      munmap(data_, mapped_bytes_);
    } else {
      std::free(data_);
    }
  }
  void* data() const { return data_; }

  // `bytes` aligned to `align` (a power of two; 64 at least).
  static absl::StatusOr<HostMemory> Allocate(size_t bytes, size_t align) {
    constexpr size_t kMapFrom = size_t{16} << 10;
    HostMemory m;
    bytes = std::max<size_t>(bytes, 1);
    if (bytes < kMapFrom && align <= 64) {
      m.data_ = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
      if (m.data_ == nullptr) return Exhausted(bytes);
      return m;
    }
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    align = std::max(align, page);
    bytes = (bytes + page - 1) / page * page;
    const size_t span = bytes + align - page;
    void* p = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return Exhausted(bytes);
    // The slack before and after the aligned part is unmapped.
    const uintptr_t at = reinterpret_cast<uintptr_t>(p);
    const uintptr_t aligned = (at + align - 1) & ~(uintptr_t{align} - 1);
    if (aligned > at) munmap(p, aligned - at);
    const size_t tail = span - (aligned - at) - bytes;
    if (tail > 0) munmap(reinterpret_cast<void*>(aligned + bytes), tail);
    m.data_ = reinterpret_cast<void*>(aligned);
    m.mapped_bytes_ = bytes;
    return m;
  }

 private:
  static absl::Status Exhausted(size_t bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cpu backend: cannot allocate ", bytes, " bytes of host memory"));
  }

  void* data_ = nullptr;
  size_t mapped_bytes_ = 0;  // 0: from the heap
};

// Packed words and scales in one host allocation.
class CpuMatrix final : public BackendMatrix {
 public:
  static absl::StatusOr<std::unique_ptr<CpuMatrix>> Allocate(const MatrixShape& shape) {
    const int64_t word_bytes = shape.layout().total_words() * int64_t{sizeof(uint32_t)};
    const int64_t scale_bytes = shape.num_scales() * int64_t{sizeof(float)};
    const int64_t total = word_bytes + scale_bytes;
    // Large matrices: 2 MiB-aligned with transparent huge pages requested
    // (fewer TLB misses while the GEMV streams the weights).
    constexpr size_t kHuge = size_t{2} << 20;
    const bool huge = static_cast<size_t>(total) >= kHuge;
    auto m = HostMemory::Allocate(static_cast<size_t>(total), huge ? kHuge : 64);
    if (!m.ok()) return m.status();
    if (huge) madvise(m->data(), static_cast<size_t>(total), MADV_HUGEPAGE);
    return std::unique_ptr<CpuMatrix>(new CpuMatrix(shape, std::move(*m), word_bytes));
  }

  uint32_t* words() { return static_cast<uint32_t*>(mem_.data()); }
  float* scales() { return reinterpret_cast<float*>(static_cast<char*>(mem_.data()) + word_bytes_); }

  MatrixView view() const {
    auto* self = const_cast<CpuMatrix*>(this);
    return shape().view(self->words(), self->scales());
  }
  // view() for a GEMV: a BLOCK128 matrix whose 128-row bands share their
  // scales (a BLOCK128X128 upload) says so, worked out on the first GEMV,
  // when the matrix no longer changes.
  MatrixView gemv_view() const {
    MatrixView v = view();
    if (v.scale_mode == ScaleMode::kBlock128) {
      std::call_once(bands_once_, [&] { uniform_bands_ = ref::BlockScalesUniformInBands(v); });
      v.uniform_bands = uniform_bands_;
    }
    return v;
  }

 private:
  CpuMatrix(const MatrixShape& shape, HostMemory mem, int64_t word_bytes)
      : BackendMatrix(shape), mem_(std::move(mem)), word_bytes_(word_bytes) {}

  HostMemory mem_;
  int64_t word_bytes_;
  mutable std::once_flag bands_once_;
  mutable bool uniform_bands_ = false;  // set once, under bands_once_
};

// A K/V cache in host pages (kernels/reference's HostKvCache).
class CpuKvCache final : public BackendKvCache {
 public:
  explicit CpuKvCache(const KvShape& shape)
      : BackendKvCache(shape), cache_(shape.layout(), shape.format, shape.saturate) {}
  int64_t seq() const override { return cache_.seq(); }
  ref::HostKvCache& cache() { return cache_; }
  const ref::HostKvCache& cache() const { return cache_; }

 private:
  ref::HostKvCache cache_;
};

}  // namespace

CpuBackend::CpuBackend(int threads) : pool_(std::make_unique<ThreadPool>(threads)) {}
CpuBackend::~CpuBackend() = default;

int64_t CpuBackend::memory_capacity_bytes() const {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0) return int64_t{1} << 30;
  // Leave half of physical memory to the process itself and the system.
  return static_cast<int64_t>(pages) * page_size / 2;
}

absl::StatusOr<std::unique_ptr<BackendMatrix>> CpuBackend::Quantize(const MatrixShape& shape,
                                                                    const void* src,
                                                                    DType src_dtype) {
  auto m = CpuMatrix::Allocate(shape);
  if (!m.ok()) return m.status();
  ref::QuantizeOptions opts{shape.format, shape.scale_mode, shape.saturate};
  if (!ref::QuantizePack(src, src_dtype, shape.rows, shape.cols, opts, (*m)->words(),
                         (*m)->scales(), pool_.get())) {
    return Unknown("quantize", "the source dtype, format or scale mode");
  }
  return std::unique_ptr<BackendMatrix>(std::move(*m));
}

namespace {

// Rows quantized straight into the resident matrix as they arrive.
class CpuRowQuantizer final : public RowQuantizer {
 public:
  CpuRowQuantizer(std::unique_ptr<CpuMatrix> m, DType src_dtype, ThreadPool* pool)
      : RowQuantizer(m->shape().rows), m_(std::move(m)), src_dtype_(src_dtype), pool_(pool) {}

 protected:
  absl::Status Quantize(const void* src, int64_t row0, int64_t rows) override {
    const MatrixShape& s = m_->shape();
    const int64_t words_per_row = s.layout().words_per_row();
    const int64_t scales_per_row = s.num_scales() / s.rows;
    ref::QuantizeOptions opts{s.format, s.scale_mode, s.saturate};
    if (!ref::QuantizePack(src, src_dtype_, rows, s.cols, opts, m_->words() + row0 * words_per_row,
                           scales_per_row > 0 ? m_->scales() + row0 * scales_per_row : nullptr,
                           pool_)) {
      return Unknown("quantize", "the source dtype, format or scale mode");
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<BackendMatrix>> Take() override {
    return std::unique_ptr<BackendMatrix>(std::move(m_));
  }

 private:
  std::unique_ptr<CpuMatrix> m_;
  const DType src_dtype_;
  ThreadPool* const pool_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<RowQuantizer>> CpuBackend::BeginRowQuantize(const MatrixShape& shape,
                                                                           DType src_dtype) {
  if (shape.scale_mode == ScaleMode::kTensor || shape.rows <= 0) {
    return std::unique_ptr<RowQuantizer>();
  }
  auto m = CpuMatrix::Allocate(shape);
  if (!m.ok()) return m.status();
  return std::unique_ptr<RowQuantizer>(
      std::make_unique<CpuRowQuantizer>(std::move(*m), src_dtype, pool_.get()));
}

namespace {

// A pre-packed upload's words go straight into the matrix's own memory.
class CpuPackedWriter final : public PackedWriter {
 public:
  explicit CpuPackedWriter(std::unique_ptr<CpuMatrix> m)
      : PackedWriter(m->shape()), m_(std::move(m)),
        words_(reinterpret_cast<uint8_t*>(m_->words())) {}

  const uint8_t* host_words() const override { return words_; }

 protected:
  absl::Status Write(int64_t offset, const void* src, int64_t n) override {
    std::memcpy(words_ + offset, src, static_cast<size_t>(n));
    return absl::OkStatus();
  }

  float* host_scales() override { return m_->scales(); }

  absl::StatusOr<std::unique_ptr<BackendMatrix>> Take(const float* /*scales: in host_scales()*/) override {
    return std::unique_ptr<BackendMatrix>(std::move(m_));
  }

 private:
  std::unique_ptr<CpuMatrix> m_;
  uint8_t* const words_;  // m_'s, kept once m_ is handed over
};

}  // namespace

absl::StatusOr<std::unique_ptr<PackedWriter>> CpuBackend::BeginPackedWrite(const MatrixShape& shape) {
  auto m = CpuMatrix::Allocate(shape);
  if (!m.ok()) return m.status();
  return std::unique_ptr<PackedWriter>(std::make_unique<CpuPackedWriter>(std::move(*m)));
}

absl::StatusOr<std::unique_ptr<BackendMatrix>> CpuBackend::FromPacked(const MatrixShape& shape,
                                                                      const uint32_t* words,
                                                                      const float* scales) {
  auto m = CpuMatrix::Allocate(shape);
  if (!m.ok()) return m.status();
  std::memcpy((*m)->words(), words,
              static_cast<size_t>(shape.layout().total_words()) * sizeof(uint32_t));
  if (shape.num_scales() > 0) {
    std::memcpy((*m)->scales(), scales, static_cast<size_t>(shape.num_scales()) * sizeof(float));
  }
  return std::unique_ptr<BackendMatrix>(std::move(*m));
}

absl::Status CpuBackend::ReadPacked(const BackendMatrix& m, uint32_t* words, float* scales) {
  const auto& c = static_cast<const CpuMatrix&>(m);
  const MatrixView v = c.view();
  std::memcpy(words, v.words, static_cast<size_t>(m.shape().layout().total_words()) * sizeof(uint32_t));
  if (m.shape().num_scales() > 0) {
    std::memcpy(scales, v.scales, static_cast<size_t>(m.shape().num_scales()) * sizeof(float));
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::ReadPackedRows(const BackendMatrix& m, int64_t row0, int64_t rows,
                                        uint32_t* words, float* scales) {
  const MatrixShape& s = m.shape();
  if (absl::Status st = CheckRowRange(s.rows, row0, rows); !st.ok()) return st;
  const MatrixView v = static_cast<const CpuMatrix&>(m).view();
  const int64_t wpr = s.layout().words_per_row();
  std::memcpy(words, v.words + row0 * wpr, static_cast<size_t>(rows * wpr) * sizeof(uint32_t));
  if (const int64_t n = ScalesOfRowsCount(s.scale_mode, s.cols, rows); n > 0) {
    std::memcpy(scales, v.scales + ScalesOfRowsStart(s.scale_mode, s.cols, row0),
                static_cast<size_t>(n) * sizeof(float));
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Gemv(const BackendMatrix& w, const GemvArgs& args) {
  const auto& m = static_cast<const CpuMatrix&>(w);
  const int64_t rows = m.shape().rows;
  GemvProblem p{m.gemv_view(), args};
  if (args.y_stride == 0 || args.y_stride == rows || args.batch == 1) {
    if (!ref::Gemv(p, pool_.get())) return Unknown("run a GEMV", "the dtypes, format or scale mode");
    return absl::OkStatus();
  }
  // A strided result (a row shard): packed first, then spread out.
  const size_t row_bytes = static_cast<size_t>(rows * DTypeSize(args.y_dtype));
  std::vector<char> packed;
  try {
    packed.resize(static_cast<size_t>(args.batch) * row_bytes);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("cpu backend: cannot stage the GEMV's results");
  }
  p.y = packed.data();
  if (!ref::Gemv(p, pool_.get())) return Unknown("run a GEMV", "the dtypes, format or scale mode");
  const size_t stride_bytes = static_cast<size_t>(args.y_stride * DTypeSize(args.y_dtype));
  for (int64_t b = 0; b < args.batch; ++b) {
    std::memcpy(static_cast<char*>(args.y) + b * stride_bytes, packed.data() + b * row_bytes,
                row_bytes);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BackendKvCache>> CpuBackend::CreateKv(const KvShape& shape) {
  return std::unique_ptr<BackendKvCache>(new CpuKvCache(shape));
}

absl::Status CpuBackend::AppendKv(BackendKvCache& cache, const KvAppendArgs& args) {
  auto& c = static_cast<CpuKvCache&>(cache).cache();
  const int64_t n = c.layout().kv_heads * args.tokens * c.layout().head_dim;
  std::vector<float> k, v;
  try {
    k.resize(static_cast<size_t>(n));
    v.resize(static_cast<size_t>(n));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("cpu backend: cannot stage ", n, " K/V values"));
  }
  if (!ref::ToFloat(args.k, args.src_dtype, 1.0f, n, k.data()) ||
      !ref::ToFloat(args.v, args.src_dtype, 1.0f, n, v.data())) {
    return Unknown("append to a K/V cache", "the source dtype");
  }
  if (!c.Append(k.data(), v.data(), args.tokens)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cpu backend: cannot allocate the pages of ", args.tokens, " more tokens"));
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Attention(const BackendKvCache& cache, const AttentionArgs& args) {
  const auto& c = static_cast<const CpuKvCache&>(cache).cache();
  if (!ref::Attention(AttentionProblem{c.view(), args}, pool_.get())) {
    return Unknown("run attention", "the dtypes, format or K/V scale mode");
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::ReadKv(const BackendKvCache& cache, int64_t first_page,
                               int64_t num_pages, uint8_t* pages, float* k_scales,
                               float* v_scales) {
  const KvCacheView v = static_cast<const CpuKvCache&>(cache).cache().view();
  if (first_page < 0 || num_pages < 0 || first_page + num_pages > KvLayout::pages_for(v.seq)) {
    return absl::OutOfRangeError(absl::StrCat("cpu backend: pages [", first_page, ", ",
                                              first_page + num_pages, ") of a cache of ",
                                              KvLayout::pages_for(v.seq), " pages"));
  }
  const size_t bytes = static_cast<size_t>(v.layout.page_bytes());
  for (int64_t p = 0; p < num_pages; ++p) {
    std::memcpy(pages + static_cast<size_t>(p) * bytes, v.pages[first_page + p], bytes);
  }
  const size_t n = static_cast<size_t>(v.layout.global_scales());
  if (k_scales != nullptr) std::copy(v.k_scales, v.k_scales + n, k_scales);
  if (v_scales != nullptr) std::copy(v.v_scales, v.v_scales + n, v_scales);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BackendKvCache>> CpuBackend::KvFromPacked(
    const KvShape& shape, int64_t seq, const uint8_t* pages, const float* k_scales,
    const float* v_scales) {
  auto c = std::make_unique<CpuKvCache>(shape);
  if (!c->cache().Restore(seq, pages, k_scales, v_scales)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cpu backend: cannot allocate the pages of ", seq, " tokens"));
  }
  return std::unique_ptr<BackendKvCache>(std::move(c));
}

}  // namespace plume::core
