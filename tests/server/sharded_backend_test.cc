// ShardedBackend over CpuBackend children: sharded and replicated
// placements give bit-identical packed matrices and GEMV results to one
// CpuBackend, for every format and scale mode, ragged shapes, batches 1..17;
// ReadPacked reassembles the whole matrix; per-device budgets choose the
// placement or say RESOURCE_EXHAUSTED; replicas share the calls; K/V caches
// live whole on the least used device; MatrixService reports placements.
#include "server/backends/sharded/sharded_backend.h"

#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "plume/reference/api.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/core/durable_store.h"
#include "server/core/matrix_service.h"
#include "server/core/matrix_store.h"
#include "tests/common/core_calls.h"
#include "tests/common/gemv_reference.h"

namespace plume::core {
namespace {

// A CpuBackend that counts its GEMVs.
class CountingBackend final : public Backend {
 public:
  std::string_view name() const override { return "cpu"; }
  int64_t memory_capacity_bytes() const override { return int64_t{1} << 30; }
  absl::StatusOr<std::unique_ptr<BackendMatrix>> Quantize(const MatrixShape& s, const void* src,
                                                          DType t) override {
    return cpu_.Quantize(s, src, t);
  }
  absl::StatusOr<std::unique_ptr<BackendMatrix>> FromPacked(const MatrixShape& s,
                                                            const uint32_t* w,
                                                            const float* sc) override {
    return cpu_.FromPacked(s, w, sc);
  }
  absl::Status ReadPacked(const BackendMatrix& m, uint32_t* w, float* sc) override {
    return cpu_.ReadPacked(m, w, sc);
  }
  absl::Status Gemv(const BackendMatrix& w, const GemvArgs& a) override {
    gemvs.fetch_add(1);
    return cpu_.Gemv(w, a);
  }
  absl::StatusOr<std::unique_ptr<BackendKvCache>> CreateKv(const KvShape& s) override {
    kv_caches.fetch_add(1);
    return cpu_.CreateKv(s);
  }
  absl::Status AppendKv(BackendKvCache& c, const KvAppendArgs& a) override { return cpu_.AppendKv(c, a); }
  absl::Status Attention(const BackendKvCache& c, const AttentionArgs& a) override {
    return cpu_.Attention(c, a);
  }

  std::atomic<int> gemvs{0};
  std::atomic<int> kv_caches{0};

 private:
  CpuBackend cpu_{2};
};

std::unique_ptr<ShardedBackend> MakeSharded(int n, int64_t device_budget = 0,
                                            std::vector<CountingBackend*>* out = nullptr) {
  std::vector<std::unique_ptr<Backend>> children;
  for (int i = 0; i < n; ++i) {
    auto c = std::make_unique<CountingBackend>();
    if (out != nullptr) out->push_back(c.get());
    children.push_back(std::move(c));
  }
  ShardedBackendOptions o;
  o.device_budget_bytes = device_budget;
  auto b = ShardedBackend::Create(std::move(children), o);
  EXPECT_TRUE(b.ok()) << b.status();
  return std::move(*b);
}

struct Packed {
  std::vector<uint32_t> words;
  std::vector<float> scales;
};

Packed Read(Backend& b, const BackendMatrix& m) {
  Packed p;
  p.words.assign(static_cast<size_t>(m.shape().layout().total_words()), 0xdeadbeef);
  p.scales.assign(static_cast<size_t>(std::max<int64_t>(1, m.shape().num_scales())), -7.0f);
  EXPECT_TRUE(b.ReadPacked(m, p.words.data(), p.scales.data()).ok());
  return p;
}

// y = W x through `b`, the result poisoned first.
std::vector<char> RunGemv(Backend& b, const BackendMatrix& m, const std::vector<char>& x, DType xt,
                          int64_t batch, DType yt) {
  std::vector<char> y(static_cast<size_t>(batch * m.shape().rows * DTypeSize(yt)), '\xA5');
  GemvArgs a;
  a.x = x.data();
  a.x_dtype = xt;
  a.batch = batch;
  a.y = y.data();
  a.y_dtype = yt;
  EXPECT_TRUE(b.Gemv(m, a).ok());
  return y;
}

std::vector<char> Activations(int64_t n, DType t, uint32_t seed) {
  const std::vector<float> f = testing::RandomNormal(n, seed);
  std::vector<char> x(static_cast<size_t>(n * DTypeSize(t)));
  ref::FromFloat(f.data(), n, t, x.data());
  return x;
}

MatrixShape Shape(int64_t rows, int64_t cols, Fp8Format f, ScaleMode m, Placement p) {
  MatrixShape s;
  s.rows = rows;
  s.cols = cols;
  s.format = f;
  s.scale_mode = m;
  s.placement = p;
  return s;
}

TEST(ShardedBackend, MatchesOneBackendBitForBitInEveryFormatModeAndPlacement) {
  CpuBackend single(2);
  const int64_t rows = 517, cols = 300;  // 4 whole 128-row blocks and 5 rows; ragged columns
  const std::vector<float> w = testing::RandomNormal(rows * cols, 11, 3.0f);
  const std::vector<char> x32 = Activations(17 * cols, DType::kF32, 12);
  const std::vector<char> x16 = Activations(17 * cols, DType::kF16, 13);
  int checked = 0;
  for (int n : {2, 3}) {
    auto sharded = MakeSharded(n);
    for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
      for (ScaleMode mode : {ScaleMode::kNone, ScaleMode::kTensor, ScaleMode::kRow, ScaleMode::kBlock128}) {
        auto one = single.Quantize(Shape(rows, cols, f, mode, Placement::kAuto), w.data(), DType::kF32);
        ASSERT_TRUE(one.ok());
        const Packed want = Read(single, **one);
        for (Placement p : {Placement::kSharded, Placement::kReplicated}) {
          SCOPED_TRACE(::testing::Message() << n << " devices, " << DTypeName(ToDType(f)) << " "
                                            << ScaleModeName(mode) << " " << PlacementName(p));
          auto m = sharded->Quantize(Shape(rows, cols, f, mode, p), w.data(), DType::kF32);
          ASSERT_TRUE(m.ok()) << m.status();
          const MatrixPlacement where = sharded->PlacementOf(**m);
          EXPECT_EQ(where.kind, p);
          ASSERT_EQ(where.devices.size(), static_cast<size_t>(n));
          if (p == Placement::kSharded) {
            // 5 blocks: 3+2 or 2+2+1; every boundary a multiple of 128 rows.
            const std::vector<int64_t> want_rows =
                n == 2 ? std::vector<int64_t>{384, 133} : std::vector<int64_t>{256, 256, 5};
            EXPECT_EQ(where.shard_rows, want_rows);
          }
          // ReadPacked reassembles exactly the unsharded codes and scales.
          const Packed got = Read(*sharded, **m);
          EXPECT_EQ(got.words, want.words);
          EXPECT_EQ(got.scales, want.scales);
          // And the sharded matrix made from those packed words is the same.
          auto again = sharded->FromPacked(Shape(rows, cols, f, mode, p), got.words.data(), got.scales.data());
          ASSERT_TRUE(again.ok());
          EXPECT_EQ(Read(*sharded, **again).words, want.words);

          for (int64_t batch = 1; batch <= 17; ++batch) {
            const auto y1 = RunGemv(single, **one, x32, DType::kF32, batch, DType::kF32);
            EXPECT_EQ(RunGemv(*sharded, **m, x32, DType::kF32, batch, DType::kF32), y1) << batch;
            EXPECT_EQ(RunGemv(*sharded, **again, x32, DType::kF32, batch, DType::kF32), y1) << batch;
            ++checked;
          }
          for (int64_t batch : {1, 4, 17}) {
            EXPECT_EQ(RunGemv(*sharded, **m, x16, DType::kF16, batch, DType::kF16),
                      RunGemv(single, **one, x16, DType::kF16, batch, DType::kF16)) << batch;
            EXPECT_EQ(RunGemv(*sharded, **m, x16, DType::kF16, batch, DType::kBF16),
                      RunGemv(single, **one, x16, DType::kF16, batch, DType::kBF16)) << batch;
          }
        }
      }
    }
  }
  EXPECT_EQ(checked, 2 * 2 * 4 * 2 * 17);
}

TEST(ShardedBackend, ResultsAreRightNotJustEqual) {
  // The sharded GEMV against FP64 math on the dequantized matrix.
  auto sharded = MakeSharded(3);
  const int64_t rows = 300, cols = 257;
  const std::vector<float> w = testing::RandomNormal(rows * cols, 21);
  auto m = sharded->Quantize(Shape(rows, cols, Fp8Format::kE4M3, ScaleMode::kBlock128, Placement::kSharded),
                             w.data(), DType::kF32);
  ASSERT_TRUE(m.ok());
  const std::vector<float> x = testing::RandomNormal(5 * cols, 22);
  std::vector<float> y(5 * rows, -1.0f);
  GemvArgs a;
  a.x = x.data();
  a.batch = 5;
  a.y = y.data();
  ASSERT_TRUE(sharded->Gemv(**m, a).ok());
  const testing::ExpectedGemv want(w, rows, cols, Fp8Format::kE4M3, ScaleMode::kBlock128);
  EXPECT_LT(want.RelErr(x, 5, y), 1e-5);
}

TEST(ShardedBackend, AutoPlacesOnTheRoomiestDeviceAndShardsWhatFitsNone) {
  const MatrixShape block = Shape(128, 1024, Fp8Format::kE4M3, ScaleMode::kRow, Placement::kAuto);
  const int64_t per_block = block.resident_bytes();  // 128 rows
  auto b = MakeSharded(2, 4 * per_block);
  std::vector<float> w(static_cast<size_t>(8 * 128 * 1024), 0.5f);

  // Fits one device: single, on device 0 (both empty), then on device 1.
  auto a = b->Quantize(Shape(3 * 128, 1024, Fp8Format::kE4M3, ScaleMode::kRow, Placement::kAuto), w.data(), DType::kF32);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(b->PlacementOf(**a).kind, Placement::kSingle);
  EXPECT_EQ(b->PlacementOf(**a).devices, std::vector<int>{0});
  EXPECT_EQ(b->device_used_bytes(0), 3 * per_block);
  auto c = b->Quantize(Shape(2 * 128, 1024, Fp8Format::kE4M3, ScaleMode::kRow, Placement::kAuto), w.data(), DType::kF32);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(b->PlacementOf(**c).devices, std::vector<int>{1});

  // Free now: 1 and 2 blocks. Three blocks fit neither: sharded 1 + 2.
  auto d = b->Quantize(Shape(3 * 128, 1024, Fp8Format::kE4M3, ScaleMode::kRow, Placement::kAuto), w.data(), DType::kF32);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(b->PlacementOf(**d).kind, Placement::kSharded);
  EXPECT_EQ(b->PlacementOf(**d).shard_rows, (std::vector<int64_t>{128, 256}));
  EXPECT_EQ(b->device_used_bytes(0), 4 * per_block);
  EXPECT_EQ(b->device_used_bytes(1), 4 * per_block);

  // Full: anything more is RESOURCE_EXHAUSTED, in every placement, and
  // charges nothing.
  for (Placement p : {Placement::kAuto, Placement::kSingle, Placement::kSharded, Placement::kReplicated}) {
    auto e = b->Quantize(Shape(1, 16, Fp8Format::kE4M3, ScaleMode::kRow, p), w.data(), DType::kF32);
    EXPECT_EQ(e.status().code(), absl::StatusCode::kResourceExhausted) << PlacementName(p);
  }
  EXPECT_EQ(b->device_used_bytes(0), 4 * per_block);

  // Freeing a matrix gives its device's budget back.
  a->reset();
  EXPECT_EQ(b->device_used_bytes(0), per_block);
  d->reset();
  EXPECT_EQ(b->device_used_bytes(0), 0);
  EXPECT_EQ(b->device_used_bytes(1), 2 * per_block);
  // Replicated needs room on both; single goes where there is most.
  auto r = b->Quantize(Shape(3 * 128, 1024, Fp8Format::kE4M3, ScaleMode::kRow, Placement::kReplicated), w.data(), DType::kF32);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("free bytes per device"), std::string::npos) << r.status();
  auto s = b->Quantize(Shape(3 * 128, 1024, Fp8Format::kE4M3, ScaleMode::kRow, Placement::kSingle), w.data(), DType::kF32);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(b->PlacementOf(**s).devices, std::vector<int>{0});
  // Too big even split: RESOURCE_EXHAUSTED.
  auto t = b->Quantize(Shape(5 * 128, 1024, Fp8Format::kE4M3, ScaleMode::kRow, Placement::kSharded), w.data(), DType::kF32);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(ShardedBackend, ReplicasShareTheCalls) {
  std::vector<CountingBackend*> kids;
  auto b = MakeSharded(2, 0, &kids);
  const int64_t rows = 64, cols = 64;
  const std::vector<float> w = testing::RandomNormal(rows * cols, 31);
  auto m = b->Quantize(Shape(rows, cols, Fp8Format::kE4M3, ScaleMode::kRow, Placement::kReplicated), w.data(), DType::kF32);
  ASSERT_TRUE(m.ok());
  const std::vector<char> x = Activations(cols, DType::kF32, 32);
  for (int i = 0; i < 10; ++i) RunGemv(*b, **m, x, DType::kF32, 1, DType::kF32);
  EXPECT_EQ(kids[0]->gemvs.load(), 5);
  EXPECT_EQ(kids[1]->gemvs.load(), 5);
  // A sharded matrix calls every device once per GEMV.
  const std::vector<float> w2 = testing::RandomNormal(300 * cols, 33);
  auto s = b->Quantize(Shape(300, cols, Fp8Format::kE4M3, ScaleMode::kRow, Placement::kSharded), w2.data(), DType::kF32);
  ASSERT_TRUE(s.ok());
  RunGemv(*b, **s, x, DType::kF32, 1, DType::kF32);
  EXPECT_EQ(kids[0]->gemvs.load(), 6);
  EXPECT_EQ(kids[1]->gemvs.load(), 6);
}

TEST(ShardedBackend, KvCachesGoWholeToTheLeastUsedDeviceAndMatchOneBackend) {
  std::vector<CountingBackend*> kids;
  auto b = MakeSharded(2, 0, &kids);
  const std::vector<float> w = testing::RandomNormal(256 * 64, 41);
  auto m = b->Quantize(Shape(256, 64, Fp8Format::kE4M3, ScaleMode::kRow, Placement::kSingle), w.data(), DType::kF32);
  ASSERT_TRUE(m.ok());
  ASSERT_EQ(b->PlacementOf(**m).devices, std::vector<int>{0});
  KvShape ks;
  ks.kv_heads = 2;
  ks.head_dim = 64;
  auto cache = b->CreateKv(ks);
  ASSERT_TRUE(cache.ok());
  EXPECT_EQ(kids[1]->kv_caches.load(), 1);  // device 0 holds the matrix
  CpuBackend single(2);
  auto ref_cache = single.CreateKv(ks);
  ASSERT_TRUE(ref_cache.ok());
  const int64_t tokens = 100;
  const std::vector<float> k = testing::RandomNormal(2 * tokens * 64, 42);
  const std::vector<float> v = testing::RandomNormal(2 * tokens * 64, 43);
  const KvAppendArgs app{k.data(), v.data(), DType::kF32, tokens};
  ASSERT_TRUE(b->AppendKv(**cache, app).ok());
  ASSERT_TRUE(single.AppendKv(**ref_cache, app).ok());
  EXPECT_EQ((*cache)->seq(), tokens);
  EXPECT_EQ(b->device_used_bytes(1), ks.resident_bytes(tokens));
  const std::vector<float> q = testing::RandomNormal(4 * 64, 44);
  std::vector<float> out(4 * 64, -1.0f), want(4 * 64, -2.0f);
  AttentionArgs at;
  at.q = q.data();
  at.batch = 1;
  at.heads = 4;
  at.q_len = 1;
  at.scale = 0.125f;
  at.out = out.data();
  ASSERT_TRUE(b->Attention(**cache, at).ok());
  at.out = want.data();
  ASSERT_TRUE(single.Attention(**ref_cache, at).ok());
  EXPECT_EQ(out, want);
  cache->reset();
  EXPECT_EQ(b->device_used_bytes(1), 0);
}

TEST(ShardedBackend, MatrixServiceReportsThePlacementAndReservesEveryCopy) {
  auto b = MakeSharded(2);
  MatrixStore store(int64_t{1} << 30, nullptr);
  MatrixService service(b.get(), &store, Limits{});
  const int64_t rows = 200, cols = 48;
  const std::vector<float> w = testing::RandomNormal(rows * cols, 51);
  for (Placement p : {Placement::kSharded, Placement::kReplicated, Placement::kAuto}) {
    const std::string name = absl::StrCat("w", static_cast<int>(p));
    MatrixHeader h = testing::F32Header(name, rows, cols);
    h.placement = static_cast<int>(p);
    const int64_t before = store.used_bytes();
    auto up = service.BeginUpload(h);
    ASSERT_TRUE(up.ok()) << up.status();
    ASSERT_TRUE((*up)->AddData(std::string_view(reinterpret_cast<const char*>(w.data()), w.size() * 4)).ok());
    auto info = (*up)->Finish();
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->backend, "cpu:0,1");
    const MatrixPlacement& where = info->placement;
    const MatrixShape s = Shape(rows, cols, Fp8Format::kE4M3, ScaleMode::kRow, Placement::kAuto);
    if (p == Placement::kSharded) {
      EXPECT_EQ(where.kind, Placement::kSharded);
      EXPECT_EQ(where.devices, (std::vector<int>{0, 1}));
      EXPECT_EQ(where.shard_rows, (std::vector<int64_t>{128, 72}));
      EXPECT_EQ(store.used_bytes() - before, s.resident_bytes());
    } else if (p == Placement::kReplicated) {
      EXPECT_EQ(where.kind, Placement::kReplicated);
      EXPECT_EQ(where.devices.size(), 2u);
      EXPECT_EQ(store.used_bytes() - before, 2 * s.resident_bytes());
    } else {
      EXPECT_EQ(where.kind, Placement::kSingle);
      EXPECT_EQ(where.devices.size(), 1u);
      EXPECT_TRUE(where.shard_rows.empty());
    }
  }
  MatrixHeader bad = testing::F32Header("bad", 2, 2);
  bad.placement = 9;
  EXPECT_EQ(service.BeginUpload(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ShardedBackend, ConcurrentCallersGetTheirOwnResults) {
  // Device 0 is full, so the sharded matrix lives on devices 1 and 2 only
  // (its first shard is not on device 0).
  const MatrixShape filler = Shape(256, 512, Fp8Format::kE4M3, ScaleMode::kRow, Placement::kSingle);
  auto b = MakeSharded(3, filler.resident_bytes());
  CpuBackend single(2);
  const std::vector<float> wf = testing::RandomNormal(256 * 512, 60);
  auto full = b->Quantize(filler, wf.data(), DType::kF32);
  ASSERT_TRUE(full.ok());
  const int64_t rows = 333, cols = 512;
  const std::vector<float> w = testing::RandomNormal(rows * cols, 61);
  auto ms = b->Quantize(Shape(rows, cols, Fp8Format::kE5M2, ScaleMode::kBlock128, Placement::kSharded), w.data(), DType::kF32);
  ASSERT_TRUE(ms.ok()) << ms.status();
  EXPECT_EQ(b->PlacementOf(**ms).devices, (std::vector<int>{1, 2}));
  auto m1 = single.Quantize(Shape(rows, cols, Fp8Format::kE5M2, ScaleMode::kBlock128, Placement::kAuto), w.data(), DType::kF32);
  ASSERT_TRUE(m1.ok());
  std::vector<std::vector<char>> xs, want;
  for (int t = 0; t < 8; ++t) {
    xs.push_back(Activations((t + 1) * cols, DType::kF32, 70 + t));
    want.push_back(RunGemv(single, **m1, xs.back(), DType::kF32, t + 1, DType::kF32));
  }
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        if (RunGemv(*b, **ms, xs[t], DType::kF32, t + 1, DType::kF32) != want[t]) ++wrong;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST(DurableStore, KeepsThePlacementAskedForAndRejectsUnknownOnes) {
  const MatrixShape s = Shape(3, 20, Fp8Format::kE4M3, ScaleMode::kRow, Placement::kReplicated);
  std::vector<uint32_t> words(static_cast<size_t>(s.layout().total_words()), 0x38383838u);
  for (int64_t r = 0; r < s.rows; ++r) {
    for (int64_t c = s.cols; c < s.layout().padded_cols(); c += 4) {
      words[static_cast<size_t>(r * s.layout().words_per_row() + c / 4)] = 0;
    }
  }
  const std::vector<float> scales(3, 0.5f);
  const StoredMatrixMeta meta{"w", s, DType::kF32, 1234};
  std::string file = EncodeMatrixFile(meta, scales.data(), words.data());
  auto back = DecodeMatrixFile(file);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->meta.shape.placement, Placement::kReplicated);
  // An unknown placement byte is corruption (the checksum recomputed so
  // that only the byte is wrong).
  MatrixShape bad = s;
  bad.placement = static_cast<Placement>(7);
  file = EncodeMatrixFile({"w", bad, DType::kF32, 1234}, scales.data(), words.data());
  EXPECT_EQ(DecodeMatrixFile(file).status().code(), absl::StatusCode::kDataLoss);
}

TEST(ParseDeviceList, AllOrDistinctNumbersBelowTheCount) {
  EXPECT_EQ(*ParseDeviceList("all", 3), (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(*ParseDeviceList("1,0", 2), (std::vector<int>{1, 0}));
  EXPECT_EQ(*ParseDeviceList("0", 1), (std::vector<int>{0}));
  for (const char* bad : {"", "2", "0,0", "-1", "0,,1", "x", "0 1"}) {
    EXPECT_EQ(ParseDeviceList(bad, 2).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(ParseDeviceList("all", 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ShardedBackend, CreateRejectsNoDevicesAndMismatchedIds) {
  EXPECT_EQ(ShardedBackend::Create({}).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<std::unique_ptr<Backend>> one;
  one.push_back(std::make_unique<CpuBackend>(1));
  ShardedBackendOptions o;
  o.device_ids = {0, 1};
  EXPECT_EQ(ShardedBackend::Create(std::move(one), o).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace plume::core
