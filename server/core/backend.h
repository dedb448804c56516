// The compute backend interface. A backend owns the memory of the matrices it
// holds (host memory for the CPU backend, device memory for CUDA) and runs
// GEMV on them. server/core talks only to this interface.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "plume/kernels/kv_layout.h"
#include "plume/kernels/layout.h"
#include "plume/kernels/problem.h"
#include "plume/kernels/types.h"

namespace plume::core {

// Where a matrix lives when a backend has several devices (ShardedBackend;
// values match plume.v1.Placement). Single-device backends ignore it.
enum class Placement : uint8_t {
  kAuto = 0,        // single device when it fits one, else row-sharded
  kSingle = 1,      // one device (the one with the most free budget)
  kSharded = 2,     // rows split across every device, each shard on its own
  kReplicated = 3,  // a whole copy on every device; requests spread over them
};
const char* PlacementName(Placement p);  // "auto", "single", "sharded", "replicated"

// What a matrix is: name-independent shape and encoding.
struct MatrixShape {
  int64_t rows = 0;
  int64_t cols = 0;
  Fp8Format format = Fp8Format::kE4M3;
  ScaleMode scale_mode = ScaleMode::kRow;
  bool saturate = true;
  Placement placement = Placement::kAuto;  // asked for at upload

  PackedLayout layout() const { return PackedLayout{rows, cols}; }
  // The matrix with its codes and scales at these addresses (host or device).
  MatrixView view(const uint32_t* words, const float* scales) const {
    return MatrixView{words, scales, rows, cols, format, scale_mode};
  }
  int64_t num_scales() const { return NumScales(scale_mode, rows, cols); }
  // Bytes resident for the packed codes plus the scales as a backend holds
  // them (BLOCK128X128 expanded to BLOCK128: ResidentShape).
  int64_t resident_bytes() const {
    return layout().code_bytes() +
           NumScales(ResidentScaleMode(scale_mode), rows, cols) * int64_t{sizeof(float)};
  }
};

// Scales that rows [row0, row0 + rows) of a matrix held in `mode` (a
// resident mode: never BLOCK128X128) carry, and where they start in its
// scale array: ROW one per row, BLOCK128 blocks_per_row() per row, TENSOR
// the matrix's one scale (whatever the rows), NONE none.
inline int64_t ScalesOfRowsCount(ScaleMode mode, int64_t cols, int64_t rows) {
  switch (mode) {
    case ScaleMode::kNone: return 0;
    case ScaleMode::kTensor: return 1;
    case ScaleMode::kRow: return rows;
    default: return rows * PackedLayout{0, cols}.blocks_per_row();
  }
}
inline int64_t ScalesOfRowsStart(ScaleMode mode, int64_t cols, int64_t row0) {
  return mode == ScaleMode::kTensor ? 0 : ScalesOfRowsCount(mode, cols, row0);
}

// OK when rows [row0, row0 + rows) are a non-empty range of a matrix of
// `total` rows (Backend::ReadPackedRows checks its arguments with it).
inline absl::Status CheckRowRange(int64_t total, int64_t row0, int64_t rows) {
  if (row0 < 0 || rows < 1 || row0 > total || rows > total - row0) {
    return absl::OutOfRangeError(
        absl::StrCat("rows ", row0, "..", row0 + rows, " of a ", total, "-row matrix"));
  }
  return absl::OkStatus();
}

// The shape a backend is given: BLOCK128X128 becomes BLOCK128, with each
// row taking its 128-row band's scales (ExpandBlockScales), so backends and
// kernels never see the 128x128 mode. The core keeps the shape as uploaded
// (what ListMatrices, the durable store and GetMatrix report).
inline MatrixShape ResidentShape(MatrixShape s) {
  s.scale_mode = ResidentScaleMode(s.scale_mode);
  return s;
}

// A matrix held by a backend. Immutable once created; safe to use from many
// threads at once.
class BackendMatrix {
 public:
  virtual ~BackendMatrix() = default;
  const MatrixShape& shape() const { return shape_; }

 protected:
  explicit BackendMatrix(const MatrixShape& shape) : shape_(shape) {}

 private:
  MatrixShape shape_;
};

// One GEMV call on a resident matrix: the vectors of plume's GemvProblem
// (kernels/include/plume/kernels/problem.h), host memory, and what serving
// adds to them.
struct GemvArgs : GemvVectors {
  // Elements from y[b] to y[b + 1]; 0 means rows (packed). A row shard of a
  // larger matrix writes its rows into the full result this way.
  int64_t y_stride = 0;
  // Out, optional: the device time of the call (copy-in, kernels, any
  // copy-out on the device's timeline), set by backends that measure one
  // (CUDA); untouched by the others.
  double* device_seconds = nullptr;
};

// Where a resident matrix is: its placement (never kAuto) and the devices
// holding it (for kSharded in shard order, with each shard's rows).
struct MatrixPlacement {
  Placement kind = Placement::kSingle;
  std::vector<int> devices;
  std::vector<int64_t> shard_rows;  // kSharded only
};

// The GEMV kernel a backend runs for a matrix at one batch bucket and
// activation dtype (MatrixInfo reports them): `measured` once the dispatcher
// has timed the candidates there, else its static choice.
struct GemvKernelChoice {
  int max_batch = 1;  // the bucket: batches up to this (and over the previous bucket)
  DType x_dtype = DType::kF16;
  std::string kernel;
  bool measured = false;
};

// How a GEMV started by Backend::GemvAsync ended: its status, and the
// device's part of its time in seconds where the backend measures one (as
// GemvArgs::device_seconds), else negative.
using GemvDoneFn = std::function<void(const absl::Status&, double device_seconds)>;

// Device memory of a GPU backend, in bytes.
struct DeviceMemory {
  int64_t used = 0;   // in use on the device, by anyone
  int64_t total = 0;
};

// Quantizes a matrix whose rows arrive in order (Backend::BeginRowQuantize).
class RowQuantizer {
 public:
  explicit RowQuantizer(int64_t rows) : rows_(rows) {}
  virtual ~RowQuantizer() = default;
  // The next `rows` rows, row-major in the source dtype, host memory;
  // INVALID_ARGUMENT past the matrix's last row.
  absl::Status AddRows(const void* src, int64_t rows);
  // Once every row was added (else FAILED_PRECONDITION): the resident matrix.
  absl::StatusOr<std::unique_ptr<BackendMatrix>> Finish();
  // Host memory the quantizer holds for staging while it lives (the CUDA
  // backend's pinned buffers), beside the resident matrix; the upload
  // reserves it against the memory budget.
  virtual int64_t host_staging_bytes() const { return 0; }

 protected:
  // Rows [row0, row0 + rows), within the matrix.
  virtual absl::Status Quantize(const void* src, int64_t row0, int64_t rows) = 0;
  // Every row is in.
  virtual absl::StatusOr<std::unique_ptr<BackendMatrix>> Take() = 0;

 private:
  const int64_t rows_;
  int64_t next_row_ = 0;
};

// Takes the words of a pre-packed upload as they arrive, in order, straight
// into the memory the matrix is then served from (Backend::BeginPackedWrite):
// the upload stages neither its words nor a second copy of them. The padding
// codes of each row (layout.h) are written as zeros whatever the bytes sent
// for them hold.
class PackedWriter {
 public:
  // `shape`: the shape the backend holds (ResidentShape).
  explicit PackedWriter(const MatrixShape& shape) : shape_(shape) {}
  virtual ~PackedWriter() = default;
  // The next bytes of the packed words; INVALID_ARGUMENT past their end
  // (layout().code_bytes()), with nothing written.
  absl::Status Append(std::string_view bytes);
  int64_t appended() const { return appended_; }
  // Once every byte was appended (else FAILED_PRECONDITION): the resident
  // matrix, with `scales` in `mode`: the resident shape's, or BLOCK128X128
  // for a BLOCK128 matrix, expanded (ExpandBlockScales) straight into the
  // matrix where the backend keeps its scales in host memory.
  absl::StatusOr<std::unique_ptr<BackendMatrix>> Finish(const float* scales, ScaleMode mode);
  // The words in host memory, bytes [0, appended()) final; the same memory
  // the finished matrix serves from, so valid until the matrix (or, before
  // Finish, this writer) is destroyed. Null where the words are not in host
  // memory.
  virtual const uint8_t* host_words() const { return nullptr; }

 protected:
  // Bytes [offset, offset + n) of the words, within code_bytes().
  virtual absl::Status Write(int64_t offset, const void* src, int64_t n) = 0;
  // The matrix's scales in host memory (the resident shape's num_scales()),
  // for Finish to write; null where there are none such.
  virtual float* host_scales() { return nullptr; }
  // Every byte is in; `scales` in the resident shape's mode, or null when
  // Finish wrote them to host_scales().
  virtual absl::StatusOr<std::unique_ptr<BackendMatrix>> Take(const float* scales) = 0;

 private:
  const MatrixShape shape_;
  int64_t appended_ = 0;
};

// A multi-device backend's placement budget on one of its devices.
struct DeviceBudget {
  int64_t used = 0;    // bytes of matrices and K/V caches placed there
  int64_t budget = 0;
};

// What a K/V cache is: kv_heads x head_dim per token, FP8 format and scales.
struct KvShape {
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  Fp8Format format = Fp8Format::kE4M3;
  KvScaleMode scale_mode = KvScaleMode::kTokenBlock;
  bool saturate = true;

  KvLayout layout() const { return KvLayout{kv_heads, head_dim, scale_mode}; }
  // Bytes resident with `seq` tokens (whole pages plus cache-wide scales).
  int64_t resident_bytes(int64_t seq) const { return layout().resident_bytes(seq); }
};

// A K/V cache held by a backend, in plume's paged layout (kv_layout.h). Its
// tokens change only through Backend::AppendKv; the caller (KvStore) keeps an
// append from running alongside anything else on the same cache.
class BackendKvCache {
 public:
  virtual ~BackendKvCache() = default;
  const KvShape& shape() const { return shape_; }
  virtual int64_t seq() const = 0;

 protected:
  explicit BackendKvCache(const KvShape& shape) : shape_(shape) {}

 private:
  KvShape shape_;
};

// New tokens: k and v are [kv_heads][tokens][head_dim] of src_dtype (F32,
// F16 or BF16), host memory.
struct KvAppendArgs {
  const void* k = nullptr;
  const void* v = nullptr;
  DType src_dtype = DType::kF32;
  int64_t tokens = 0;
};

// One attention call on a resident K/V cache: the queries of plume's
// AttentionProblem (plume/kernels/problem.h), host memory; the scale is
// resolved (never 0).
using AttentionArgs = AttentionQueries;

// Host memory a backend moves to and from its device fastest: pinned memory
// for the CUDA backend, plain aligned heap memory for the CPU backend. The
// batcher gathers a batch's vectors into one and has the results written to
// another, so each vector is copied once on its way in and once on its way
// out. GemvArgs/AttentionArgs may point into such buffers or anywhere else.
class HostBuffer {
 public:
  virtual ~HostBuffer() = default;
  void* data() const { return data_; }
  size_t size() const { return size_; }

 protected:
  HostBuffer(void* data, size_t size) : data_(data), size_(size) {}

 private:
  void* data_;
  size_t size_;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // A host buffer of `bytes` bytes (see HostBuffer). The default is aligned
  // heap memory; RESOURCE_EXHAUSTED when it cannot be had.
  virtual absl::StatusOr<std::unique_ptr<HostBuffer>> AllocateHostBuffer(size_t bytes);

  virtual std::string_view name() const = 0;

  // GPU backends report their device's memory; others return false.
  virtual bool device_memory(DeviceMemory* /*out*/) const { return false; }

  // Multi-device backends: each device's placement budget, in device order;
  // others return none.
  virtual std::vector<DeviceBudget> device_budgets() const { return {}; }

  // Memory this backend can hold matrices in, in bytes (the default budget).
  virtual int64_t memory_capacity_bytes() const = 0;

  // Quantizes a row-major source matrix (F32/F16/BF16, host memory,
  // rows * cols elements) into a new resident matrix.
  virtual absl::StatusOr<std::unique_ptr<BackendMatrix>> Quantize(const MatrixShape& shape,
                                                                  const void* src,
                                                                  DType src_dtype) = 0;

  // A quantizer that takes the source as its rows arrive (streamed uploads),
  // for the scale modes whose scales depend on one row only (NONE, ROW,
  // BLOCK128): the resident codes equal Quantize's over the whole source.
  // Null (not an error) where this backend has none or the mode needs the
  // whole source (TENSOR): the caller then stages it all for Quantize.
  virtual absl::StatusOr<std::unique_ptr<RowQuantizer>> BeginRowQuantize(
      const MatrixShape& /*shape*/, DType /*src_dtype*/) {
    return std::unique_ptr<RowQuantizer>();
  }

  // A writer that takes a pre-packed matrix's words as they arrive (the
  // scales come at its Finish), already validated. Null (not an error)
  // where this backend has none: the caller then stages the words for
  // FromPacked.
  virtual absl::StatusOr<std::unique_ptr<PackedWriter>> BeginPackedWrite(const MatrixShape& /*shape*/) {
    return std::unique_ptr<PackedWriter>();
  }

  // Makes a resident matrix from pre-packed words (layout().total_words()) and
  // scales (num_scales()), already validated.
  virtual absl::StatusOr<std::unique_ptr<BackendMatrix>> FromPacked(const MatrixShape& shape,
                                                                    const uint32_t* words,
                                                                    const float* scales) = 0;

  // Copies a matrix's packed words (layout().total_words()) and scales
  // (num_scales()) to host memory: what the durable store writes to disk.
  virtual absl::Status ReadPacked(const BackendMatrix& /*m*/, uint32_t* /*words*/,
                                  float* /*scales*/) {
    return absl::UnimplementedError("this backend cannot read matrices back");
  }

  // Copies rows [row0, row0 + rows) of a matrix (within its rows; rows >= 1)
  // to host memory: their packed words (rows * layout().words_per_row(), row
  // row0's first) and their scales in the matrix's mode
  // (ScalesOfRowsCount; TENSOR: the one scale; NONE: none, and `scales`
  // may be null). What the durable store writes a matrix's file from, a
  // bounded band of rows at a time, so that the whole packed matrix is
  // never on the host at once. Where the words and scales are already in
  // host memory (CPU), a copy of that band; on a GPU, a copy from the
  // device into `words` and `scales`, which may lie in a buffer from
  // AllocateHostBuffer (pinned). Safe alongside GEMVs on the same matrix.
  virtual absl::Status ReadPackedRows(const BackendMatrix& /*m*/, int64_t /*row0*/,
                                      int64_t /*rows*/, uint32_t* /*words*/, float* /*scales*/) {
    return absl::UnimplementedError("this backend cannot read rows of matrices back");
  }

  // Runs y = W x. Arguments are validated by the caller.
  virtual absl::Status Gemv(const BackendMatrix& w, const GemvArgs& args) = 0;

  // Starts y = W x and calls `done` exactly once, when y is written or the
  // call failed. The default runs Gemv and calls `done` before it returns.
  // The CUDA backend enqueues the copies and the kernels on one of its
  // streams and returns; that lane's completion thread calls `done` once
  // the stream got there, so that no caller's thread waits for the device. x and
  // y must stay valid until `done` runs; args.device_seconds is not used
  // (the device time comes to `done`).
  virtual void GemvAsync(const BackendMatrix& w, const GemvArgs& args, GemvDoneFn done);

  // Where a matrix of this backend is (MatrixInfo reports it). The default:
  // a single device, device_ordinal().
  virtual MatrixPlacement PlacementOf(const BackendMatrix& /*m*/) const {
    return MatrixPlacement{Placement::kSingle, {device_ordinal()}, {}};
  }
  virtual int device_ordinal() const { return 0; }

  // The GEMV kernels this backend picks for m, per batch bucket and
  // activation dtype; empty where there is one kernel (the CPU backend).
  virtual std::vector<GemvKernelChoice> GemvKernels(const BackendMatrix& /*m*/) const { return {}; }

  // Budget bytes an upload of `shape` takes (all copies, for a replicated
  // placement). The default: shape.resident_bytes().
  virtual int64_t ReservedBytes(const MatrixShape& shape) const { return shape.resident_bytes(); }

  // K/V caches and attention. Backends without them answer UNIMPLEMENTED.
  // Creates an empty cache (seq 0).
  virtual absl::StatusOr<std::unique_ptr<BackendKvCache>> CreateKv(const KvShape& shape) {
    (void)shape;
    return absl::UnimplementedError(absl::StrCat("backend ", std::string(name()), " has no K/V caches"));
  }
  // Quantizes and appends tokens (the budget is already reserved for them:
  // shape().resident_bytes(seq + tokens) in all).
  virtual absl::Status AppendKv(BackendKvCache& cache, const KvAppendArgs& args) {
    (void)cache, (void)args;
    return absl::UnimplementedError(absl::StrCat("backend ", std::string(name()), " has no K/V caches"));
  }
  // Runs attention over the cache's tokens. Arguments are validated by the caller.
  virtual absl::Status Attention(const BackendKvCache& cache, const AttentionArgs& args) {
    (void)cache, (void)args;
    return absl::UnimplementedError(absl::StrCat("backend ", std::string(name()), " has no attention"));
  }

  // The durable store's two K/V hooks (durable_store.h). Both move
  // whole pages in kv_layout.h's byte layout, host memory on the caller's
  // side, so what is on disk is exactly what the backend serves.
  //
  // Copies pages [first_page, first_page + num_pages) of `cache` (each
  // shape().layout().page_bytes() bytes, num_pages <= pages_for(seq())) to
  // `pages`, and, when k_scales / v_scales are not null, the cache-wide
  // scales (layout().global_scales() floats each). The caller holds the
  // cache's writer lock, as for AppendKv. plume-server stores K/V caches
  // only when this returns OK for num_pages 0 and null pointers on an empty
  // cache (its start-up probe); otherwise they stay in memory only.
  virtual absl::Status ReadKv(const BackendKvCache& cache, int64_t first_page, int64_t num_pages,
                              uint8_t* pages, float* k_scales, float* v_scales) {
    (void)cache, (void)first_page, (void)num_pages, (void)pages, (void)k_scales, (void)v_scales;
    return absl::UnimplementedError(absl::StrCat(
        "backend ", std::string(name()),
        " cannot read K/V caches back for the durable store; run with --store_dir= to keep them "
        "in memory only"));
  }
  // Makes a cache of `seq` tokens from pages_for(seq) pages laid out as
  // ReadKv writes them and the cache-wide scales (global_scales() floats
  // each; ignored when there are none), already verified (a store file's
  // checksum and scales). The budget is reserved by the caller.
  virtual absl::StatusOr<std::unique_ptr<BackendKvCache>> KvFromPacked(const KvShape& shape,
                                                                       int64_t seq,
                                                                       const uint8_t* pages,
                                                                       const float* k_scales,
                                                                       const float* v_scales) {
    (void)shape, (void)seq, (void)pages, (void)k_scales, (void)v_scales;
    return absl::UnimplementedError(
        absl::StrCat("backend ", std::string(name()), " cannot load stored K/V caches"));
  }
};

}  // namespace plume::core
