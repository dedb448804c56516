// The durable store without gRPC: CRC-32C, the file format against every
// truncation and byte flip, the directory's write/load/quarantine cycle, and
// MatrixService persisting uploads and deletes.
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/synchronization/notification.h"
#include "plume/reference/api.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/core/crc32c.h"
#include "server/core/durable_store.h"
#include "server/core/store_loader.h"
#include "server/core/matrix_service.h"
#include "server/core/matrix_store.h"
#include "tests/common/core_calls.h"
#include "tests/common/files.h"
#include "tests/common/gemv_reference.h"

namespace plume::core {
namespace {

namespace fs = std::filesystem;

std::string Bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

using plume::testing::ReadFile;
using plume::testing::TempDir;
using plume::testing::WriteFile;

// A quantized matrix in host memory.
StoredMatrix MakeMatrix(const std::string& name, int64_t rows, int64_t cols, ScaleMode mode,
                        uint32_t seed) {
  StoredMatrix m;
  m.meta.name = name;
  m.meta.shape = MatrixShape{rows, cols, Fp8Format::kE4M3, mode, true};
  m.meta.source_dtype = DType::kF32;
  m.meta.created_unix_ms = 1700000000000 + seed;
  std::vector<float> w = testing::RandomNormal(rows * cols, seed);
  m.words.resize(static_cast<size_t>(m.meta.shape.layout().total_words()));
  m.scales.resize(static_cast<size_t>(m.meta.shape.num_scales()));
  ref::QuantizePack(w.data(), DType::kF32, rows, cols, {Fp8Format::kE4M3, mode, true},
                    m.words.data(), m.scales.data());
  return m;
}

std::string Encode(const StoredMatrix& m) {
  return EncodeMatrixFile(m.meta, m.scales.data(), m.words.data());
}

TEST(Crc32c, KnownValueAndHardwareMatchesTable) {
  EXPECT_EQ(Crc32c(0, "123456789", 9), 0xE3069283u);  // the standard check value
  EXPECT_EQ(Crc32cPortable(0, "123456789", 9), 0xE3069283u);
  std::mt19937 rng(5);
  std::string data(4099, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  for (size_t n : {0, 1, 7, 8, 9, 63, 64, 1000, 4099}) {
    EXPECT_EQ(Crc32c(0, data.data(), n), Crc32cPortable(0, data.data(), n)) << n;
  }
  // Chaining equals one pass.
  EXPECT_EQ(Crc32c(Crc32c(0, data.data(), 100), data.data() + 100, 3999),
            Crc32c(0, data.data(), 4099));
}

TEST(Crc32c, CombineEqualsOnePassOverEverySplit) {
  std::mt19937 rng(6);
  std::string data(size_t{3} << 20, '\0');  // lengths with many bits set
  for (char& c : data) c = static_cast<char>(rng());
  for (size_t len : {0, 1, 9, 100, 3000}) {
    const uint32_t whole = Crc32c(0, data.data(), len);
    for (size_t split = 0; split <= len; split += (len < 20 ? 1 : 37)) {
      const uint32_t a = Crc32c(0, data.data(), split);
      const uint32_t b = Crc32c(0, data.data() + split, len - split);
      ASSERT_EQ(Crc32cCombine(a, b, len - split), whole) << len << " split at " << split;
    }
  }
  EXPECT_EQ(Crc32cCombine(Crc32c(0, data.data(), 5), Crc32c(0, data.data() + 5, data.size() - 5), data.size() - 5),
            Crc32c(0, data.data(), data.size()));
  // The header a streamed file gets from its words' CRC is the one the words give.
  const StoredMatrix m = MakeMatrix("w", 130, 200, ScaleMode::kBlock128x128, 3);
  EXPECT_EQ(EncodeMatrixHeaderWithWordsCrc(m.meta, m.scales.data(),
                                           Crc32c(0, m.words.data(), m.words.size() * 4)),
            EncodeMatrixHeader(m.meta, m.scales.data(), m.words.data()));
  EXPECT_EQ(MatrixFileWordsOffset(m.meta),
            static_cast<int64_t>(Encode(m).size() - m.words.size() * 4));
}

TEST(StoreFile, RoundTripsEveryScaleMode) {
  int seed = 1;
  for (ScaleMode mode : {ScaleMode::kNone, ScaleMode::kTensor, ScaleMode::kRow, ScaleMode::kBlock128}) {
    StoredMatrix m = MakeMatrix("w.x-1", 19, 300, mode, seed++);
    auto d = DecodeMatrixFile(Encode(m));
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(d->meta.name, m.meta.name);
    EXPECT_EQ(d->meta.shape.rows, 19);
    EXPECT_EQ(d->meta.shape.cols, 300);
    EXPECT_EQ(d->meta.shape.scale_mode, mode);
    EXPECT_EQ(d->meta.created_unix_ms, m.meta.created_unix_ms);
    EXPECT_EQ(d->words, m.words);
    EXPECT_EQ(d->scales, m.scales);
  }
}

TEST(StoreFile, EveryTruncationAndEveryByteFlipIsDataLoss) {
  StoredMatrix m = MakeMatrix("small", 3, 20, ScaleMode::kRow, 9);
  const std::string good = Encode(m);
  ASSERT_TRUE(DecodeMatrixFile(good).ok());
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_EQ(DecodeMatrixFile(std::string_view(good).substr(0, n)).status().code(),
              absl::StatusCode::kDataLoss)
        << "truncated to " << n;
  }
  EXPECT_EQ(DecodeMatrixFile(good + "x").status().code(), absl::StatusCode::kDataLoss);
  for (size_t i = 0; i < good.size(); ++i) {
    for (int bit : {0, 7}) {
      std::string bad = good;
      bad[i] = static_cast<char>(bad[i] ^ (1 << bit));
      EXPECT_EQ(DecodeMatrixFile(bad).status().code(), absl::StatusCode::kDataLoss)
          << "byte " << i << " bit " << bit;
    }
  }
}

// A file that is internally consistent (right checksum) but lies about what
// it holds is rejected too: the loader trusts nothing the checksum covers.
TEST(StoreFile, ConsistentButInvalidContentIsRejected) {
  StoredMatrix m = MakeMatrix("w", 2, 20, ScaleMode::kRow, 3);
  m.scales[1] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(DecodeMatrixFile(Encode(m)).status().code(), absl::StatusCode::kDataLoss);
  m = MakeMatrix("w", 2, 20, ScaleMode::kRow, 3);
  m.words[m.meta.shape.layout().words_per_row() - 1] |= 0xFF000000u;  // a padding code
  EXPECT_EQ(DecodeMatrixFile(Encode(m)).status().code(), absl::StatusCode::kDataLoss);
  m = MakeMatrix("../etc", 2, 20, ScaleMode::kRow, 3);
  EXPECT_EQ(DecodeMatrixFile(Encode(m)).status().code(), absl::StatusCode::kDataLoss);
}

TEST(DirectoryStore, SavesLoadsRemovesAndQuarantines) {
  TempDir dir;
  std::vector<StoredMatrix> ms;
  {
    auto disk = DirectoryStore::Open(dir.str());
    ASSERT_TRUE(disk.ok()) << disk.status();
    for (int i = 0; i < 5; ++i) {
      ms.push_back(MakeMatrix("m" + std::to_string(i), 5 + i, 33 + 17 * i,
                              static_cast<ScaleMode>(1 + i % 4), 100 + i));
      ASSERT_TRUE((*disk)->SaveMatrix(ms.back().meta, ms.back().words.data(),
                                      ms.back().scales.data())
                      .ok());
    }
    ASSERT_TRUE((*disk)->RemoveMatrix("m4").ok());
    EXPECT_TRUE((*disk)->RemoveMatrix("never-existed").ok());
  }
  EXPECT_FALSE(fs::exists(dir / "m4.pmx"));
  // m1: truncated; m2: one flipped payload byte; m3 renamed to another name;
  // a leftover temp file; an unrelated file that must be left alone.
  std::string m1 = ReadFile(dir / "m1.pmx");
  WriteFile(dir / "m1.pmx", m1.substr(0, m1.size() - 5));
  std::string m2 = ReadFile(dir / "m2.pmx");
  m2[m2.size() - 3] ^= 0x10;
  WriteFile(dir / "m2.pmx", m2);
  fs::rename(dir / "m3.pmx", dir / "other.pmx");
  WriteFile(dir / ".tmp-m9.pmx.1.0", "partial");
  WriteFile(dir / "README", "not a store file");

  auto disk = DirectoryStore::Open(dir.str());
  ASSERT_TRUE(disk.ok());
  std::vector<StoredMatrix> loaded;
  auto report = (*disk)->LoadAll([&](StoredMatrix m) {
    loaded.push_back(std::move(m));
    return absl::OkStatus();
  });
  EXPECT_EQ(report.loaded, 1);
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(loaded[0].meta.name, "m0");
  EXPECT_EQ(loaded[0].words, ms[0].words);
  EXPECT_EQ(loaded[0].scales, ms[0].scales);
  EXPECT_EQ(report.quarantined.size(), 3u);
  EXPECT_EQ(report.temp_removed.size(), 1u);
  EXPECT_FALSE(fs::exists(dir / ".tmp-m9.pmx.1.0"));
  EXPECT_TRUE(fs::exists(dir / "README"));
  EXPECT_FALSE(fs::exists(dir / "m1.pmx"));
  int in_quarantine = 0;
  for (const auto& e : fs::directory_iterator(dir / "quarantine")) {
    (void)e;
    ++in_quarantine;
  }
  EXPECT_EQ(in_quarantine, 3);
}

// Uploads through MatrixService land on disk before they are acknowledged,
// reload bit-identically into a fresh store, and deletes remove the file.
// A Persistence whose RemoveMatrix waits until the test lets it go.
class SlowRemove final : public Persistence {
 public:
  absl::Status SaveMatrix(const StoredMatrixMeta&, const uint32_t*, const float*) override {
    return absl::OkStatus();
  }
  absl::Status RemoveMatrix(std::string_view) override {
    entered_.Notify();
    release_.WaitForNotification();
    return absl::OkStatus();
  }
  absl::Notification entered_, release_;
};

TEST(MatrixStore, ADeleteOnDiskBlocksNoLookup) {
  // While a delete waits on its file, lookups of every matrix and listings
  // go on (the one being deleted is already gone from them); its name stays
  // taken until the file is gone; a second delete of it is ABORTED.
  CpuBackend backend(1);
  SlowRemove disk;
  MatrixStore store(int64_t{1} << 20, nullptr);
  store.set_persistence(&disk);
  const MatrixShape shape{8, 16, Fp8Format::kE4M3, ScaleMode::kRow, true};
  const auto w = testing::RandomNormal(shape.rows * shape.cols, 5);
  for (const char* name : {"a", "b"}) {
    auto up = store.BeginUpload(name, shape.resident_bytes());
    ASSERT_TRUE(up.ok()) << up.status();
    auto m = backend.Quantize(shape, w.data(), DType::kF32);
    ASSERT_TRUE(m.ok());
    store.Commit(std::move(*up), shape, DType::kF32, std::move(*m));
  }
  std::thread deleter([&] { EXPECT_TRUE(store.Delete("a").ok()); });
  disk.entered_.WaitForNotification();
  auto lookups = std::async(std::launch::async, [&] {
    return store.Get("b").ok() &&
           store.Get("a").status().code() == absl::StatusCode::kNotFound &&
           store.List().size() == 1 &&
           store.BeginUpload("a", 1).status().code() == absl::StatusCode::kAlreadyExists &&
           store.Delete("a").code() == absl::StatusCode::kAborted;
  });
  const bool in_time = lookups.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
  disk.release_.Notify();  // before any assertion that could end the test
  deleter.join();
  ASSERT_TRUE(in_time) << "a lookup waited for the delete's file removal";
  EXPECT_TRUE(lookups.get());
  EXPECT_EQ(store.Get("a").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store.Get("b").ok());
  EXPECT_EQ(store.used_bytes(), shape.resident_bytes());
}

TEST(DirectoryStore, MatrixServicePersistsUploadsAndDeletes) {
  TempDir dir;
  const int64_t rows = 21, cols = 150;
  std::vector<float> w = testing::RandomNormal(rows * cols, 77);
  std::vector<float> x = testing::RandomNormal(cols, 78);
  const testing::HostTensor in = testing::F32Tensor({cols}, x);
  auto gemv = [&](CpuBackend& backend, MatrixService& svc, const std::string& name) {
    testing::CoreCalls calls(&backend);
    testing::HeldResult out;
    EXPECT_TRUE(calls.Gemv(svc, {name, in.view()}, &out).ok());
    return out.data;
  };
  std::string y_before;
  int64_t created = 0;
  {
    auto disk = DirectoryStore::Open(dir.str());
    ASSERT_TRUE(disk.ok());
    CpuBackend backend(2);
    MatrixStore store(int64_t{1} << 30, nullptr);
    store.set_persistence(disk->get());
    MatrixService svc(&backend, &store, Limits{});
    for (const char* name : {"keep", "gone"}) {
      auto up = svc.BeginUpload(testing::F32Header(name, rows, cols, ScaleMode::kBlock128));
      ASSERT_TRUE(up.ok());
      ASSERT_TRUE((*up)->AddData(Bytes(w)).ok());
      auto info = (*up)->Finish();
      ASSERT_TRUE(info.ok()) << info.status();
      if (std::string(name) == "keep") created = info->created_unix_ms;
      EXPECT_TRUE(fs::exists(dir / (std::string(name) + ".pmx")));
    }
    y_before = gemv(backend, svc, "keep");
    ASSERT_TRUE(svc.DeleteMatrix("gone").ok());
    EXPECT_FALSE(fs::exists(dir / "gone.pmx"));
  }
  auto disk = DirectoryStore::Open(dir.str());
  ASSERT_TRUE(disk.ok());
  CpuBackend backend(2);
  MatrixStore store(int64_t{1} << 30, nullptr);
  auto report = LoadStoredMatrices(disk->get(), &backend, &store);
  EXPECT_EQ(report.loaded, 1);
  EXPECT_TRUE(report.quarantined.empty());
  MatrixService svc(&backend, &store, Limits{});
  auto info = svc.GetMatrix("keep");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->created_unix_ms, created);
  EXPECT_EQ(svc.GetMatrix("gone").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(gemv(backend, svc, "keep"), y_before);  // bit-identical results after the reload
  // The stored codes are exactly what the reference quantizer produces.
  auto file = DecodeMatrixFile(ReadFile(dir / "keep.pmx"));
  ASSERT_TRUE(file.ok());
  StoredMatrix want = MakeMatrix("keep", rows, cols, ScaleMode::kBlock128, 77);
  EXPECT_EQ(file->words, want.words);
  EXPECT_EQ(file->scales, want.scales);
}

// A good file that does not fit the budget is reported, not quarantined.
TEST(DirectoryStore, OverBudgetFilesStayOnDisk) {
  TempDir dir;
  auto disk = DirectoryStore::Open(dir.str());
  ASSERT_TRUE(disk.ok());
  StoredMatrix m = MakeMatrix("big", 64, 64, ScaleMode::kRow, 4);
  ASSERT_TRUE((*disk)->SaveMatrix(m.meta, m.words.data(), m.scales.data()).ok());
  CpuBackend backend(1);
  MatrixStore store(100, nullptr);
  auto report = LoadStoredMatrices(disk->get(), &backend, &store);
  EXPECT_EQ(report.loaded, 0);
  ASSERT_EQ(report.not_loaded.size(), 1u);
  EXPECT_NE(report.not_loaded[0].find("RESOURCE_EXHAUSTED"), std::string::npos);
  EXPECT_TRUE(fs::exists(dir / "big.pmx"));
}

}  // namespace
}  // namespace plume::core
