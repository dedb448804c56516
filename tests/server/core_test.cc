// server/core without gRPC: validation, the store's budget and reference
// counting, and MatrixService on the CPU backend.
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "plume/reference/api.h"
#include "tests/common/gemv_reference.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/core/matrix_service.h"
#include "server/core/matrix_store.h"
#include "server/core/metrics.h"
#include "server/core/validation.h"
#include "server/core/work_queue.h"

namespace plume::core {
namespace {

std::vector<float> RandomMatrix(int64_t n, uint32_t seed) { return testing::RandomNormal(n, seed); }

std::string Bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

TEST(ValidateName, AcceptsSafeNamesAndRejectsPathsAndJunk) {
  Limits limits;
  for (const char* ok : {"w", "layer0.attn_q-proj", "A_b-9.c"}) {
    EXPECT_TRUE(ValidateName(ok, limits).ok()) << ok;
  }
  for (const std::string& bad : std::vector<std::string>{"", ".", "..", "../etc", "a/b", ".hidden", "sp ace", "tab\t", "ü",
                          std::string("nul\0x", 5)}) {
    EXPECT_EQ(ValidateName(bad, limits).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(ValidateName(std::string(limits.max_name_length + 1, 'x'), limits).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateName(std::string(limits.max_name_length, 'x'), limits).ok());
}

TEST(ValidateHeader, ChecksShapeDtypesAndLimits) {
  Limits limits;
  limits.max_rows = 1000;
  limits.max_upload_bytes = 1 << 20;
  v1::MatrixHeader h;
  h.set_name("w");
  h.set_rows(10);
  h.set_cols(20);
  h.set_source_dtype(v1::DTYPE_F16);
  auto plan = ValidateHeader(h, limits);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->data_bytes, 10 * 20 * 2);
  EXPECT_EQ(plan->shape.format, Fp8Format::kE4M3);     // unspecified -> E4M3
  EXPECT_EQ(plan->shape.scale_mode, ScaleMode::kRow);  // unspecified -> ROW
  EXPECT_FALSE(plan->prepacked);

  auto expect = [&](v1::MatrixHeader bad, absl::StatusCode code) {
    EXPECT_EQ(ValidateHeader(bad, limits).status().code(), code) << bad.DebugString();
  };
  auto with = [&](auto mutate) {
    v1::MatrixHeader b = h;
    mutate(b);
    return b;
  };
  expect(with([](auto& b) { b.set_rows(0); }), absl::StatusCode::kInvalidArgument);
  expect(with([](auto& b) { b.set_cols(-3); }), absl::StatusCode::kInvalidArgument);
  expect(with([](auto& b) { b.set_rows(1001); }), absl::StatusCode::kInvalidArgument);
  expect(with([](auto& b) { b.set_source_dtype(v1::DTYPE_UNSPECIFIED); }),
         absl::StatusCode::kInvalidArgument);
  expect(with([](auto& b) { b.set_source_dtype(static_cast<v1::DType>(99)); }),
         absl::StatusCode::kInvalidArgument);
  expect(with([](auto& b) { b.set_format(v1::DTYPE_F32); }), absl::StatusCode::kInvalidArgument);
  expect(with([](auto& b) { b.set_scale_mode(static_cast<v1::ScaleMode>(42)); }),
         absl::StatusCode::kInvalidArgument);
  expect(with([](auto& b) {
           b.set_source_dtype(v1::DTYPE_E5M2);
           b.set_format(v1::DTYPE_E4M3);
         }),
         absl::StatusCode::kInvalidArgument);
  expect(with([](auto& b) { b.set_rows(1000), b.set_cols(1000); }),  // 2 MB of F16 > 1 MiB
         absl::StatusCode::kResourceExhausted);

  v1::MatrixHeader packed = with([](auto& b) {
    b.set_source_dtype(v1::DTYPE_E4M3);
    b.set_scale_mode(v1::SCALE_MODE_BLOCK128);
    b.set_cols(300);
  });
  plan = ValidateHeader(packed, limits);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->prepacked);
  EXPECT_EQ(plan->data_bytes, 10 * 304);      // rows padded to 16 codes
  EXPECT_EQ(plan->scale_bytes, 10 * 3 * 4);   // ceil(300/128) blocks per row
}

TEST(ValidatePackedScales, RejectsNonFiniteAndNonPositive) {
  const float good[] = {1.0f, 1e-30f, 3e30f};
  EXPECT_TRUE(ValidatePackedScales(good, 3).ok());
  for (float bad : {0.0f, -1.0f, NAN, INFINITY}) {
    EXPECT_EQ(ValidatePackedScales(&bad, 1).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(MatrixStore, BudgetNamesAndReferenceCounting) {
  CpuBackend backend(1);
  MatrixShape shape{64, 64, Fp8Format::kE4M3, ScaleMode::kRow, true};
  const int64_t bytes = shape.resident_bytes();
  MatrixStore store(bytes * 2, nullptr);

  auto p1 = store.BeginUpload("a", bytes);
  ASSERT_TRUE(p1.ok());
  // The name is claimed while the upload runs.
  EXPECT_EQ(store.BeginUpload("a", bytes).status().code(), absl::StatusCode::kAlreadyExists);
  auto p2 = store.BeginUpload("b", bytes);
  ASSERT_TRUE(p2.ok());
  // The budget counts uploads in progress.
  EXPECT_EQ(store.BeginUpload("c", 1).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(store.used_bytes(), 2 * bytes);

  { auto drop = std::move(*p2); }  // abandoned upload: name and bytes come back
  EXPECT_EQ(store.used_bytes(), bytes);
  EXPECT_TRUE(store.BeginUpload("b", bytes).ok());
  EXPECT_EQ(store.used_bytes(), bytes);

  std::vector<float> src = RandomMatrix(64 * 64, 1);
  auto data = backend.Quantize(shape, src.data(), DType::kF32);
  ASSERT_TRUE(data.ok());
  store.Commit(std::move(*p1), shape, DType::kF32, std::move(*data));
  EXPECT_EQ(store.BeginUpload("a", 1).status().code(), absl::StatusCode::kAlreadyExists);

  auto in_use = store.Get("a");
  ASSERT_TRUE(in_use.ok());
  ASSERT_TRUE(store.Delete("a").ok());
  EXPECT_EQ(store.Get("a").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store.Delete("a").code(), absl::StatusCode::kNotFound);
  // Still referenced: its memory stays counted until the user lets go.
  EXPECT_EQ(store.used_bytes(), bytes);
  EXPECT_EQ((*in_use)->shape.rows, 64);
  in_use->reset();
  EXPECT_EQ(store.used_bytes(), 0);
}

TEST(MatrixService, GemvOnCpuBackendMatchesFp64Reference) {
  CpuBackend backend(2);
  Metrics metrics;
  MatrixStore store(int64_t{1} << 30, &metrics);
  MatrixService service(&backend, &store, Limits{});
  const int64_t rows = 37, cols = 203, batch = 3;
  std::vector<float> w = RandomMatrix(rows * cols, 7);

  v1::MatrixHeader h;
  h.set_name("w");
  h.set_rows(rows);
  h.set_cols(cols);
  h.set_source_dtype(v1::DTYPE_F32);
  h.set_scale_mode(v1::SCALE_MODE_BLOCK128);
  auto upload = service.BeginUpload(h);
  ASSERT_TRUE(upload.ok()) << upload.status();
  const std::string all = Bytes(w);
  for (size_t off = 0; off < all.size(); off += 1000) {
    ASSERT_TRUE((*upload)->AddData(std::string_view(all).substr(off, 1000)).ok());
  }
  EXPECT_EQ((*upload)->AddData("x").code(), absl::StatusCode::kInvalidArgument);
  auto info = (*upload)->Finish();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->layout().padded_cols(), 208);
  EXPECT_EQ(info->layout().num_scales(), rows * 2);

  testing::ExpectedGemv expected(w, rows, cols, Fp8Format::kE4M3, ScaleMode::kBlock128);

  std::vector<float> x = RandomMatrix(batch * cols, 8);
  v1::GemvRequest req;
  req.set_matrix("w");
  req.set_request_id(77);
  req.mutable_input()->set_dtype(v1::DTYPE_F32);
  req.mutable_input()->add_shape(batch);
  req.mutable_input()->add_shape(cols);
  req.mutable_input()->set_data(Bytes(x));
  v1::GemvResponse resp;
  ASSERT_TRUE(service.Gemv(req, &resp).ok());
  EXPECT_EQ(resp.request_id(), 77u);
  ASSERT_EQ(resp.output().shape_size(), 2);
  EXPECT_EQ(resp.output().shape(0), batch);
  EXPECT_EQ(resp.output().shape(1), rows);
  ASSERT_EQ(resp.output().data().size(), static_cast<size_t>(batch * rows * 4));
  std::vector<float> y(static_cast<size_t>(batch * rows));
  std::memcpy(y.data(), resp.output().data().data(), y.size() * sizeof(float));
  EXPECT_LE(expected.RelErr(x, batch, y), 1e-5);

  // Bad requests get precise codes and leave the matrix intact.
  v1::GemvRequest bad = req;
  bad.mutable_input()->mutable_data()->pop_back();
  EXPECT_EQ(service.Gemv(bad, &resp).code(), absl::StatusCode::kInvalidArgument);
  bad = req;
  bad.mutable_input()->set_shape(1, cols + 1);
  EXPECT_EQ(service.Gemv(bad, &resp).code(), absl::StatusCode::kInvalidArgument);
  bad = req;
  bad.set_output_dtype(v1::DTYPE_E4M3);
  EXPECT_EQ(service.Gemv(bad, &resp).code(), absl::StatusCode::kInvalidArgument);
  bad = req;
  bad.mutable_input()->add_shape(1);
  EXPECT_EQ(service.Gemv(bad, &resp).code(), absl::StatusCode::kInvalidArgument);
  bad = req;
  bad.mutable_input()->set_shape(0, 0);
  EXPECT_EQ(service.Gemv(bad, &resp).code(), absl::StatusCode::kInvalidArgument);
  bad = req;
  bad.set_matrix("nope");
  EXPECT_EQ(service.Gemv(bad, &resp).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(service.Gemv(req, &resp).ok());
}

TEST(WorkQueue, RunsEverythingAndRefusesWhenFull) {
  std::atomic<int> ran{0};
  {
    WorkQueue q(2, 1000);
    for (int i = 0; i < 500; ++i) ASSERT_TRUE(q.Submit([&] { ran.fetch_add(1); }));
  }
  EXPECT_EQ(ran.load(), 500);

  absl::Mutex gate;
  gate.Lock();
  WorkQueue q(1, 2);
  ASSERT_TRUE(q.Submit([&] { gate.Lock(); gate.Unlock(); }));  // occupies the thread
  // The worker may or may not have dequeued the first task yet; two more
  // fit in the queue at most, after which Submit refuses.
  int accepted = 0;
  for (int i = 0; i < 5; ++i) accepted += q.Submit([] {}) ? 1 : 0;
  EXPECT_GE(accepted, 1);
  EXPECT_LE(accepted, 2);
  gate.Unlock();
}

TEST(WorkQueue, FirstTasksRunAheadOfQueuedOnesInTheirOwnOrder) {
  WorkQueue q(1, 100);
  absl::Notification started, release;
  ASSERT_TRUE(q.Submit([&] {
    started.Notify();
    release.WaitForNotification();
  }));
  ASSERT_TRUE(started.WaitForNotificationWithTimeout(absl::Seconds(20)));  // the one thread is busy
  absl::Mutex mu;
  std::string order;
  auto note = [&](char c) {
    return [&, c] {
      absl::MutexLock lock(&mu);
      order += c;
    };
  };
  ASSERT_TRUE(q.Submit(note('a')));
  ASSERT_TRUE(q.Submit(note('b')));
  ASSERT_TRUE(q.Submit(note('X'), WorkQueue::Priority::kFirst));
  ASSERT_TRUE(q.Submit(note('c')));
  ASSERT_TRUE(q.Submit(note('Y'), WorkQueue::Priority::kFirst));
  EXPECT_EQ(q.queued(), 5);
  release.Notify();
  q.WaitIdle();
  absl::MutexLock lock(&mu);
  EXPECT_EQ(order, "XYabc");
}

}  // namespace
}  // namespace plume::core
