// K/V caches in the durable store, without gRPC: the .pkv file format against
// every truncation and byte flip, uploads and appends persisted before they
// are acknowledged, restarts that give bit-identical attention, compaction,
// deletes, and the load-time quarantine of bad files.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/core/attention_service.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/core/durable_store.h"
#include "server/core/store_loader.h"
#include "server/core/kv_store.h"
#include "tests/common/core_calls.h"
#include "tests/common/files.h"

namespace plume::core {
namespace {

namespace fs = std::filesystem;

using plume::testing::ReadFile;
using plume::testing::TempDir;
using plume::testing::WriteFile;

std::string RandomFloats(std::mt19937& rng, int64_t n, float amp) {
  std::normal_distribution<float> d(0.0f, amp);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

testing::HostTensor F32(std::vector<int64_t> shape, std::string data) {
  return {static_cast<int>(DType::kF32), std::move(shape), std::move(data)};
}

// One server's worth of K/V state over a store directory: what a restart
// builds afresh (backend, budget, KvStore, AttentionService, LoadAllKv).
struct Server {
  explicit Server(const std::string& dir) {
    auto d = DirectoryStore::Open(dir);
    EXPECT_TRUE(d.ok()) << d.status();
    disk = std::move(*d);
    // As plume-server does: matrices first, then K/V caches (two listings).
    disk->LoadAll([](StoredMatrix) { return absl::OkStatus(); });
    report = LoadStoredKvCaches(disk.get(), &backend, &kv);
    kv.set_disk(disk.get());
  }
  CpuBackend backend{2};
  std::shared_ptr<Budget> budget = std::make_shared<Budget>(int64_t{1} << 30);
  KvStore kv{budget, nullptr};
  AttentionService service{&backend, &kv, Limits{}};
  testing::CoreCalls calls{&backend};
  std::unique_ptr<DirectoryStore> disk;
  DirectoryStore::LoadReport report;

  absl::Status Upload(const std::string& name, int64_t heads, int64_t seq, int64_t dim,
                      KvScaleMode mode, std::mt19937& rng) {
    KvHeader h;
    h.name = name;
    h.kv_heads = heads;
    h.seq = seq;
    h.head_dim = dim;
    h.source_dtype = static_cast<int>(DType::kF32);
    h.format = static_cast<int>(DType::kE4M3);
    h.scale_mode = static_cast<int>(mode);
    auto up = service.BeginUpload(h);
    if (!up.ok()) return up.status();
    if (auto s = (*up)->AddK(RandomFloats(rng, heads * seq * dim, 1.0f)); !s.ok()) return s;
    if (auto s = (*up)->AddV(RandomFloats(rng, heads * seq * dim, 1.0f)); !s.ok()) return s;
    return (*up)->Finish().status();
  }
  absl::StatusOr<int64_t> Append(const std::string& name, int64_t heads, int64_t tokens, int64_t dim,
                                 std::mt19937& rng, float amp = 1.0f) {
    const testing::HostTensor k =
        F32({heads, tokens, dim}, RandomFloats(rng, heads * tokens * dim, amp));
    const testing::HostTensor v =
        F32({heads, tokens, dim}, RandomFloats(rng, heads * tokens * dim, amp));
    auto info = service.AppendKV({name, k.view(), v.view()});
    if (!info.ok()) return info.status();
    return info->seq;
  }
  // Attention of a fixed random query (causal off); the output bytes.
  std::string Attend(const std::string& name, int64_t heads, int64_t dim) {
    std::mt19937 rng(99);
    const testing::HostTensor q =
        F32({2, heads, 3, dim}, RandomFloats(rng, 2 * heads * 3 * dim, 1.0f));
    AttentionCall call;
    call.cache = name;
    call.query = q.view();
    testing::HeldResult out;
    const absl::Status s = calls.Attention(service, call, &out);
    EXPECT_TRUE(s.ok()) << s;
    return out.data;
  }
  // The cache's pages and scales as the backend holds them.
  std::string Pages(const std::string& name) {
    auto c = kv.Get(name);
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return "";
    absl::MutexLock lock(&(*c)->mu);
    const KvLayout l = (*c)->shape.layout();
    const int64_t pages = KvLayout::pages_for((*c)->data->seq());
    std::string out(static_cast<size_t>(pages * l.page_bytes() + 8 * l.global_scales()), '\0');
    auto* p = reinterpret_cast<uint8_t*>(out.data());
    auto* g = reinterpret_cast<float*>(p + pages * l.page_bytes());
    EXPECT_TRUE(backend.ReadKv(*(*c)->data, 0, pages, p, g, g + l.global_scales()).ok());
    return out;
  }
};

constexpr int64_t kHeads = 2, kDim = 24;

// Uploads "c" (70 tokens) and appends 1, 57, 1, 64 and 3 tokens (some with a
// larger amplitude, so TOKEN_BLOCK blocks are re-encoded), recording the
// file and the pages after each acknowledged step.
struct History {
  std::vector<int64_t> seqs;
  std::vector<std::string> pages;
  std::vector<int64_t> file_sizes;
};
History BuildHistory(Server& s, const TempDir& dir, KvScaleMode mode) {
  std::mt19937 rng(7);
  History h;
  EXPECT_TRUE(s.Upload("c", kHeads, 70, kDim, mode, rng).ok());
  h.seqs.push_back(70);
  h.pages.push_back(s.Pages("c"));
  h.file_sizes.push_back(static_cast<int64_t>(fs::file_size(dir / "c.pkv")));
  int i = 0;
  for (int64_t t : {1, 57, 1, 64, 3}) {
    auto seq = s.Append("c", kHeads, t, kDim, rng, (i++ % 2) ? 4.0f : 1.0f);
    EXPECT_TRUE(seq.ok()) << seq.status();
    h.seqs.push_back(*seq);
    h.pages.push_back(s.Pages("c"));
    h.file_sizes.push_back(static_cast<int64_t>(fs::file_size(dir / "c.pkv")));
  }
  return h;
}

class KvStoreFile : public ::testing::TestWithParam<KvScaleMode> {};

TEST_P(KvStoreFile, RestartGivesBitIdenticalAttention) {
  TempDir dir;
  std::string before, pages;
  {
    Server s(dir.str());
    BuildHistory(s, dir, GetParam());
    before = s.Attend("c", kHeads * 2, kDim);
    pages = s.Pages("c");
  }
  Server s(dir.str());
  EXPECT_EQ(s.report.loaded, 1);
  EXPECT_TRUE(s.report.quarantined.empty());
  auto c = s.kv.Get("c");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(s.Pages("c"), pages);
  const std::string after = s.Attend("c", kHeads * 2, kDim);
  ASSERT_FALSE(after.empty());
  EXPECT_EQ(after, before);  // bit-identical
  // It keeps appending after the restart, and the next restart has that too.
  std::mt19937 rng(11);
  ASSERT_TRUE(s.Append("c", kHeads, 5, kDim, rng).ok());
  const std::string more = s.Attend("c", kHeads * 2, kDim);
  Server s2(dir.str());
  EXPECT_EQ(s2.Attend("c", kHeads * 2, kDim), more);
}

TEST_P(KvStoreFile, EveryTruncationAndByteFlipIsAnAcknowledgedStateOrDataLoss) {
  TempDir dir;
  Server s(dir.str());
  const History h = BuildHistory(s, dir, GetParam());
  const std::string file = ReadFile(dir / "c.pkv");
  ASSERT_EQ(static_cast<int64_t>(file.size()), h.file_sizes.back());
  auto state_at = [&](int64_t size) {  // the last acknowledged state within `size` bytes
    int k = -1;
    for (size_t i = 0; i < h.file_sizes.size(); ++i) {
      if (h.file_sizes[i] <= size) k = static_cast<int>(i);
    }
    return k;
  };
  auto pages_of = [&](const StoredKv& kv) {
    std::string out(kv.pages.begin(), kv.pages.end());
    for (const auto* g : {&kv.k_scales, &kv.v_scales}) {
      out.append(reinterpret_cast<const char*>(g->data()), g->size() * 4);
    }
    return out;
  };
  int torn = 0, lost = 0;
  for (size_t n = 0; n < file.size(); n += (n < 512 ? 1 : 7)) {
    auto kv = DecodeKvFile(std::string_view(file).substr(0, n));
    const int k = state_at(static_cast<int64_t>(n));
    if (k < 0) {
      EXPECT_EQ(kv.status().code(), absl::StatusCode::kDataLoss) << n;
      ++lost;
      continue;
    }
    ASSERT_TRUE(kv.ok()) << n << ": " << kv.status();
    EXPECT_EQ(kv->seq, h.seqs[k]) << n;
    EXPECT_EQ(kv->valid_bytes, h.file_sizes[k]) << n;
    EXPECT_EQ(pages_of(*kv), h.pages[k]) << n;
    EXPECT_EQ(kv->torn_tail.empty(), static_cast<int64_t>(n) == h.file_sizes[k]) << n;
    ++torn;
  }
  EXPECT_GT(torn, 100);
  EXPECT_GT(lost, 100);
  // Byte flips: the state before the record it hits (a torn last record), or
  // DATA_LOSS; never different bytes.
  std::mt19937 rng(3);
  int flips = 0;
  for (size_t i = 0; i < file.size(); i += (i < 256 ? 1 : 13)) {
    std::string bad = file;
    bad[i] = static_cast<char>(bad[i] ^ (1 + rng() % 255));
    auto kv = DecodeKvFile(bad);
    if (!kv.ok()) {
      EXPECT_EQ(kv.status().code(), absl::StatusCode::kDataLoss);
      continue;
    }
    const int k = state_at(static_cast<int64_t>(i));
    ASSERT_GE(k, 1) << i;  // never a bad header or first record
    EXPECT_EQ(kv->seq, h.seqs[k]) << i;
    EXPECT_EQ(pages_of(*kv), h.pages[k]) << i;
    EXPECT_EQ(kv->valid_bytes, h.file_sizes[k]) << i;
    EXPECT_FALSE(kv->torn_tail.empty()) << i;
    ++flips;
  }
  EXPECT_GT(flips, 10);  // flips in the last record
  std::cout << "kv file (" << file.size() << " bytes, 6 acknowledged states): " << torn + lost
            << " truncations -> " << torn << " an acknowledged state, " << lost
            << " DATA_LOSS; byte flips: " << flips << " a torn last append (earlier state), the "
            << "rest DATA_LOSS; 0 wrong bytes\n";
}

INSTANTIATE_TEST_SUITE_P(ScaleModes, KvStoreFile,
                         ::testing::Values(KvScaleMode::kTokenBlock, KvScaleMode::kHead,
                                           KvScaleMode::kTensor, KvScaleMode::kNone));

TEST(KvDirectoryStore, AppendsAreLoggedAndCompacted) {
  TempDir dir;
  Server s(dir.str());
  std::mt19937 rng(5);
  ASSERT_TRUE(s.Upload("c", kHeads, 3, kDim, KvScaleMode::kTokenBlock, rng).ok());
  const KvLayout l = KvShape{kHeads, kDim}.layout();
  const int64_t first = static_cast<int64_t>(fs::file_size(dir / "c.pkv"));
  ASSERT_TRUE(s.Append("c", kHeads, 1, kDim, rng).ok());
  // An append adds one record: a header and the page it touched.
  EXPECT_EQ(static_cast<int64_t>(fs::file_size(dir / "c.pkv")), first + kKvRecordHeaderBytes + l.page_bytes());
  int64_t max_size = 0;
  for (int i = 0; i < 300; ++i) {
    ASSERT_TRUE(s.Append("c", kHeads, 1, kDim, rng).ok()) << i;
    max_size = std::max<int64_t>(max_size, static_cast<int64_t>(fs::file_size(dir / "c.pkv")));
  }
  // 304 tokens, 5 pages: the log never grows past twice a compacted file.
  const int64_t compacted = first - l.page_bytes() + 5 * l.page_bytes();
  EXPECT_LE(max_size, 2 * (compacted + 256));
  EXPECT_GT(max_size, compacted);
  std::cout << "kv log: 301 one-token appends, page " << l.page_bytes() << " bytes; file at most "
            << max_size << " bytes, compacted " << compacted << "\n";
  const std::string before = s.Attend("c", kHeads, kDim);
  Server s2(dir.str());
  EXPECT_EQ(s2.report.loaded, 1);
  EXPECT_EQ(s2.Attend("c", kHeads, kDim), before);
}

TEST(KvDirectoryStore, DeleteRemovesTheFileAndFreesTheName) {
  TempDir dir;
  Server s(dir.str());
  std::mt19937 rng(6);
  ASSERT_TRUE(s.Upload("c", kHeads, 10, kDim, KvScaleMode::kHead, rng).ok());
  ASSERT_TRUE(fs::exists(dir / "c.pkv"));
  ASSERT_TRUE(s.service.DeleteKV("c").ok());
  EXPECT_FALSE(fs::exists(dir / "c.pkv"));
  EXPECT_EQ(s.service.DeleteKV("c").code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(s.Upload("c", kHeads, 20, kDim, KvScaleMode::kHead, rng).ok());
  Server s2(dir.str());
  auto c = s2.kv.Get("c");
  ASSERT_TRUE(c.ok());
  absl::ReaderMutexLock lock(&(*c)->mu);
  EXPECT_EQ((*c)->data->seq(), 20);
}

TEST(KvDirectoryStore, BadFilesAreQuarantinedTornAppendsCutAndGoodOnesServed) {
  TempDir dir;
  std::string good_out, torn_out;
  int64_t torn_size_before_last = 0;
  {
    Server s(dir.str());
    std::mt19937 rng(8);
    for (const char* n : {"good", "flipped", "short", "torn", "renamed"}) {
      ASSERT_TRUE(s.Upload(n, kHeads, 40, kDim, KvScaleMode::kTokenBlock, rng).ok());
    }
    ASSERT_TRUE(s.Append("torn", kHeads, 30, kDim, rng).ok());
    torn_out = s.Attend("torn", kHeads, kDim);
    torn_size_before_last = static_cast<int64_t>(fs::file_size(dir / "torn.pkv"));
    ASSERT_TRUE(s.Append("torn", kHeads, 30, kDim, rng).ok());
    good_out = s.Attend("good", kHeads, kDim);
  }
  std::string f = ReadFile(dir / "flipped.pkv");
  f[f.size() / 2] ^= 0x10;
  WriteFile(dir / "flipped.pkv", f);
  f = ReadFile(dir / "short.pkv");
  WriteFile(dir / "short.pkv", f.substr(0, f.size() - 100));  // its only record: not an append
  f = ReadFile(dir / "torn.pkv");
  WriteFile(dir / "torn.pkv", f.substr(0, f.size() - 100));   // the last append, cut short
  fs::rename(dir / "renamed.pkv", dir / "other.pkv");
  WriteFile(dir / "empty.pkv", "");

  Server s(dir.str());
  EXPECT_EQ(s.report.loaded, 2) << ::testing::PrintToString(s.report.quarantined);
  // flipped, short, other, empty, and the whole torn file kept for inspection
  EXPECT_EQ(s.report.quarantined.size(), 5u) << ::testing::PrintToString(s.report.quarantined);
  for (const char* n : {"flipped", "short", "renamed", "other", "empty"}) {
    EXPECT_EQ(s.kv.Get(n).status().code(), absl::StatusCode::kNotFound) << n;
    EXPECT_FALSE(fs::exists(dir / (std::string(n) + ".pkv"))) << n;
  }
  EXPECT_EQ(s.Attend("good", kHeads, kDim), good_out);
  EXPECT_EQ(s.Attend("torn", kHeads, kDim), torn_out);  // as before the cut-short append
  EXPECT_EQ(static_cast<int64_t>(fs::file_size(dir / "torn.pkv")), torn_size_before_last);
  int in_quarantine = 0;
  for (const auto& e : fs::directory_iterator(dir / "quarantine")) in_quarantine += e.is_regular_file();
  EXPECT_EQ(in_quarantine, 5);
  // The cut file takes appends again.
  std::mt19937 rng(9);
  ASSERT_TRUE(s.Append("torn", kHeads, 2, kDim, rng).ok());
  Server s2(dir.str());
  EXPECT_EQ(s2.report.loaded, 2);
  EXPECT_TRUE(s2.report.quarantined.empty());
}

TEST(KvDirectoryStore, AnAppendThatCannotBeWrittenIsNotAcknowledgedNorServed) {
  TempDir dir;
  Server s(dir.str());
  std::mt19937 rng(10);
  ASSERT_TRUE(s.Upload("c", kHeads, 10, kDim, KvScaleMode::kTokenBlock, rng).ok());
  // Replace the file by a directory: the append's write fails.
  fs::remove(dir / "c.pkv");
  fs::create_directory(dir / "c.pkv");
  auto seq = s.Append("c", kHeads, 3, kDim, rng);
  EXPECT_FALSE(seq.ok());
  // Memory was ahead of a file that cannot be read back: no longer served.
  EXPECT_EQ(s.kv.Get("c").status().code(), absl::StatusCode::kNotFound);
  fs::remove(dir / "c.pkv");
  // Its budget is back: a new upload of the name works.
  EXPECT_TRUE(s.Upload("c", kHeads, 10, kDim, KvScaleMode::kTokenBlock, rng).ok());
}

}  // namespace
}  // namespace plume::core
