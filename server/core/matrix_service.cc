#include "server/core/matrix_service.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/core/batcher.h"
#include "server/core/durable_store.h"
#include "server/core/metrics.h"
#include "server/core/packed_matrix.h"
#include "plume/reference/api.h"

namespace plume::core {

MatrixService::MatrixService(Backend* backend, MatrixStore* store, const Limits& limits)
    : backend_(backend),
      store_(store),
      limits_(limits),
      store_slice_bytes_(BackendSliceSource::kDefaultSliceBytes) {}

MatrixService::Upload::Upload(MatrixService* service, UploadPlan plan,
                              MatrixStore::PendingUpload pending)
    : service_(service), plan_(plan), pending_(std::move(pending)) {}

absl::StatusOr<std::unique_ptr<MatrixService::Upload>> MatrixService::BeginUpload(
    const MatrixHeader& header) {
  auto plan = ValidateHeader(header, limits_);
  if (!plan.ok()) return plan.status();
  const int64_t resident = backend_->ReservedBytes(ResidentShape(plan->shape));
  const std::string name(header.name);
  auto pending = store_->BeginUpload(name, resident);
  if (!pending.ok()) return pending.status();
  auto upload = std::unique_ptr<Upload>(new Upload(this, *plan, std::move(*pending)));
  // BLOCK128X128 needs 128 whole rows per scale: its source is staged whole
  // and quantized on the host (ref::QuantizePack), like a pre-packed upload
  // without a PackedWriter.
  const bool tiled = plan->shape.scale_mode == ScaleMode::kBlock128x128;
  Persistence* disk = store_->persistence();
  if (plan->prepacked) {
    auto w = backend_->BeginPackedWrite(ResidentShape(plan->shape));
    if (!w.ok()) return w.status();
    // A durable store writes the words from host memory: without them there
    // the words are staged as before.
    if (*w != nullptr && (disk == nullptr || (*w)->host_words() != nullptr)) {
      upload->packer_ = std::move(*w);
    }
  }
  if (!plan->prepacked && !tiled) {
    auto q = backend_->BeginRowQuantize(plan->shape, plan->source_dtype);
    if (!q.ok()) return q.status();
    upload->quantizer_ = std::move(*q);
    upload->row_bytes_ = plan->shape.cols * DTypeSize(plan->source_dtype);
  }
  // Staging: one row when streamed (the partial row a chunk ends with) plus
  // the quantizer's own host buffers (the CUDA backend's pinned ones), all
  // of the data otherwise (and for a host quantization its codes and
  // scales); reserved against the budget like the matrix.
  int64_t stage =
      upload->quantizer_ != nullptr
          ? upload->row_bytes_ + upload->quantizer_->host_staging_bytes()
      : upload->packer_ != nullptr ? plan->scale_bytes
      : tiled ? plan->data_bytes + plan->shape.layout().code_bytes() +
                    plan->shape.num_scales() * int64_t{sizeof(float)}
              : plan->data_bytes + plan->scale_bytes;
  // A matrix the backend quantizes is read back for its file through one
  // slice buffer, allocated once the quantizer and the staged data are gone
  // (Finish). Its slices are sized to the staging reserved here, so the
  // reservation covers it without growing (only a row wider than the
  // staging, in tiny matrices, raises it to one row).
  if (disk != nullptr && !plan->prepacked && !tiled) {
    upload->slice_bytes_ = std::min(store_slice_bytes_, stage);
    stage = std::max(stage, BackendSliceSource::BufferBytes(plan->shape, upload->slice_bytes_));
  }
  const std::shared_ptr<Budget>& budget = store_->budget();
  if (!budget->TryReserve(stage)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "upload of \"", name, "\" needs ", stage, " bytes of staging beside ",
        resident, " resident; the memory budget has ",
        budget->capacity() - budget->used(), " of ", budget->capacity(),
        " bytes free (--memory_budget_bytes)"));
  }
  upload->staging_ = Reservation(budget, stage);
  try {
    upload->data_.reserve(static_cast<size_t>(upload->quantizer_ != nullptr ? upload->row_bytes_
                                              : upload->packer_ != nullptr  ? 0
                                                                            : plan->data_bytes));
    upload->scales_.reserve(static_cast<size_t>(plan->scale_bytes));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", stage, " bytes to stage the upload"));
  }
  // A durable store that streams writes the file as the words arrive, from
  // the resident matrix's own memory.
  if (disk != nullptr && upload->packer_ != nullptr) {
    StoredMatrixMeta meta{name, plan->shape, plan->source_dtype, 0, plan->content_hash};
    auto f = disk->BeginMatrix(meta, upload->packer_->host_words(), upload->packer_);
    if (!f.ok()) return f.status();
    upload->file_ = std::move(*f);
  }
  return upload;
}

absl::Status MatrixService::Upload::AddData(std::string_view chunk) {
  if (received_ + static_cast<int64_t>(chunk.size()) > plan_.data_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "upload of \"", pending_.name(), "\" sent more data than its header declares: ",
        received_ + static_cast<int64_t>(chunk.size()), " bytes, expected ", plan_.data_bytes));
  }
  received_ += static_cast<int64_t>(chunk.size());
  if (packer_ != nullptr) {
    if (absl::Status s = packer_->Append(chunk); !s.ok()) return s;
    if (file_ != nullptr) file_->WordsReady(packer_->appended());
    return absl::OkStatus();
  }
  if (quantizer_ == nullptr) {
    data_.append(chunk);
    return absl::OkStatus();
  }
  // Complete the row held back, then feed whole rows straight from the
  // chunk, and hold back the partial row at its end.
  while (!chunk.empty()) {
    if (!data_.empty()) {
      const size_t take = std::min(static_cast<size_t>(row_bytes_) - data_.size(), chunk.size());
      data_.append(chunk.substr(0, take));
      chunk.remove_prefix(take);
      if (static_cast<int64_t>(data_.size()) == row_bytes_) {
        if (absl::Status s = quantizer_->AddRows(data_.data(), 1); !s.ok()) return s;
        data_.clear();
      }
      continue;
    }
    const int64_t rows = static_cast<int64_t>(chunk.size()) / row_bytes_;
    if (absl::Status s = quantizer_->AddRows(chunk.data(), rows); !s.ok()) return s;
    chunk.remove_prefix(static_cast<size_t>(rows * row_bytes_));
    data_.assign(chunk.data(), chunk.size());  // less than a row
    chunk = {};
  }
  return absl::OkStatus();
}

absl::Status MatrixService::Upload::AddScales(std::string_view chunk) {
  if (!plan_.prepacked) {
    return absl::InvalidArgumentError(
        "scales may only be sent with pre-packed (E4M3/E5M2 source_dtype) uploads");
  }
  if (static_cast<int64_t>(scales_.size() + chunk.size()) > plan_.scale_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("upload of \"", pending_.name(), "\" sent ", scales_.size() + chunk.size(),
                     " bytes of scales; scale mode needs ", plan_.scale_bytes));
  }
  scales_.append(chunk);
  return absl::OkStatus();
}

absl::StatusOr<MatrixInfo> MatrixService::Upload::Finish() {
  if (received_ != plan_.data_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("upload of \"", pending_.name(),
                                                   "\" ended after ", received_,
                                                   " bytes of data; expected ", plan_.data_bytes));
  }
  if (packer_ != nullptr) {
    return FinishPacked(std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count());
  }
  Persistence* disk = service_->store_->persistence();
  absl::StatusOr<std::unique_ptr<BackendMatrix>> data;
  // The packed form in host memory, when there is one: what goes to disk.
  const uint32_t* words = nullptr;
  const float* scales = nullptr;
  std::vector<uint32_t> host_words;
  std::vector<float> host_scales;
  if (plan_.prepacked) {
    if (static_cast<int64_t>(scales_.size()) != plan_.scale_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("upload of \"", pending_.name(), "\" ended after ", scales_.size(),
                       " bytes of scales; expected ", plan_.scale_bytes));
    }
    scales = reinterpret_cast<const float*>(scales_.data());
    if (absl::Status s = ValidatePackedScales(scales, plan_.shape.num_scales()); !s.ok()) return s;
    // Padding codes are defined to be zero: clear whatever the client sent there.
    const PackedLayout l = plan_.shape.layout();
    for (int64_t r = 0; r < l.rows; ++r) {
      std::memset(&data_[static_cast<size_t>(r * l.padded_cols() + l.cols)], 0,
                  static_cast<size_t>(l.padded_cols() - l.cols));
    }
    words = reinterpret_cast<const uint32_t*>(data_.data());
    data = FromPackedAsUploaded(service_->backend_, plan_.shape, words, scales);
  } else if (plan_.shape.scale_mode == ScaleMode::kBlock128x128) {
    // Quantized on the host (each scale needs its 128 rows), then held as
    // BLOCK128 like a pre-packed upload; the file gets these codes.
    try {
      host_words.resize(static_cast<size_t>(plan_.shape.layout().total_words()));
      host_scales.resize(static_cast<size_t>(plan_.shape.num_scales()));
    } catch (const std::bad_alloc&) {
      return absl::ResourceExhaustedError("cannot allocate host memory to quantize the upload");
    }
    ref::QuantizePack(data_.data(), plan_.source_dtype, plan_.shape.rows, plan_.shape.cols,
                      {plan_.shape.format, plan_.shape.scale_mode, plan_.shape.saturate},
                      host_words.data(), host_scales.data());
    std::string().swap(data_);
    words = host_words.data();
    scales = host_scales.data();
    data = FromPackedAsUploaded(service_->backend_, plan_.shape, words, scales);
  } else {
    // The backend quantizes (on the GPU for the CUDA backend); a durable
    // store then reads the packed form back, so the file holds exactly the
    // codes the backend serves: a slice of rows at a time (the staging
    // reservation covers the slice buffer), never the whole matrix.
    if (quantizer_ != nullptr) {
      data = quantizer_->Finish();  // every row has arrived, so none is held back
      quantizer_.reset();
    } else {
      data = service_->backend_->Quantize(plan_.shape, data_.data(), plan_.source_dtype);
    }
    std::string().swap(data_);
  }
  if (!data.ok()) return data.status();
  const int64_t created_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
  if (disk != nullptr) {  // acknowledged only once it is on disk
    StoredMatrixMeta meta{pending_.name(), plan_.shape, plan_.source_dtype, created_ms,
                          plan_.content_hash};
    if (words != nullptr) {
      if (absl::Status s = disk->SaveMatrix(meta, words, scales); !s.ok()) return s;
    } else {
      auto source = BackendSliceSource::Create(service_->backend_, **data, plan_.shape,
                                               slice_bytes_);
      if (!source.ok()) return source.status();
      if (absl::Status s = disk->SaveMatrixFrom(meta, **source); !s.ok()) return s;
    }
  }
  std::string().swap(data_);  // free the staging copy before publishing
  staging_.reset();
  auto m = service_->store_->Commit(std::move(pending_), plan_.shape, plan_.source_dtype,
                                    std::move(*data), created_ms, plan_.batching,
                                    plan_.content_hash);
  return service_->Info(*m);
}

absl::StatusOr<MatrixInfo> MatrixService::Upload::FinishPacked(int64_t created_ms) {
  if (static_cast<int64_t>(scales_.size()) != plan_.scale_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("upload of \"", pending_.name(), "\" ended after ", scales_.size(),
                     " bytes of scales; expected ", plan_.scale_bytes));
  }
  const float* scales = reinterpret_cast<const float*>(scales_.data());
  if (absl::Status s = ValidatePackedScales(scales, plan_.shape.num_scales()); !s.ok()) return s;
  // BLOCK128X128 scales are expanded to the BLOCK128 the backend holds.
  absl::StatusOr<std::unique_ptr<BackendMatrix>> data = packer_->Finish(scales, plan_.shape.scale_mode);
  if (!data.ok()) return data.status();
  Persistence* disk = service_->store_->persistence();
  if (file_ != nullptr) {  // acknowledged only once it is on disk
    absl::Status s = file_->Commit(created_ms, scales);
    file_.reset();
    if (!s.ok()) return s;
  } else if (disk != nullptr) {
    StoredMatrixMeta meta{pending_.name(), plan_.shape, plan_.source_dtype, created_ms,
                          plan_.content_hash};
    // host_words() is there (BeginUpload), and the matrix serves from it.
    const auto* words = reinterpret_cast<const uint32_t*>(packer_->host_words());
    if (absl::Status s = disk->SaveMatrix(meta, words, scales); !s.ok()) return s;
  }
  staging_.reset();
  auto m = service_->store_->Commit(std::move(pending_), plan_.shape, plan_.source_dtype,
                                    std::move(*data), created_ms, plan_.batching,
                                    plan_.content_hash);
  return service_->Info(*m);
}

MatrixInfo MatrixService::Info(const Matrix& m) const {
  MatrixInfo info;
  info.name = m.name;
  info.rows = m.shape.rows;
  info.cols = m.shape.cols;
  info.format = m.shape.format;
  info.scale_mode = m.shape.scale_mode;
  info.source_dtype = m.source_dtype;
  info.non_saturating = !m.shape.saturate;
  const PackedLayout l = m.shape.layout();
  info.padded_cols = l.padded_cols();
  info.num_scales = m.shape.num_scales();
  info.resident_bytes = m.shape.resident_bytes();
  info.created_unix_ms = m.created_unix_ms;
  info.backend = std::string(backend_->name());
  info.content_hash = m.content_hash;
  info.placement = backend_->PlacementOf(*m.data);
  info.gemv_kernels = backend_->GemvKernels(*m.data);
  return info;
}

absl::StatusOr<MatrixInfo> MatrixService::GetMatrix(std::string_view name) const {
  if (absl::Status s = ValidateName(name, limits_); !s.ok()) return s;
  auto m = store_->Get(name);
  if (!m.ok()) return m.status();
  return Info(**m);
}

absl::StatusOr<MatrixInfo> MatrixService::GetMatrixPacked(std::string_view name, std::string* words,
                                                          std::string* scales) const {
  if (absl::Status s = ValidateName(name, limits_); !s.ok()) return s;
  auto m = store_->Get(name);
  if (!m.ok()) return m.status();
  const MatrixShape& shape = (*m)->shape;
  const int64_t word_bytes = shape.layout().code_bytes();
  const int64_t scale_bytes = shape.num_scales() * int64_t{sizeof(float)};
  if (absl::Status s =
          ValidateResponseBytes(word_bytes + scale_bytes, limits_,
                                absl::StrCat("the packed form of \"", std::string(name), "\""));
      !s.ok()) {
    return s;
  }
  try {
    words->resize(static_cast<size_t>(word_bytes));
    scales->resize(static_cast<size_t>(scale_bytes));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("cannot allocate host memory for the packed matrix");
  }
  // ReadPacked writes at least one scale: NONE reads into a spare float.
  float none_scale = 0.0f;
  if (absl::Status s = ReadPackedAsUploaded(
          backend_, *(*m)->data, shape, reinterpret_cast<uint32_t*>(words->data()),
          scale_bytes > 0 ? reinterpret_cast<float*>(scales->data()) : &none_scale);
      !s.ok()) {
    return s;
  }
  return Info(**m);
}

std::vector<MatrixInfo> MatrixService::ListMatrices() const {
  std::vector<MatrixInfo> out;
  for (const auto& m : store_->List()) out.push_back(Info(*m));
  return out;
}

absl::Status MatrixService::DeleteMatrix(std::string_view name) {
  if (absl::Status s = ValidateName(name, limits_); !s.ok()) return s;
  return store_->Delete(std::string(name));
}

namespace {

// Has `out` allocate the result of `plan`: [rows] for a 1-D input, [batch, rows] otherwise.
char* AllocateGemvResult(const GemvPlan& plan, const MatrixShape& shape, ResultSink* out) {
  const int64_t dims[2] = {plan.batch, shape.rows};
  const absl::Span<const int64_t> result_shape =
      plan.input_is_vector ? absl::MakeConstSpan(dims + 1, 1) : absl::MakeConstSpan(dims, 2);
  return out->Allocate(plan.y_dtype, result_shape,
                       static_cast<size_t>(plan.batch * shape.rows * DTypeSize(plan.y_dtype)));
}

// The backend's arguments for `batch` vectors of `plan` at x, results to y.
GemvArgs ArgsOf(const GemvPlan& plan, const void* x, int64_t batch, void* y) {
  GemvArgs args;
  args.x = x;
  args.x_dtype = plan.x_dtype;
  args.x_scale = plan.x_scale;
  args.batch = batch;
  args.y = y;
  args.y_dtype = plan.y_dtype;
  return args;
}

}  // namespace

void MatrixService::StartGemv(std::shared_ptr<const Matrix> m, const GemvArgs& args,
                              BatchFinishedFn finished) {
  const auto k0 = std::chrono::steady_clock::now();
  const int64_t batch = args.batch;
  const BackendMatrix& data = *m->data;  // before the callback takes m
  backend_->GemvAsync(
      data, args,
      [m = std::move(m), k0, batch, finished = std::move(finished)](const absl::Status& s,
                                                                     double device) mutable {
        if (s.ok() && m->metrics != nullptr) {
          // The kernel metric is the device's part where the backend measures
          // it; the rest of the call's wall time, start to finish, is the host's.
          const double wall =
              std::chrono::duration<double>(std::chrono::steady_clock::now() - k0).count();
          const double kernel = device >= 0 ? std::min(device, wall) : wall;
          m->metrics->RecordKernel(kernel);
          m->metrics->RecordHostPart(wall - kernel);
          m->metrics->RecordBatch(batch);
          m->metrics->RecordWork(batch, m->shape.resident_bytes());
        }
        m.reset();  // a deleted matrix goes before its callers hear back
        finished(s, 0);
      });
}

void MatrixService::GemvAsync(Batcher* batcher, const GemvCall& call, ResultSink* out,
                              RequestLife life, std::function<void(const absl::Status&)> done) {
  if (absl::Status s = ValidateName(call.matrix, limits_); !s.ok()) return done(s);
  auto m = store_->Get(call.matrix);  // held alive by the request until it is done
  if (!m.ok()) return done(m.status());
  const MatrixShape& shape = (*m)->shape;
  auto plan = ValidateGemv(call, shape, limits_);
  if (!plan.ok()) return done(plan.status());
  char* y = AllocateGemvResult(*plan, shape, out);

  BatchRequest r;
  uint32_t scale_bits;
  std::memcpy(&scale_bits, &plan->x_scale, sizeof scale_bits);
  r.key = {static_cast<uint64_t>(plan->x_dtype), scale_bits, static_cast<uint64_t>(plan->y_dtype)};
  r.units = plan->batch;
  r.in = call.input.data.data();
  r.out = y;
  r.in_unit_bytes = static_cast<size_t>(shape.cols * DTypeSize(plan->x_dtype));
  r.out_unit_bytes = static_cast<size_t>(shape.rows * DTypeSize(plan->y_dtype));
  r.run = [this, matrix = *m, p = *plan](const void* x, int64_t units, void* y,
                                         BatchFinishedFn finished) {
    StartGemv(matrix, ArgsOf(p, x, units, y), std::move(finished));
  };
  r.metrics = (*m)->metrics.get();
  r.life = std::move(life);
  r.done = [done = std::move(done)](const absl::Status& s, int64_t) { done(s); };
  batcher->Submit(*m, "matrix", (*m)->name, batcher->Resolve((*m)->batching), std::move(r));
}

}  // namespace plume::core
