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
#include "tests/common/core_calls.h"
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
  MatrixHeader h;
  h.name = "w";
  h.rows = 10;
  h.cols = 20;
  h.source_dtype = static_cast<int>(DType::kF16);
  auto plan = ValidateHeader(h, limits);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->data_bytes, 10 * 20 * 2);
  EXPECT_EQ(plan->shape.format, Fp8Format::kE4M3);     // unspecified -> E4M3
  EXPECT_EQ(plan->shape.scale_mode, ScaleMode::kRow);  // unspecified -> ROW
  EXPECT_FALSE(plan->prepacked);

  auto expect = [&](const MatrixHeader& bad, absl::StatusCode code, const char* what) {
    EXPECT_EQ(ValidateHeader(bad, limits).status().code(), code) << what;
  };
  auto with = [&](auto mutate) {
    MatrixHeader b = h;
    mutate(b);
    return b;
  };
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  expect(with([](auto& b) { b.rows = 0; }), kInvalid, "rows 0");
  expect(with([](auto& b) { b.cols = -3; }), kInvalid, "cols -3");
  expect(with([](auto& b) { b.rows = 1001; }), kInvalid, "rows over the limit");
  expect(with([](auto& b) { b.source_dtype = 0; }), kInvalid, "source_dtype unspecified");
  expect(with([](auto& b) { b.source_dtype = 99; }), kInvalid, "source_dtype 99");
  expect(with([](auto& b) { b.format = static_cast<int>(DType::kF32); }), kInvalid, "format F32");
  expect(with([](auto& b) { b.scale_mode = 42; }), kInvalid, "scale_mode 42");
  expect(with([](auto& b) { b.placement = 7; }), kInvalid, "placement 7");
  expect(with([](auto& b) {
           b.source_dtype = static_cast<int>(DType::kE5M2);
           b.format = static_cast<int>(DType::kE4M3);
         }),
         kInvalid, "pre-packed E5M2 into an E4M3 matrix");
  expect(with([](auto& b) { b.rows = 1000, b.cols = 1000; }),  // 2 MB of F16 > 1 MiB
         absl::StatusCode::kResourceExhausted, "2 MB upload");

  MatrixHeader packed = with([](auto& b) {
    b.source_dtype = static_cast<int>(DType::kE4M3);
    b.scale_mode = static_cast<int>(ScaleMode::kBlock128);
    b.cols = 300;
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
  testing::CoreCalls calls(&backend);
  const int64_t rows = 37, cols = 203, batch = 3;
  std::vector<float> w = RandomMatrix(rows * cols, 7);

  auto upload = service.BeginUpload(testing::F32Header("w", rows, cols, ScaleMode::kBlock128));
  ASSERT_TRUE(upload.ok()) << upload.status();
  const std::string all = Bytes(w);
  for (size_t off = 0; off < all.size(); off += 1000) {
    ASSERT_TRUE((*upload)->AddData(std::string_view(all).substr(off, 1000)).ok());
  }
  EXPECT_EQ((*upload)->AddData("x").code(), absl::StatusCode::kInvalidArgument);
  auto info = (*upload)->Finish();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->padded_cols, 208);
  EXPECT_EQ(info->num_scales, rows * 2);

  testing::ExpectedGemv expected(w, rows, cols, Fp8Format::kE4M3, ScaleMode::kBlock128);

  std::vector<float> x = RandomMatrix(batch * cols, 8);
  const testing::HostTensor in = testing::F32Tensor({batch, cols}, x);
  GemvCall call{"w", in.view()};
  testing::HeldResult out;
  ASSERT_TRUE(calls.Gemv(service, call, &out).ok());
  EXPECT_EQ(out.allocations, 1);
  EXPECT_EQ(out.dtype, DType::kF32);
  EXPECT_EQ(out.shape, (std::vector<int64_t>{batch, rows}));
  ASSERT_EQ(out.data.size(), static_cast<size_t>(batch * rows * 4));
  EXPECT_LE(expected.RelErr(x, batch, out.floats()), 1e-5);

  // A 1-D input gets a 1-D result.
  const std::vector<float> x0(x.begin(), x.begin() + cols);
  const testing::HostTensor one = testing::F32Tensor({cols}, x0);
  testing::HeldResult vec;
  ASSERT_TRUE(calls.Gemv(service, {"w", one.view()}, &vec).ok());
  EXPECT_EQ(vec.shape, (std::vector<int64_t>{rows}));
  EXPECT_LE(expected.RelErr(x0, 1, vec.floats()), 1e-5);

  // Bad requests get precise codes, allocate no result and leave the matrix
  // intact.
  auto code_of = [&](const GemvCall& bad) {
    testing::HeldResult r;
    const absl::Status s = calls.Gemv(service, bad, &r);
    EXPECT_EQ(r.allocations, 0) << s;
    return s.code();
  };
  GemvCall bad = call;
  bad.input.data.remove_suffix(1);
  EXPECT_EQ(code_of(bad), absl::StatusCode::kInvalidArgument);
  const int64_t wide[] = {batch, cols + 1};
  bad = call;
  bad.input.shape = wide;
  EXPECT_EQ(code_of(bad), absl::StatusCode::kInvalidArgument);
  bad = call;
  bad.output_dtype = static_cast<int>(DType::kE4M3);
  EXPECT_EQ(code_of(bad), absl::StatusCode::kInvalidArgument);
  const int64_t rank3[] = {batch, cols, 1};
  bad = call;
  bad.input.shape = rank3;
  EXPECT_EQ(code_of(bad), absl::StatusCode::kInvalidArgument);
  const int64_t empty[] = {0, cols};
  bad = call;
  bad.input.shape = empty;
  EXPECT_EQ(code_of(bad), absl::StatusCode::kInvalidArgument);
  bad = call;
  bad.matrix = "nope";
  EXPECT_EQ(code_of(bad), absl::StatusCode::kNotFound);
  testing::HeldResult again;
  EXPECT_TRUE(calls.Gemv(service, call, &again).ok());
  EXPECT_EQ(again.data, out.data);
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
// The CPU backend refuses a call with a value outside its enum (the core
// validates first; a direct caller can still pass one) with INVALID_ARGUMENT
// rather than compute with another value.
TEST(CpuBackend, RefusesValuesItDoesNotKnow) {
  CpuBackend backend(1);
  const MatrixShape shape{4, 32, Fp8Format::kE4M3, ScaleMode::kRow, true};
  const std::vector<float> src = RandomMatrix(4 * 32, 3);
  auto m = backend.Quantize(shape, src.data(), DType::kF32);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(backend.Quantize(shape, src.data(), DType::kE4M3).status().code(),
            absl::StatusCode::kInvalidArgument);
  MatrixShape bad_mode = shape;
  bad_mode.scale_mode = static_cast<ScaleMode>(77);
  EXPECT_EQ(backend.Quantize(bad_mode, src.data(), DType::kF32).status().code(),
            absl::StatusCode::kInvalidArgument);

  const std::vector<float> x = RandomMatrix(2 * 32, 4);
  std::vector<float> y(2 * 8, -7.0f);  // room for the strided calls below
  GemvArgs args;
  args.x = x.data();
  args.batch = 2;
  args.y = y.data();
  ASSERT_TRUE(backend.Gemv(**m, args).ok());
  ASSERT_NE(y[0], -7.0f);
  std::fill(y.begin(), y.end(), -7.0f);
  for (DType bad : {DType::kE4M3, static_cast<DType>(9)}) {
    GemvArgs a = args;
    a.y_dtype = bad;
    EXPECT_EQ(backend.Gemv(**m, a).code(), absl::StatusCode::kInvalidArgument);
    a.y_stride = 8;  // the strided path too
    EXPECT_EQ(backend.Gemv(**m, a).code(), absl::StatusCode::kInvalidArgument);
  }
  GemvArgs a = args;
  a.x_dtype = static_cast<DType>(0);
  EXPECT_EQ(backend.Gemv(**m, a).code(), absl::StatusCode::kInvalidArgument);
  for (float v : y) EXPECT_EQ(v, -7.0f);

  auto kv = backend.CreateKv(KvShape{1, 16, Fp8Format::kE4M3, KvScaleMode::kTokenBlock, true});
  ASSERT_TRUE(kv.ok()) << kv.status();
  const std::vector<float> k = RandomMatrix(3 * 16, 5), v = RandomMatrix(3 * 16, 6);
  KvAppendArgs append{k.data(), v.data(), static_cast<DType>(9), 3};
  EXPECT_EQ(backend.AppendKv(**kv, append).code(), absl::StatusCode::kInvalidArgument);
  append.src_dtype = DType::kF32;
  ASSERT_TRUE(backend.AppendKv(**kv, append).ok());
  std::vector<float> out(16, -7.0f);
  AttentionArgs att;
  att.q = k.data();
  att.batch = 1;
  att.heads = 1;
  att.q_len = 1;
  att.scale = 0.25f;
  att.out = out.data();
  att.out_dtype = DType::kE4M3;
  EXPECT_EQ(backend.Attention(**kv, att).code(), absl::StatusCode::kInvalidArgument);
  for (float o : out) EXPECT_EQ(o, -7.0f);
  att.out_dtype = DType::kF32;
  EXPECT_TRUE(backend.Attention(**kv, att).ok());
  EXPECT_NE(out[0], -7.0f);
}

}  // namespace plume::core
