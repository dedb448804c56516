// The matrix service's logic, independent of gRPC and protobuf: uploads,
// lookups and GEMV over the store and a backend, on the plain structs of
// calls.h. server/grpc adapts it to the wire.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/core/backend.h"
#include "server/core/batcher.h"
#include "server/core/calls.h"
#include "server/core/durable_store.h"
#include "server/core/limits.h"
#include "server/core/matrix_store.h"
#include "server/core/validation.h"

namespace plume::core {

class MatrixService {
 public:
  MatrixService(Backend* backend, MatrixStore* store, const Limits& limits);

  // One UploadMatrix call: a validated header, then data (and, pre-packed,
  // scale) chunks, then Finish. Dropping it before Finish abandons the upload
  // and frees its name and budget.
  //
  // Streamed: with scale modes NONE, ROW and BLOCK128 on a backend with a
  // RowQuantizer, the source is quantized as its rows arrive, straight from
  // each chunk; only the partial row a chunk ends with is held back (and
  // whatever bounded buffers the quantizer keeps: host_staging_bytes).
  // Pre-packed uploads on a backend with a PackedWriter go straight into the
  // resident matrix as they arrive (only the scales are staged), and with a
  // durable store that streams (BeginMatrix) into their file alongside.
  // TENSOR (whose scale needs every value first) and other pre-packed
  // uploads stage the whole data. Either way the staging is reserved against
  // the memory budget for the upload's life, beside the matrix's own bytes.
  // With a durable store, a matrix the backend quantized is read back for
  // its file a slice of rows at a time (BackendSliceSource) into one host
  // buffer no larger than the staging already reserved (at most
  // store_slice_bytes(), at least one row), so it adds nothing to what the
  // upload holds against the budget.
  class Upload {
   public:
    absl::Status AddData(std::string_view chunk);
    absl::Status AddScales(std::string_view chunk);
    absl::StatusOr<MatrixInfo> Finish();
    // Host bytes this upload reserved for staging (tests, metrics).
    int64_t staging_bytes() const { return staging_.bytes(); }
    bool streamed() const { return quantizer_ != nullptr || packer_ != nullptr; }
    // Its file is written as the words arrive (tests).
    bool streams_to_disk() const { return file_ != nullptr; }

   private:
    friend class MatrixService;
    Upload(MatrixService* service, UploadPlan plan, MatrixStore::PendingUpload pending);
    MatrixService* service_;
    UploadPlan plan_;
    MatrixStore::PendingUpload pending_;
    Reservation staging_;
    int64_t received_ = 0;
    absl::StatusOr<MatrixInfo> FinishPacked(int64_t created_ms);
    std::unique_ptr<RowQuantizer> quantizer_;  // streamed uploads only
    // Streamed pre-packed uploads: the backend's writer, shared with the
    // file writer's thread while it reads the words (see BeginMatrix) ...
    std::shared_ptr<PackedWriter> packer_;
    // ... and the durable store's file of them, when it streams.
    std::unique_ptr<MatrixFileWriter> file_;
    int64_t row_bytes_ = 0;
    int64_t slice_bytes_ = 0;  // the store's read-back slices (BeginUpload)
    std::string data_;  // streamed: the partial row held back; otherwise all of the data
    std::string scales_;
  };


  absl::StatusOr<std::unique_ptr<Upload>> BeginUpload(const MatrixHeader& header);
  absl::StatusOr<MatrixInfo> GetMatrix(std::string_view name) const;
  // The info, with the resident codes and scales written into `words` and
  // `scales` (resized) as a pre-packed upload of it would send them
  // (GetMatrixRequest.include_packed). RESOURCE_EXHAUSTED when they would
  // not fit in a response.
  absl::StatusOr<MatrixInfo> GetMatrixPacked(std::string_view name, std::string* words,
                                             std::string* scales) const;
  // Every matrix, sorted by name.
  std::vector<MatrixInfo> ListMatrices() const;
  absl::Status DeleteMatrix(std::string_view name);

  // One GEMV through `batcher`: validates now, has `out` allocate the
  // result, queues the request on its matrix's queue and calls `done` once
  // with its status, from a WorkQueue thread once its batch ran (or inline,
  // refused). The bytes `call` views and those `out` allocated must stay
  // valid until then; `out` itself and `call` need not outlive this call.
  void GemvAsync(Batcher* batcher, const GemvCall& call, ResultSink* out, RequestLife life,
                 std::function<void(const absl::Status&)> done);

  const Limits& limits() const { return limits_; }
  Backend* backend() const { return backend_; }

  // Bytes of packed words and scales read back per slice to write a
  // quantized matrix's file (default BackendSliceSource::kDefaultSliceBytes;
  // tests lower it). Set before serving.
  void set_store_slice_bytes(int64_t n) { store_slice_bytes_ = n; }
  int64_t store_slice_bytes() const { return store_slice_bytes_; }

 private:
  MatrixInfo Info(const Matrix& m) const;
  // Starts one backend GEMV; where it finishes, records its metrics (kernel
  // time, host part, batch size, bytes) and calls `finished`.
  void StartGemv(std::shared_ptr<const Matrix> m, const GemvArgs& args, BatchFinishedFn finished);

  Backend* backend_;
  MatrixStore* store_;
  Limits limits_;
  int64_t store_slice_bytes_;
};

}  // namespace plume::core
