// The durable store writes a matrix the backend quantized from bounded
// slices of rows (Backend::ReadPackedRows, BackendSliceSource,
// Persistence::SaveMatrixFrom): every scale mode, ragged shapes, slices of
// one row up to the whole matrix. The file is SaveMatrix's byte for byte and
// loads back to the same codes and scales; no read is larger than a slice
// and nothing reads the whole matrix back; the slice buffer counts against
// the memory budget. Also the backends' ranged reads themselves (CPU, and
// sharded across its shards' boundaries).
#include <algorithm>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "plume/reference/api.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/backends/sharded/sharded_backend.h"
#include "server/core/durable_store.h"
#include "server/core/matrix_service.h"
#include "server/core/matrix_store.h"
#include "server/core/packed_matrix.h"
#include "server/core/store_codec.h"
#include "server/core/store_loader.h"
#include "tests/common/core_calls.h"
#include "tests/common/files.h"
#include "tests/common/gemv_reference.h"

namespace plume::core {
namespace {

using plume::testing::ReadFile;
using plume::testing::TempDir;

constexpr ScaleMode kModes[] = {ScaleMode::kNone, ScaleMode::kTensor, ScaleMode::kRow,
                                ScaleMode::kBlock128, ScaleMode::kBlock128x128};

// A CpuBackend that records the reads of packed matrices: the largest
// ReadPackedRows (words and scales, bytes), how many, and whole ReadPackeds.
class RecordingBackend final : public Backend {
 public:
  std::string_view name() const override { return "recording"; }
  int64_t memory_capacity_bytes() const override { return cpu_.memory_capacity_bytes(); }
  absl::StatusOr<std::unique_ptr<BackendMatrix>> Quantize(const MatrixShape& shape, const void* src,
                                                          DType src_dtype) override {
    return cpu_.Quantize(shape, src, src_dtype);
  }
  absl::StatusOr<std::unique_ptr<RowQuantizer>> BeginRowQuantize(const MatrixShape& shape,
                                                                 DType src_dtype) override {
    return cpu_.BeginRowQuantize(shape, src_dtype);
  }
  absl::StatusOr<std::unique_ptr<BackendMatrix>> FromPacked(const MatrixShape& shape,
                                                            const uint32_t* words,
                                                            const float* scales) override {
    return cpu_.FromPacked(shape, words, scales);
  }
  absl::Status ReadPacked(const BackendMatrix& m, uint32_t* words, float* scales) override {
    {
      absl::MutexLock lock(&mu_);
      ++whole_reads_;
    }
    return cpu_.ReadPacked(m, words, scales);
  }
  absl::Status ReadPackedRows(const BackendMatrix& m, int64_t row0, int64_t rows, uint32_t* words,
                              float* scales) override {
    const MatrixShape& s = m.shape();
    const int64_t bytes =
        (rows * s.layout().words_per_row() + ScalesOfRowsCount(s.scale_mode, s.cols, rows)) * 4;
    {
      absl::MutexLock lock(&mu_);
      ++row_reads_;
      max_read_bytes_ = std::max(max_read_bytes_, bytes);
    }
    return cpu_.ReadPackedRows(m, row0, rows, words, scales);
  }
  absl::Status Gemv(const BackendMatrix& w, const GemvArgs& args) override {
    return cpu_.Gemv(w, args);
  }

  int64_t whole_reads() const {
    absl::MutexLock lock(&mu_);
    return whole_reads_;
  }
  int64_t row_reads() const {
    absl::MutexLock lock(&mu_);
    return row_reads_;
  }
  int64_t max_read_bytes() const {
    absl::MutexLock lock(&mu_);
    return max_read_bytes_;
  }
  void Reset() {
    absl::MutexLock lock(&mu_);
    whole_reads_ = row_reads_ = max_read_bytes_ = 0;
  }

 private:
  CpuBackend cpu_{1};
  mutable absl::Mutex mu_;
  int64_t whole_reads_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t row_reads_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t max_read_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

// A matrix quantized by the reference (as uploaded: BLOCK128X128 in its
// 128x128 form), a few rows scaled up so that scales differ.
StoredMatrix MakeMatrix(const std::string& name, int64_t rows, int64_t cols, ScaleMode mode,
                        Fp8Format format, uint32_t seed) {
  StoredMatrix m;
  m.meta.name = name;
  m.meta.shape = MatrixShape{rows, cols, format, mode, true};
  m.meta.source_dtype = DType::kF32;
  m.meta.created_unix_ms = 1700000000000 + seed;
  m.meta.content_hash = "sha256:slices";
  std::vector<float> w = testing::RandomNormal(rows * cols, seed);
  for (int64_t r = 0; r < rows; r += 5) {
    for (int64_t c = 0; c < cols; ++c) w[static_cast<size_t>(r * cols + c)] *= 9.0f;
  }
  m.words.resize(static_cast<size_t>(m.meta.shape.layout().total_words()));
  m.scales.resize(static_cast<size_t>(std::max<int64_t>(m.meta.shape.num_scales(), 1)));
  ref::QuantizePack(w.data(), DType::kF32, rows, cols, {format, mode, true}, m.words.data(),
                    m.scales.data());
  m.scales.resize(static_cast<size_t>(m.meta.shape.num_scales()));
  return m;
}

// The largest read a source of `shape` may make: `slice_bytes`, or one row
// where a row is larger.
int64_t ReadBound(const MatrixShape& shape, int64_t slice_bytes) {
  const MatrixShape r = ResidentShape(shape);
  const int64_t row = (r.layout().words_per_row() + ScalesOfRowsCount(r.scale_mode, r.cols, 1)) * 4;
  return std::max(slice_bytes, row);
}

// A Persistence that keeps what SaveMatrix was given (the default
// SaveMatrixFrom gathers the slices into it).
class KeepingPersistence final : public Persistence {
 public:
  absl::Status SaveMatrix(const StoredMatrixMeta& meta, const uint32_t* words,
                          const float* scales) override {
    file = EncodeMatrixFile(meta, scales, words);
    return absl::OkStatus();
  }
  absl::Status RemoveMatrix(std::string_view) override { return absl::OkStatus(); }
  std::string file;
};

TEST(StoreSlices, SlicedFileIsSaveMatrixsByteForByteInEveryMode) {
  TempDir dir;
  auto whole = DirectoryStore::Open((dir / "whole").string());
  auto sliced = DirectoryStore::Open((dir / "sliced").string());
  ASSERT_TRUE(whole.ok() && sliced.ok());
  RecordingBackend backend;
  struct Shape {
    int64_t rows, cols;
  };
  // Ragged rows and columns (not multiples of 16 or 128), one row, exact bands.
  const Shape shapes[] = {{300, 515}, {129, 128}, {1, 17}, {257, 1000}, {128, 256}};
  uint32_t seed = 1;
  int cases = 0;
  for (ScaleMode mode : kModes) {
    for (Fp8Format format : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
      for (const Shape& sh : shapes) {
        const std::string name = "m" + std::to_string(cases++);
        const StoredMatrix m = MakeMatrix(name, sh.rows, sh.cols, mode, format, seed++);
        auto resident = FromPackedAsUploaded(&backend, m.meta.shape, m.words.data(), m.scales.data());
        ASSERT_TRUE(resident.ok()) << resident.status();
        ASSERT_TRUE((*whole)->SaveMatrix(m.meta, m.words.data(), m.scales.data()).ok());
        const std::string want = ReadFile(dir / "whole" / (name + ".pmx"));
        ASSERT_EQ(want, EncodeMatrixFile(m.meta, m.scales.data(), m.words.data()));
        // One row per slice, a few KiB (several rows, and bands cut across),
        // and the whole matrix in one.
        for (int64_t slice_bytes : {int64_t{1}, int64_t{4096}, int64_t{1} << 30}) {
          SCOPED_TRACE(::testing::Message() << name << " mode " << static_cast<int>(mode) << " "
                                            << sh.rows << "x" << sh.cols << " slice "
                                            << slice_bytes);
          backend.Reset();
          auto source = BackendSliceSource::Create(&backend, **resident, m.meta.shape, slice_bytes);
          ASSERT_TRUE(source.ok()) << source.status();
          ASSERT_TRUE((*sliced)->SaveMatrixFrom(m.meta, **source).ok());
          EXPECT_EQ(ReadFile(dir / "sliced" / (name + ".pmx")), want);
          EXPECT_EQ(backend.whole_reads(), 0);
          EXPECT_LE(backend.max_read_bytes(), ReadBound(m.meta.shape, slice_bytes));
          const int64_t slices =
              (sh.rows + (*source)->rows_per_slice() - 1) / (*source)->rows_per_slice();
          EXPECT_EQ(backend.row_reads(), slices);
          if (slice_bytes == 1) EXPECT_EQ(backend.row_reads(), sh.rows);
          // The default SaveMatrixFrom (gathering the slices) gives the same.
          KeepingPersistence keep;
          auto again = BackendSliceSource::Create(&backend, **resident, m.meta.shape, slice_bytes);
          ASSERT_TRUE(again.ok());
          ASSERT_TRUE(keep.SaveMatrixFrom(m.meta, **again).ok());
          EXPECT_EQ(keep.file, want);
        }
        // And the file decodes to exactly the codes and scales.
        auto decoded = DecodeMatrixFile(ReadFile(dir / "sliced" / (name + ".pmx")));
        ASSERT_TRUE(decoded.ok()) << decoded.status();
        EXPECT_EQ(decoded->words, m.words) << name;
        EXPECT_EQ(decoded->scales, m.scales) << name;
      }
    }
  }
  // Nothing but the files: no temp file left behind.
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir / "sliced")) {
    if (e.is_regular_file()) {
      EXPECT_EQ(e.path().extension(), ".pmx") << e.path();
      ++files;
    }
  }
  EXPECT_EQ(files, cases);
}

// A source whose reads fail after `ok_reads`: the temp file goes, no file
// is left, and the error is the source's.
class FailingSource final : public MatrixSliceSource {
 public:
  FailingSource(MatrixSliceSource* inner, int ok_reads) : inner_(inner), left_(ok_reads) {}
  int64_t rows_per_slice() const override { return inner_->rows_per_slice(); }
  absl::Status Read(int64_t row0, MatrixSlice* out) override {
    if (left_-- == 0) return absl::InternalError("device copy failed");
    return inner_->Read(row0, out);
  }

 private:
  MatrixSliceSource* inner_;
  int left_;
};

TEST(StoreSlices, AFailedReadLeavesNoFile) {
  TempDir dir;
  auto disk = DirectoryStore::Open(dir.str());
  ASSERT_TRUE(disk.ok());
  RecordingBackend backend;
  const StoredMatrix m = MakeMatrix("f", 100, 300, ScaleMode::kRow, Fp8Format::kE4M3, 3);
  auto resident = FromPackedAsUploaded(&backend, m.meta.shape, m.words.data(), m.scales.data());
  ASSERT_TRUE(resident.ok());
  auto source = BackendSliceSource::Create(&backend, **resident, m.meta.shape, 2048);
  ASSERT_TRUE(source.ok());
  FailingSource failing(source->get(), 3);
  const absl::Status s = (*disk)->SaveMatrixFrom(m.meta, failing);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_NE(s.message().find("device copy failed"), std::string::npos) << s;
  for (const auto& e : std::filesystem::directory_iterator(dir.str())) {
    EXPECT_FALSE(e.is_regular_file()) << e.path();  // quarantine/ only
  }
}

// Uploads through MatrixService with a durable store: what the backend
// quantized goes to disk in slices of store_slice_bytes(), the file equal to
// the one SaveMatrix writes of the resident codes and scales, reloading to
// them exactly.
TEST(StoreSlices, UploadsAreStoredFromBoundedSlices) {
  TempDir dir;
  constexpr int64_t kSlice = 16 << 10;
  std::vector<std::pair<std::string, StoredMatrix>> resident;  // name, codes and scales served
  {
    auto disk = DirectoryStore::Open(dir.str());
    ASSERT_TRUE(disk.ok());
    RecordingBackend backend;
    MatrixStore store(int64_t{1} << 30, nullptr);
    store.set_persistence(disk->get());
    MatrixService svc(&backend, &store, Limits{});
    svc.set_store_slice_bytes(kSlice);
    uint32_t seed = 40;
    // BLOCK128X128 from F32 is quantized on the host and written whole:
    // the other four are the backend's, streamed (NONE, ROW, BLOCK128) or
    // staged (TENSOR).
    for (ScaleMode mode : {ScaleMode::kNone, ScaleMode::kTensor, ScaleMode::kRow, ScaleMode::kBlock128}) {
      for (Fp8Format format : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
        const std::string name = "u" + std::to_string(resident.size());
        const int64_t rows = 333, cols = 700;  // 704 codes a row: about 23 rows a slice
        std::vector<float> w = testing::RandomNormal(rows * cols, seed++);
        MatrixHeader h = testing::F32Header(name, rows, cols, mode);
        h.format = static_cast<int>(format);
        backend.Reset();
        auto up = svc.BeginUpload(h);
        ASSERT_TRUE(up.ok()) << up.status();
        const MatrixShape shape{rows, cols, format, mode, true};
        // The slice buffer fits in the staging the upload reserved: slices
        // are at most that, and at most store_slice_bytes().
        const int64_t slice = std::min<int64_t>(kSlice, (*up)->staging_bytes());
        EXPECT_GE((*up)->staging_bytes(), BackendSliceSource::BufferBytes(shape, slice)) << name;
        const std::string bytes(reinterpret_cast<const char*>(w.data()), w.size() * 4);
        for (size_t at = 0; at < bytes.size(); at += 50001) {
          ASSERT_TRUE((*up)->AddData(std::string_view(bytes).substr(at, 50001)).ok());
        }
        auto info = (*up)->Finish();
        ASSERT_TRUE(info.ok()) << info.status();
        EXPECT_EQ(backend.whole_reads(), 0) << name;
        EXPECT_GE(backend.row_reads(), 14) << name;
        EXPECT_LE(backend.max_read_bytes(), slice) << name;
        EXPECT_EQ(store.budget()->used(), store.used_bytes()) << name;  // staging given back
        // The file is SaveMatrix's of the codes and scales the backend serves.
        auto m = store.Get(name);
        ASSERT_TRUE(m.ok());
        StoredMatrix served;
        served.meta = StoredMatrixMeta{name, (*m)->shape, DType::kF32, info->created_unix_ms, ""};
        served.words.resize(static_cast<size_t>(shape.layout().total_words()));
        served.scales.resize(static_cast<size_t>(std::max<int64_t>(shape.num_scales(), 1)));
        ASSERT_TRUE(ReadPackedAsUploaded(&backend, *(*m)->data, (*m)->shape, served.words.data(),
                                         served.scales.data())
                        .ok());
        served.scales.resize(static_cast<size_t>(shape.num_scales()));
        EXPECT_EQ(ReadFile(dir / (name + ".pmx")),
                  EncodeMatrixFile(served.meta, served.scales.data(), served.words.data()))
            << name;
        resident.emplace_back(name, std::move(served));
      }
    }
  }
  // A restart loads every file back to the same codes and scales.
  auto disk = DirectoryStore::Open(dir.str());
  ASSERT_TRUE(disk.ok());
  CpuBackend backend(1);
  MatrixStore store(int64_t{1} << 30, nullptr);
  auto report = LoadStoredMatrices(disk->get(), &backend, &store);
  EXPECT_EQ(report.loaded, static_cast<int>(resident.size()));
  EXPECT_TRUE(report.quarantined.empty());
  for (const auto& [name, want] : resident) {
    auto m = store.Get(name);
    ASSERT_TRUE(m.ok()) << name;
    std::vector<uint32_t> words(want.words.size());
    std::vector<float> scales(std::max<size_t>(want.scales.size(), 1));
    ASSERT_TRUE(ReadPackedAsUploaded(&backend, *(*m)->data, (*m)->shape, words.data(), scales.data()).ok());
    scales.resize(want.scales.size());
    EXPECT_EQ(words, want.words) << name;
    EXPECT_EQ(scales, want.scales) << name;
  }
}

TEST(StoreSlices, TheSliceBufferFitsInTheUploadsStaging) {
  // 64 x 4096 ROW on the CPU backend: 256 KiB + 256 B resident, one 16 KiB
  // row of F32 staging while streamed. With a durable store and 64 KiB
  // slices allowed, the slices are cut to the staging the upload holds
  // anyway (3 rows of words and scales), so the upload needs no more
  // beside its matrix than without a store: one byte less is refused.
  TempDir dir;
  auto disk = DirectoryStore::Open(dir.str());
  ASSERT_TRUE(disk.ok());
  RecordingBackend backend;
  const int64_t rows = 64, cols = 4096;
  const MatrixShape shape{rows, cols, Fp8Format::kE4M3, ScaleMode::kRow, true};
  const int64_t staging = cols * 4;
  EXPECT_EQ(BackendSliceSource::BufferBytes(shape, staging), 3 * (cols + 4));  // whole rows
  const int64_t need = shape.resident_bytes() + staging;
  for (int64_t budget : {need - 1, need}) {
    MatrixStore store(budget, nullptr);
    store.set_persistence(disk->get());
    MatrixService svc(&backend, &store, Limits{});
    svc.set_store_slice_bytes(64 << 10);
    backend.Reset();
    const std::string name = "b" + std::to_string(budget);
    auto up = svc.BeginUpload(testing::F32Header(name, rows, cols));
    if (budget < need) {
      ASSERT_EQ(up.status().code(), absl::StatusCode::kResourceExhausted) << up.status();
      EXPECT_EQ(store.budget()->used(), 0);
      continue;
    }
    ASSERT_TRUE(up.ok()) << up.status();
    EXPECT_EQ((*up)->staging_bytes(), staging);
    std::vector<float> w = testing::RandomNormal(rows * cols, 9);
    ASSERT_TRUE((*up)->AddData(std::string_view(reinterpret_cast<const char*>(w.data()), w.size() * 4)).ok());
    auto info = (*up)->Finish();
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(backend.whole_reads(), 0);
    EXPECT_LE(backend.max_read_bytes(), staging);
    EXPECT_EQ(store.budget()->used(), shape.resident_bytes());
  }
}

TEST(StoreSlices, BackendsReadRowRangesOfTheirMatrices) {
  // The CPU backend, and a sharded one over two CPU devices whose shards
  // split the rows (ranges within a shard and across the boundary), in
  // every resident mode: each range equals those rows of the whole read.
  std::vector<std::unique_ptr<Backend>> devices;
  devices.push_back(std::make_unique<CpuBackend>(1));
  devices.push_back(std::make_unique<CpuBackend>(1));
  ShardedBackendOptions o;
  o.device_ids = {0, 1};
  o.device_budget_bytes = 40000;
  auto sharded = ShardedBackend::Create(std::move(devices), o);
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  CpuBackend cpu(1);
  const int64_t rows = 200, cols = 260;  // 272 codes a row: 54400 bytes, two shards
  for (Backend* b : {static_cast<Backend*>(&cpu), static_cast<Backend*>(sharded->get())}) {
    for (ScaleMode mode : {ScaleMode::kNone, ScaleMode::kTensor, ScaleMode::kRow, ScaleMode::kBlock128}) {
      const StoredMatrix m = MakeMatrix("r", rows, cols, mode, Fp8Format::kE4M3, 11);
      auto h = b->FromPacked(m.meta.shape, m.words.data(), m.scales.data());
      ASSERT_TRUE(h.ok()) << h.status();
      if (b != &cpu) {
        ASSERT_EQ(b->PlacementOf(**h).kind, Placement::kSharded);
      }
      const int64_t wpr = m.meta.shape.layout().words_per_row();
      for (auto [row0, n] : {std::pair<int64_t, int64_t>{0, 1}, {0, rows}, {7, 50}, {100, 100},
                            {120, 80}, {199, 1}, {60, 130}}) {
        std::vector<uint32_t> words(static_cast<size_t>(n * wpr), 0xDEADBEEFu);
        const int64_t ns = ScalesOfRowsCount(mode, cols, n);
        std::vector<float> scales(static_cast<size_t>(std::max<int64_t>(ns, 1)), -1.0f);
        ASSERT_TRUE(b->ReadPackedRows(**h, row0, n, words.data(), scales.data()).ok())
            << b->name() << " " << row0 << "+" << n;
        EXPECT_TRUE(std::equal(words.begin(), words.end(), m.words.begin() + row0 * wpr))
            << b->name() << " mode " << static_cast<int>(mode) << " rows " << row0 << "+" << n;
        const int64_t s0 = ScalesOfRowsStart(mode, cols, row0);
        for (int64_t i = 0; i < ns; ++i) {
          ASSERT_EQ(scales[static_cast<size_t>(i)], m.scales[static_cast<size_t>(s0 + i)])
              << b->name() << " mode " << static_cast<int>(mode) << " rows " << row0 << "+" << n;
        }
      }
      std::vector<uint32_t> words(static_cast<size_t>(rows * wpr));
      std::vector<float> scales(static_cast<size_t>(std::max<int64_t>(m.meta.shape.num_scales(), 1)));
      for (auto [row0, n] : {std::pair<int64_t, int64_t>{0, 0}, {-1, 2}, {199, 2}, {rows, 1}}) {
        EXPECT_EQ(b->ReadPackedRows(**h, row0, n, words.data(), scales.data()).code(),
                  absl::StatusCode::kOutOfRange)
            << row0 << "+" << n;
      }
    }
  }
}

}  // namespace
}  // namespace plume::core
