// Pre-packed uploads streamed into the resident matrix (PackedWriter) and,
// with a durable store, into their file as the words arrive
// (DirectoryStore::BeginMatrix): chunks of any size give exactly the matrix
// and the file bytes of a whole upload, with O_DIRECT and without; padding
// codes come out zero whatever was sent; sizes past the end are refused; an
// abandoned upload leaves no file behind.
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/backends/cpu/cpu_backend.h"
#include "server/core/durable_store.h"
#include "server/core/matrix_service.h"
#include "server/core/matrix_store.h"
#include "server/core/packed_matrix.h"
#include "server/core/store_loader.h"
#include "tests/common/files.h"

namespace plume::core {
namespace {

namespace fs = std::filesystem;
using plume::testing::ReadFile;
using plume::testing::TempDir;

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() | 1);  // never zero
  return s;
}

// Packed words of `shape` whose padding holds junk (what a client may send),
// and the same with the padding zeroed (what the server must keep).
struct Sent {
  std::string sent;
  std::string kept;
};
Sent PackedWithJunk(const MatrixShape& shape, uint32_t seed) {
  const PackedLayout l = shape.layout();
  Sent s{RandomBytes(static_cast<size_t>(l.code_bytes()), seed), {}};
  s.kept = s.sent;
  for (int64_t r = 0; r < l.rows; ++r) {
    for (int64_t c = l.cols; c < l.padded_cols(); ++c) s.kept[static_cast<size_t>(r * l.padded_cols() + c)] = 0;
  }
  return s;
}

std::vector<float> Scales(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(0.01f, 2.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = d(rng);
  return v;
}

std::string_view View(const std::vector<float>& v) {
  return std::string_view(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

// Splits `s` into chunks of random sizes in [1, max_chunk].
std::vector<std::string_view> Chunks(std::string_view s, size_t max_chunk, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::string_view> out;
  while (!s.empty()) {
    const size_t n = std::min(s.size(), 1 + rng() % max_chunk);
    out.push_back(s.substr(0, n));
    s.remove_prefix(n);
  }
  return out;
}

TEST(PackedWriter, ChunksOfAnySizeGiveTheMatrixWithZeroPadding) {
  CpuBackend backend(1);
  uint32_t seed = 10;
  for (auto [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {5, 16}, {7, 20}, {130, 200}, {3, 4100}}) {
    const MatrixShape shape{rows, cols, Fp8Format::kE4M3, ScaleMode::kBlock128, true};
    const Sent p = PackedWithJunk(shape, ++seed);
    const std::vector<float> scales = Scales(shape.num_scales(), ++seed);
    auto w = backend.BeginPackedWrite(shape);
    ASSERT_TRUE(w.ok() && *w != nullptr);
    for (std::string_view c : Chunks(p.sent, static_cast<size_t>(2 * shape.layout().padded_cols()), ++seed)) {
      ASSERT_TRUE((*w)->Append(c).ok());
    }
    // Nothing past the end, and it stays as it was.
    EXPECT_EQ((*w)->Append("x").code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ((*w)->appended(), shape.layout().code_bytes());
    ASSERT_NE((*w)->host_words(), nullptr);
    EXPECT_EQ(std::string_view(reinterpret_cast<const char*>((*w)->host_words()), p.kept.size()), p.kept);
    auto m = (*w)->Finish(scales.data(), ScaleMode::kBlock128);
    ASSERT_TRUE(m.ok()) << m.status();
    std::vector<uint32_t> words(static_cast<size_t>(shape.layout().total_words()));
    std::vector<float> got(scales.size());
    ASSERT_TRUE(backend.ReadPacked(**m, words.data(), got.data()).ok());
    EXPECT_EQ(std::string_view(reinterpret_cast<const char*>(words.data()), p.kept.size()), p.kept)
        << rows << "x" << cols;
    EXPECT_EQ(got, scales);
  }
}

TEST(PackedWriter, BlockScalesOf128RowsAreExpandedIntoTheMatrix) {
  CpuBackend backend(1);
  const MatrixShape shape{300, 200, Fp8Format::kE4M3, ScaleMode::kBlock128, true};  // held as BLOCK128
  const std::vector<float> tiles = Scales(NumScales(ScaleMode::kBlock128x128, 300, 200), 20);  // [3][2]
  auto w = backend.BeginPackedWrite(shape);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Append(std::string(static_cast<size_t>(shape.layout().code_bytes()), '\x11')).ok());
  auto m = (*w)->Finish(tiles.data(), ScaleMode::kBlock128x128);
  ASSERT_TRUE(m.ok()) << m.status();
  std::vector<uint32_t> words(static_cast<size_t>(shape.layout().total_words()));
  std::vector<float> got(static_cast<size_t>(shape.num_scales()));
  ASSERT_TRUE(backend.ReadPacked(**m, words.data(), got.data()).ok());
  for (int64_t r = 0; r < 300; ++r) {
    for (int64_t b = 0; b < 2; ++b) {
      ASSERT_EQ(got[static_cast<size_t>(r * 2 + b)], tiles[static_cast<size_t>((r / 128) * 2 + b)]) << r << " " << b;
    }
  }
  // Scales in a mode the matrix is not held in are a bug of the caller.
  auto other = backend.BeginPackedWrite(shape);
  ASSERT_TRUE((*other)->Append(std::string(static_cast<size_t>(shape.layout().code_bytes()), '\x11')).ok());
  EXPECT_EQ((*other)->Finish(tiles.data(), ScaleMode::kRow).status().code(), absl::StatusCode::kInternal);
}

TEST(PackedWriter, FinishBeforeTheLastByteIsRefused) {
  CpuBackend backend(1);
  const MatrixShape shape{4, 32, Fp8Format::kE5M2, ScaleMode::kRow, true};
  auto w = backend.BeginPackedWrite(shape);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Append(std::string(100, 'a')).ok());
  const std::vector<float> scales(4, 1.0f);
  EXPECT_EQ((*w)->Finish(scales.data(), ScaleMode::kRow).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*w)->Append(std::string(29, 'a')).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*w)->appended(), 100);
}

// Writes a matrix file through BeginMatrix, the words made ready in random
// steps; returns the Commit's status.
absl::Status StreamFile(DirectoryStore& disk, const StoredMatrixMeta& meta, const std::string& words,
                        const std::vector<float>& scales, uint32_t seed) {
  auto keep = std::make_shared<std::string>(words);
  auto f = disk.BeginMatrix(meta, reinterpret_cast<const uint8_t*>(keep->data()), keep);
  if (!f.ok()) return f.status();
  if (*f == nullptr) return absl::InternalError("the store did not stream");
  int64_t ready = 0;
  for (std::string_view c : Chunks(words, (size_t{3} << 20) / 2, seed)) {
    ready += static_cast<int64_t>(c.size());
    (*f)->WordsReady(ready);
  }
  return (*f)->Commit(meta.created_unix_ms, scales.data());
}

std::vector<std::string> FilesIn(const TempDir& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir.str())) {
    if (e.is_regular_file()) out.push_back(e.path().filename().string());
  }
  return out;
}

TEST(MatrixFileWriter, WritesTheBytesSaveMatrixWouldWithAndWithoutODirect) {
  TempDir dir;
  uint32_t seed = 100;
  for (bool direct : {true, false}) {
    auto disk = DirectoryStore::Open(dir.str());
    ASSERT_TRUE(disk.ok());
    (*disk)->set_stream_min_bytes(0);
    (*disk)->set_direct_io(direct);
    // Small (no whole 4 MiB unit of aligned blocks), and large enough for
    // O_DIRECT with ragged ends; names and hashes that move the words'
    // offset off any alignment.
    for (auto [rows, cols, name, hash] :
         std::vector<std::tuple<int64_t, int64_t, std::string, std::string>>{
             {7, 20, "a", ""},
             {1301, 4100, "layer.0.w", "plume64v2:0123456789abcdef"},
             {2049, 2048, "b", "x"}}) {
      StoredMatrixMeta meta{name, MatrixShape{rows, cols, Fp8Format::kE4M3, ScaleMode::kBlock128x128, true},
                            DType::kE4M3, 1700000000123, hash};
      const Sent p = PackedWithJunk(meta.shape, ++seed);
      const std::vector<float> scales = Scales(meta.shape.num_scales(), ++seed);
      ASSERT_TRUE(StreamFile(**disk, meta, p.kept, scales, ++seed).ok()) << name;
      const std::string file = ReadFile(dir / (name + ".pmx"));
      EXPECT_TRUE(file == EncodeMatrixFile(meta, scales.data(), reinterpret_cast<const uint32_t*>(p.kept.data())))
          << name << (direct ? " direct" : " buffered") << ": " << file.size() << " bytes";
      EXPECT_TRUE(DecodeMatrixFile(file).ok());
    }
  }
  // Nothing but the files: no temp file left.
  auto files = FilesIn(dir);
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"a.pmx", "b.pmx", "layer.0.w.pmx"}));
}

TEST(MatrixFileWriter, AnAbandonedOrEarlyCommittedFileLeavesNothing) {
  TempDir dir;
  StoredMatrixMeta meta{"w", MatrixShape{1500, 4096, Fp8Format::kE4M3, ScaleMode::kRow, true}, DType::kE4M3, 1, ""};
  const std::string words = RandomBytes(static_cast<size_t>(meta.shape.layout().code_bytes()), 7);
  const std::vector<float> scales = Scales(meta.shape.num_scales(), 8);
  {
    auto disk = DirectoryStore::Open(dir.str());
    ASSERT_TRUE(disk.ok());
    (*disk)->set_stream_min_bytes(0);
    {
      // The keep-alive is the only owner of the words: the writer's thread
      // holds them while it still reads.
      auto keep = std::make_shared<std::string>(words);
      auto f = (*disk)->BeginMatrix(meta, reinterpret_cast<const uint8_t*>(keep->data()), keep);
      ASSERT_TRUE(f.ok() && *f != nullptr);
      keep.reset();
      (*f)->WordsReady(static_cast<int64_t>(words.size()) / 2);
    }  // abandoned
    {
      auto keep = std::make_shared<std::string>(words);
      auto f = (*disk)->BeginMatrix(meta, reinterpret_cast<const uint8_t*>(keep->data()), keep);
      ASSERT_TRUE(f.ok() && *f != nullptr);
      (*f)->WordsReady(static_cast<int64_t>(words.size()) - 1);
      EXPECT_EQ((*f)->Commit(1, scales.data()).code(), absl::StatusCode::kFailedPrecondition);
    }
  }  // the store waits for the abandoned writer's thread
  EXPECT_TRUE(FilesIn(dir).empty());
}

TEST(MatrixFileWriter, AStoreClosedUnderAnUnfinishedFileCancelsIt) {
  TempDir dir;
  StoredMatrixMeta meta{"w", MatrixShape{1500, 4096, Fp8Format::kE4M3, ScaleMode::kRow, true}, DType::kE4M3, 1, ""};
  auto keep = std::make_shared<std::string>(RandomBytes(static_cast<size_t>(meta.shape.layout().code_bytes()), 12));
  absl::StatusOr<std::unique_ptr<MatrixFileWriter>> f;
  {
    auto disk = DirectoryStore::Open(dir.str());
    ASSERT_TRUE(disk.ok());
    (*disk)->set_stream_min_bytes(0);
    f = (*disk)->BeginMatrix(meta, reinterpret_cast<const uint8_t*>(keep->data()), keep);
    ASSERT_TRUE(f.ok() && *f != nullptr);
    (*f)->WordsReady(1000);
  }  // the store closes with the file's words still coming: it cancels it rather than wait for them
  EXPECT_TRUE(FilesIn(dir).empty());
  f->reset();  // the writer outlives its store harmlessly
}

TEST(MatrixFileWriter, AFileThatCannotBeCreatedFailsItsCommit) {
  TempDir dir;
  auto disk = DirectoryStore::Open(dir.str());
  ASSERT_TRUE(disk.ok());
  (*disk)->set_stream_min_bytes(0);
  fs::remove_all(dir.str());  // the store's directory is gone: nothing can be created in it
  StoredMatrixMeta meta{"w", MatrixShape{64, 64, Fp8Format::kE4M3, ScaleMode::kRow, true}, DType::kE4M3, 1, ""};
  const std::string words = RandomBytes(64 * 64, 9);
  const std::vector<float> scales = Scales(64, 10);
  const absl::Status s = StreamFile(**disk, meta, words, scales, 11);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_NE(s.message().find("cannot write"), std::string::npos) << s;
}

TEST(MatrixFileWriter, SmallMatricesAreSavedWhole) {
  TempDir dir;
  auto disk = DirectoryStore::Open(dir.str());
  ASSERT_TRUE(disk.ok());
  StoredMatrixMeta meta{"w", MatrixShape{16, 64, Fp8Format::kE4M3, ScaleMode::kRow, true}, DType::kE4M3, 1, ""};
  std::string words(1024, 'a');
  auto f = (*disk)->BeginMatrix(meta, reinterpret_cast<const uint8_t*>(words.data()), nullptr);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(*f, nullptr);  // under the default 8 MiB: SaveMatrix
}

MatrixHeader PrepackedHeader(std::string_view name, int64_t rows, int64_t cols, ScaleMode mode) {
  MatrixHeader h;
  h.name = name;
  h.rows = rows;
  h.cols = cols;
  h.source_dtype = static_cast<int>(DType::kE4M3);
  h.format = static_cast<int>(DType::kE4M3);
  h.scale_mode = static_cast<int>(mode);
  h.content_hash = "plume64v2:00000000000000ff";
  return h;
}

// GetMatrix with include_packed: the info, the codes and the scales.
struct Packed {
  MatrixInfo info;
  std::string words, scales;
};
absl::StatusOr<Packed> GetPacked(const MatrixService& svc, std::string_view name) {
  Packed p;
  auto info = svc.GetMatrixPacked(name, &p.words, &p.scales);
  if (!info.ok()) return info.status();
  p.info = std::move(*info);
  return p;
}

TEST(PrepackedUpload, StreamsIntoTheMatrixAndItsFileAndSurvivesARestart) {
  TempDir dir;
  const int64_t rows = 300, cols = 1000;  // padded to 1008: junk in the padding
  const MatrixShape shape{rows, cols, Fp8Format::kE4M3, ScaleMode::kBlock128x128, true};
  const Sent p = PackedWithJunk(shape, 31);
  const std::vector<float> scales = Scales(shape.num_scales(), 32);
  {
    auto disk = DirectoryStore::Open(dir.str());
    ASSERT_TRUE(disk.ok());
    (*disk)->set_stream_min_bytes(0);
    CpuBackend backend(2);
    MatrixStore store(int64_t{1} << 30, nullptr);
    store.set_persistence(disk->get());
    MatrixService svc(&backend, &store, Limits{});
    auto up = svc.BeginUpload(PrepackedHeader("w", rows, cols, ScaleMode::kBlock128x128));
    ASSERT_TRUE(up.ok()) << up.status();
    EXPECT_TRUE((*up)->streamed());
    EXPECT_TRUE((*up)->streams_to_disk());
    EXPECT_EQ((*up)->staging_bytes(), shape.num_scales() * 4);  // the scales alone
    for (std::string_view c : Chunks(p.sent, 5000, 33)) ASSERT_TRUE((*up)->AddData(c).ok());
    for (std::string_view c : Chunks(View(scales), 7, 34)) ASSERT_TRUE((*up)->AddScales(c).ok());
    auto info = (*up)->Finish();
    ASSERT_TRUE(info.ok()) << info.status();
    auto got = GetPacked(svc, "w");
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(got->words == p.kept);
    EXPECT_EQ(got->scales, std::string(View(scales)));
    // An upload dropped half way leaves no file (its thread removes it).
    auto dropped = svc.BeginUpload(PrepackedHeader("dropped", rows, cols, ScaleMode::kBlock128x128));
    ASSERT_TRUE(dropped.ok());
    ASSERT_TRUE((*dropped)->AddData(std::string_view(p.sent).substr(0, 100000)).ok());
  }
  auto files = FilesIn(dir);
  EXPECT_EQ(files, std::vector<std::string>{"w.pmx"});
  auto disk = DirectoryStore::Open(dir.str());
  ASSERT_TRUE(disk.ok());
  CpuBackend backend(2);
  MatrixStore store(int64_t{1} << 30, nullptr);
  EXPECT_EQ(LoadStoredMatrices(disk->get(), &backend, &store).loaded, 1);
  MatrixService svc(&backend, &store, Limits{});
  auto got = GetPacked(svc, "w");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->words == p.kept);
  EXPECT_EQ(got->scales, std::string(View(scales)));
  EXPECT_EQ(got->info.content_hash, "plume64v2:00000000000000ff");
}

TEST(PrepackedUpload, WrongSizesAreRefused) {
  CpuBackend backend(1);
  MatrixStore store(int64_t{1} << 30, nullptr);
  MatrixService svc(&backend, &store, Limits{});
  const int64_t rows = 4, cols = 16;
  {
    auto up = svc.BeginUpload(PrepackedHeader("a", rows, cols, ScaleMode::kRow));
    ASSERT_TRUE(up.ok());
    EXPECT_EQ((*up)->AddData(std::string(65, 'a')).code(), absl::StatusCode::kInvalidArgument);
  }
  {
    auto up = svc.BeginUpload(PrepackedHeader("a", rows, cols, ScaleMode::kRow));
    ASSERT_TRUE(up.ok());
    ASSERT_TRUE((*up)->AddData(std::string(60, 'a')).ok());
    EXPECT_EQ((*up)->Finish().status().code(), absl::StatusCode::kInvalidArgument);  // 4 bytes short
  }
  {
    auto up = svc.BeginUpload(PrepackedHeader("a", rows, cols, ScaleMode::kRow));
    ASSERT_TRUE(up.ok());
    ASSERT_TRUE((*up)->AddData(std::string(64, 'a')).ok());
    const std::vector<float> bad = {1.0f, 1.0f, -1.0f, 1.0f};
    ASSERT_TRUE((*up)->AddScales(View(bad)).ok());
    EXPECT_EQ((*up)->Finish().status().code(), absl::StatusCode::kInvalidArgument);  // a negative scale
  }
  EXPECT_EQ(store.List().size(), 0u);
  EXPECT_EQ(store.used_bytes(), 0);  // every abandoned upload gave its budget back
}

}  // namespace
}  // namespace plume::core
