// Registry<T> for both of its users (matrices, K/V caches): reservations,
// commits, duplicate names, the budget, removal of a pending name, list
// order, a removal that holds its name; and MatrixStore's delete with a
// durable store: the file goes with no lock held (a Get on another name
// returns while the removal is stuck), and an upload of the same name cannot
// slip in before the old file is gone.
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/core/durable_store.h"
#include "server/core/kv_store.h"
#include "server/core/matrix_service.h"
#include "server/core/matrix_store.h"
#include "server/core/registry.h"
#include "server/core/store_loader.h"
#include "tests/common/core_calls.h"
#include "tests/common/files.h"
#include "tests/common/gemv_reference.h"

namespace plume::core {
namespace {

namespace fs = std::filesystem;
using plume::testing::TempDir;

// How long a waiting side waits for something that should happen at once.
constexpr absl::Duration kPatience = absl::Seconds(20);

bool Contains(const absl::Status& s, const std::string& text) {
  return std::string(s.message()).find(text) != std::string::npos;
}

// ---------------------------------------------------------------- Registry

// The two instantiations, with the words MatrixStore and KvStore give them.
struct MatrixKind {
  using Entry = const Matrix;
  static RegistryWords Words() { return {"matrix", "delete it first", ""}; }
};
struct KvKind {
  using Entry = KvCache;
  static RegistryWords Words() { return {"kv cache", "delete it first or append to it", "more"}; }
};

template <class Kind>
class RegistryTest : public ::testing::Test {
 protected:
  using Entry = typename Kind::Entry;
  using R = Registry<Entry>;

  std::shared_ptr<Budget> budget_ = std::make_shared<Budget>(1000);
  int64_t gauge_entries_ = -1, gauge_bytes_ = -1;
  R registry_{budget_, Kind::Words(), [this](int64_t n, int64_t b) {
                gauge_entries_ = n;
                gauge_bytes_ = b;
              }};

  // Reserves and commits `name` with `bytes` of budget, `resident` in the gauges.
  std::shared_ptr<Entry> Add(const std::string& name, int64_t bytes, int64_t resident) {
    auto p = registry_.Reserve(name, bytes);
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return nullptr;
    held_.push_back(p->TakeReservation());  // what an entry would hold
    return registry_.Commit(std::move(*p), std::make_shared<Entry>(), resident);
  }
  std::vector<Reservation> held_;
};

using Kinds = ::testing::Types<MatrixKind, KvKind>;
TYPED_TEST_SUITE(RegistryTest, Kinds);

TYPED_TEST(RegistryTest, CommitsGetsAndListsInNameOrder) {
  const std::string kind = TypeParam::Words().kind;
  EXPECT_EQ(this->gauge_entries_, 0);  // set once at construction
  auto b = this->Add("b", 10, 7);
  auto a = this->Add("a", 10, 5);
  auto c = this->Add("c.2", 10, 1);
  EXPECT_EQ(this->gauge_entries_, 3);
  EXPECT_EQ(this->gauge_bytes_, 13);
  EXPECT_EQ(this->registry_.resident_bytes(), 13);
  auto got = this->registry_.Get("a");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->get(), a.get());
  const auto list = this->registry_.List();
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0].get(), a.get());
  EXPECT_EQ(list[1].get(), b.get());
  EXPECT_EQ(list[2].get(), c.get());
  const absl::Status missing = this->registry_.Get("zz").status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.message(), kind + " \"zz\" not found");
}

TYPED_TEST(RegistryTest, DuplicateNamesAreRefusedWhileReservedAndOnceCommitted) {
  const RegistryWords w = TypeParam::Words();
  auto p = this->registry_.Reserve("a", 10);
  ASSERT_TRUE(p.ok());
  absl::Status s = this->registry_.Reserve("a", 10).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(s.message(), w.kind + " \"a\" already exists (upload in progress); " + w.taken_hint);
  Reservation r = p->TakeReservation();  // what the entry holds
  this->registry_.Commit(std::move(*p), std::make_shared<typename TestFixture::Entry>(), 1);
  s = this->registry_.Reserve("a", 10).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(s.message(), w.kind + " \"a\" already exists; " + w.taken_hint);
  EXPECT_EQ(this->budget_->used(), 10);  // refusals hold nothing
}

TYPED_TEST(RegistryTest, BudgetExhaustionIsResourceExhaustedAndDroppedReservationsGiveBack) {
  const RegistryWords w = TypeParam::Words();
  auto p1 = this->registry_.Reserve("a", 600);
  ASSERT_TRUE(p1.ok());
  const absl::Status s = this->registry_.Reserve("b", 401).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  const std::string needs = w.needs.empty() ? "needs 401 bytes" : "needs 401 " + w.needs + " bytes";
  EXPECT_EQ(s.message(), "memory budget exceeded: " + w.kind + " \"b\" " + needs + ", 400 of 1000 bytes free");
  EXPECT_FALSE(this->registry_.reserved("b"));  // a refused name is not kept
  auto p2 = this->registry_.Reserve("b", 400);  // exactly what is left
  ASSERT_TRUE(p2.ok());
  EXPECT_EQ(this->budget_->used(), 1000);
  { auto drop = std::move(*p1); }  // an abandoned upload frees its name and bytes
  EXPECT_EQ(this->budget_->used(), 400);
  EXPECT_FALSE(this->registry_.reserved("a"));
  EXPECT_TRUE(this->registry_.Reserve("a", 600).ok());
}

TYPED_TEST(RegistryTest, ReservationMovesToTheEntryAndOutlivesItsRemoval) {
  auto p = this->registry_.Reserve("a", 300);
  ASSERT_TRUE(p.ok());
  Reservation r = p->TakeReservation();
  this->registry_.Commit(std::move(*p), std::make_shared<typename TestFixture::Entry>(), 300);
  EXPECT_EQ(this->budget_->used(), 300);  // the commit kept the bytes
  auto removed = this->registry_.Remove("a", /*hold_name=*/false, nullptr);
  ASSERT_TRUE(removed.ok());
  EXPECT_EQ(this->budget_->used(), 300);  // still held by whoever holds the entry
  r.reset();
  EXPECT_EQ(this->budget_->used(), 0);
}

TYPED_TEST(RegistryTest, RemovingAPendingNameIsNotFoundAndLeavesTheUploadAlone) {
  auto p = this->registry_.Reserve("a", 10);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(this->registry_.Remove("a", true, nullptr).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(this->registry_.Reserve("a", 10).status().code(), absl::StatusCode::kAlreadyExists);
  this->registry_.Commit(std::move(*p), std::make_shared<typename TestFixture::Entry>(), 4);
  EXPECT_TRUE(this->registry_.Get("a").ok());
  EXPECT_FALSE(this->registry_.reserved("a"));
}

TYPED_TEST(RegistryTest, ARemovalHoldsItsNameUntilFinishedAndRestoreServesItAgain) {
  const std::string kind = TypeParam::Words().kind;
  auto a = this->Add("a", 10, 6);
  this->Add("b", 10, 4);
  auto bytes = [](const typename TestFixture::Entry&) { return int64_t{6}; };
  {
    auto removal = this->registry_.Remove("a", /*hold_name=*/true, bytes);
    ASSERT_TRUE(removal.ok());
    EXPECT_EQ(removal->entry().get(), a.get());
    EXPECT_EQ(this->registry_.Get("a").status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(this->registry_.List().size(), 1u);
    EXPECT_EQ(this->gauge_entries_, 1);
    EXPECT_EQ(this->gauge_bytes_, 4);
    const absl::Status s = this->registry_.Reserve("a", 1).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
    EXPECT_EQ(s.message(), kind + " \"a\" is being deleted; upload it again once the delete is done");
    // A second removal meanwhile: the first may yet fail and put it back.
    const absl::Status second = this->registry_.Remove("a", true, bytes).status();
    EXPECT_EQ(second.code(), absl::StatusCode::kAborted);
    EXPECT_EQ(second.message(), kind + " \"a\" is being deleted by another call");
    removal->Restore(6);  // the file could not be removed: served again
  }
  EXPECT_EQ(this->registry_.Get("a")->get(), a.get());
  EXPECT_EQ(this->gauge_entries_, 2);
  EXPECT_EQ(this->gauge_bytes_, 10);
  EXPECT_FALSE(this->registry_.reserved("a"));
  {
    auto removal = this->registry_.Remove("a", true, bytes);
    ASSERT_TRUE(removal.ok());
    EXPECT_TRUE(this->registry_.reserved("a"));
    removal->Finish();
    EXPECT_FALSE(this->registry_.reserved("a"));
    EXPECT_TRUE(this->registry_.Reserve("a", 1).ok());
  }
  // Without a hold the name is free at once; dropping a removal frees it too.
  ASSERT_TRUE(this->registry_.Remove("b", false, nullptr).ok());
  EXPECT_FALSE(this->registry_.reserved("b"));
  this->Add("b", 1, 0);
  { auto dropped = this->registry_.Remove("b", true, nullptr); }
  EXPECT_FALSE(this->registry_.reserved("b"));
}

TYPED_TEST(RegistryTest, RemoveIfTakesOffOnlyTheSameEntry) {
  auto a = this->Add("a", 1, 0);
  const typename TestFixture::Entry other{};
  EXPECT_FALSE(this->registry_.RemoveIf("a", &other));
  EXPECT_FALSE(this->registry_.RemoveIf("zz", a.get()));
  EXPECT_TRUE(this->registry_.RemoveIf("a", a.get()));
  EXPECT_EQ(this->registry_.Get("a").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(this->gauge_entries_, 0);
}

// ------------------------------------------------- MatrixStore and the disk

// A Persistence whose RemoveMatrix says it has started, then waits for the
// test to let it go before it forwards to `inner` (or, without one, fails
// with `fail`).
class GatedPersistence final : public Persistence {
 public:
  explicit GatedPersistence(Persistence* inner, absl::Status fail = absl::OkStatus())
      : inner_(inner), fail_(std::move(fail)) {}
  absl::Status SaveMatrix(const StoredMatrixMeta& meta, const uint32_t* words,
                          const float* scales) override {
    return inner_ != nullptr ? inner_->SaveMatrix(meta, words, scales) : absl::OkStatus();
  }
  absl::Status RemoveMatrix(std::string_view name) override {
    entered_.Notify();
    if (!release_.WaitForNotificationWithTimeout(kPatience)) {
      return absl::DeadlineExceededError("the test never released the removal");
    }
    if (!fail_.ok()) return fail_;
    return inner_ != nullptr ? inner_->RemoveMatrix(name) : absl::OkStatus();
  }
  bool WaitEntered() { return entered_.WaitForNotificationWithTimeout(kPatience); }
  void Release() {
    if (!release_.HasBeenNotified()) release_.Notify();
  }

 private:
  Persistence* inner_;
  absl::Status fail_;
  absl::Notification entered_, release_;
};

// A thread running `fn`; on the way out (also on a failed ASSERT) it lets
// the gate go and joins.
class Background {
 public:
  Background(GatedPersistence* gate, std::function<void()> fn) : gate_(gate), t_(std::move(fn)) {}
  ~Background() {
    gate_->Release();
    t_.join();
  }

 private:
  GatedPersistence* gate_;
  std::thread t_;
};

std::shared_ptr<const Matrix> AddMatrix(MatrixStore& store, const std::string& name) {
  const MatrixShape shape{4, 16, Fp8Format::kE4M3, ScaleMode::kRow, true};
  auto p = store.BeginUpload(name, shape.resident_bytes());
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return nullptr;
  return store.Commit(std::move(*p), shape, DType::kF32, nullptr);
}

TEST(MatrixStoreDelete, ASlowFileRemovalBlocksNoGetNorUploadOfOtherNames) {
  GatedPersistence gate(nullptr);
  MatrixStore store(int64_t{1} << 20, nullptr);
  store.set_persistence(&gate);
  AddMatrix(store, "a");
  auto b = AddMatrix(store, "b");
  absl::Status deleted = absl::UnknownError("not run");
  absl::Notification delete_done;
  {
    Background del(&gate, [&] {
      deleted = store.Delete("a");
      delete_done.Notify();
    });
    ASSERT_TRUE(gate.WaitEntered());  // the delete is inside the file removal
    // A Get on another thread: it must return while the removal is stuck.
    absl::Notification got;
    absl::StatusOr<std::shared_ptr<const Matrix>> b_seen = absl::UnknownError("not run");
    Background get(&gate, [&] {
      b_seen = store.Get("b");
      got.Notify();
    });
    ASSERT_TRUE(got.WaitForNotificationWithTimeout(kPatience))
        << "Get waited for the delete's file removal";
    ASSERT_TRUE(b_seen.ok());
    EXPECT_EQ(b_seen->get(), b.get());
    EXPECT_FALSE(delete_done.HasBeenNotified());  // still inside RemoveMatrix
    // The deleted name is gone for readers, and taken for uploads.
    EXPECT_EQ(store.Get("a").status().code(), absl::StatusCode::kNotFound);
    ASSERT_EQ(store.List().size(), 1u);
    const absl::Status again = store.BeginUpload("a", 1).status();
    EXPECT_EQ(again.code(), absl::StatusCode::kAlreadyExists);
    EXPECT_TRUE(Contains(again, "is being deleted")) << again;
    EXPECT_NE(AddMatrix(store, "c"), nullptr);  // other names go on
    EXPECT_EQ(store.Delete("a").code(), absl::StatusCode::kAborted);
  }
  ASSERT_TRUE(delete_done.HasBeenNotified());
  EXPECT_TRUE(deleted.ok()) << deleted;
  EXPECT_NE(AddMatrix(store, "a"), nullptr);  // the name is free once the file is gone
}

TEST(MatrixStoreDelete, AFileThatCannotBeRemovedKeepsTheMatrixServed) {
  GatedPersistence gate(nullptr, absl::InternalError("cannot remove a.pmx: I/O error"));
  MatrixStore store(int64_t{1} << 20, nullptr);
  store.set_persistence(&gate);
  auto a = AddMatrix(store, "a");
  gate.Release();
  const absl::Status s = store.Delete("a");
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  auto got = store.Get("a");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->get(), a.get());
  EXPECT_EQ(store.BeginUpload("a", 1).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(store.List().size(), 1u);
}

absl::StatusOr<MatrixInfo> Upload(MatrixService& svc, const std::string& name, int64_t rows,
                                   int64_t cols, uint32_t seed) {
  auto up = svc.BeginUpload(testing::F32Header(name, rows, cols));
  if (!up.ok()) return up.status();
  const std::vector<float> w = testing::RandomNormal(rows * cols, seed);
  if (absl::Status s = (*up)->AddData(std::string_view(reinterpret_cast<const char*>(w.data()),
                                                       w.size() * sizeof(float)));
      !s.ok()) {
    return s;
  }
  return (*up)->Finish();
}

// A re-upload racing the old file's unlink: it cannot start until the file
// is gone, so the unlink can never take the new file with it.
TEST(MatrixStoreDelete, AReuploadCannotStartBeforeTheOldFileIsGone) {
  TempDir dir;
  auto disk = DirectoryStore::Open(dir.str());
  ASSERT_TRUE(disk.ok());
  GatedPersistence gate(disk->get());
  CpuBackend backend(1);
  MatrixStore store(int64_t{1} << 24, nullptr);
  store.set_persistence(&gate);
  MatrixService svc(&backend, &store, Limits{});
  ASSERT_TRUE(Upload(svc, "m", 8, 32, 1).ok());
  ASSERT_TRUE(fs::exists(dir / "m.pmx"));
  absl::Status deleted = absl::UnknownError("not run");
  {
    Background del(&gate, [&] { deleted = svc.DeleteMatrix("m"); });
    ASSERT_TRUE(gate.WaitEntered());
    EXPECT_TRUE(fs::exists(dir / "m.pmx"));  // not unlinked yet
    const absl::Status early = Upload(svc, "m", 8, 32, 2).status();
    EXPECT_EQ(early.code(), absl::StatusCode::kAlreadyExists) << early;
  }
  ASSERT_TRUE(deleted.ok()) << deleted;
  EXPECT_FALSE(fs::exists(dir / "m.pmx"));
  auto info = Upload(svc, "m", 16, 32, 3);
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_TRUE(fs::exists(dir / "m.pmx"));
  // A restart serves the new matrix from its file.
  MatrixStore again(int64_t{1} << 24, nullptr);
  const auto report = LoadStoredMatrices(disk->get(), &backend, &again);
  EXPECT_EQ(report.loaded, 1);
  auto m = again.Get("m");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)->shape.rows, 16);
  EXPECT_EQ((*m)->created_unix_ms, info->created_unix_ms);
}

// Deletes and uploads of one name from two threads, with the real
// directory: whatever the interleaving, the store serves the name exactly
// when its file is on disk.
TEST(MatrixStoreDelete, ConcurrentDeletesAndUploadsLeaveStoreAndDirectoryAgreeing) {
  TempDir dir;
  auto disk = DirectoryStore::Open(dir.str());
  ASSERT_TRUE(disk.ok());
  CpuBackend backend(1);
  MatrixStore store(int64_t{1} << 24, nullptr);
  store.set_persistence(disk->get());
  MatrixService svc(&backend, &store, Limits{});
  constexpr int kRounds = 60;
  int uploaded = 0, deleted = 0;
  std::thread uploader([&] {
    for (int i = 0; i < kRounds; ++i) {
      const absl::Status s = Upload(svc, "m", 4, 32, static_cast<uint32_t>(i)).status();
      EXPECT_TRUE(s.ok() || s.code() == absl::StatusCode::kAlreadyExists) << s;
      uploaded += s.ok() ? 1 : 0;
    }
  });
  std::thread deleter([&] {
    for (int i = 0; i < kRounds; ++i) {
      const absl::Status s = svc.DeleteMatrix("m");
      EXPECT_TRUE(s.ok() || s.code() == absl::StatusCode::kNotFound) << s;
      deleted += s.ok() ? 1 : 0;
    }
  });
  uploader.join();
  deleter.join();
  EXPECT_GT(uploaded, 0);
  EXPECT_EQ(store.Get("m").ok(), fs::exists(dir / "m.pmx"))
      << uploaded << " uploads, " << deleted << " deletes";
  EXPECT_EQ(uploaded - deleted, store.Get("m").ok() ? 1 : 0);
}

// ------------------------------------------------------------ KvStore

TEST(KvStoreRegistry, SharesTheMatrixBudgetAndKeepsItsOwnNames) {
  MatrixStore matrices(1000, nullptr);
  KvStore caches(matrices.budget(), nullptr);
  auto m = matrices.BeginUpload("x", 600);
  ASSERT_TRUE(m.ok());
  auto c = caches.BeginUpload("x", 300);  // a cache may share a matrix's name
  ASSERT_TRUE(c.ok());
  const absl::Status s = caches.BeginUpload("y", 200).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(Contains(s, "kv cache \"y\" needs 200 more bytes, 100 of 1000 bytes free")) << s;
  EXPECT_EQ(caches.Delete("x").code(), absl::StatusCode::kNotFound);  // still an upload
}

}  // namespace
}  // namespace plume::core
