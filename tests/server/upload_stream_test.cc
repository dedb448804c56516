// Streamed uploads (MatrixService::Upload): NONE, ROW and BLOCK128 sources
// are quantized as their rows arrive, in chunks of any size (rows and even
// single values split across chunks), into exactly the codes and scales of a
// whole-matrix quantization; TENSOR stages the whole source. Staging counts
// against the memory budget and goes back when an upload ends or is
// abandoned. And the host memory an upload of a large F32 matrix takes
// through the real server stays within the resident size plus 64 MiB (and
// a stated 32 MiB for gRPC's buffers).
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <grpcpp/grpcpp.h>

#include "plume/client/client.h"
#include "plume/v1/plume.grpc.pb.h"
#include "plume/kernels/half.h"
#include "plume/reference/api.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/backends/sharded/sharded_backend.h"
#include "server/core/matrix_service.h"
#include "server/core/matrix_store.h"
#include "server/core/metrics.h"
#include "tests/common/gemv_reference.h"
#include "tests/common/sanitizers.h"
#include "tests/common/test_server.h"

namespace plume::core {
namespace {

// The source of a rows x cols matrix in `dtype`: random normal values
// (never all zero), a few rows scaled up so that the row scales differ.
std::string Source(int64_t rows, int64_t cols, DType dtype, uint32_t seed) {
  std::vector<float> f = testing::RandomNormal(rows * cols, seed);
  for (int64_t r = 0; r < rows; r += 3) {
    for (int64_t c = 0; c < cols; ++c) f[static_cast<size_t>(r * cols + c)] *= 7.5f;
  }
  std::string out(static_cast<size_t>(rows * cols * DTypeSize(dtype)), '\0');
  for (size_t i = 0; i < f.size(); ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(&out[i * 4], &f[i], 4);
    } else {
      uint32_t u;
      std::memcpy(&u, &f[i], 4);
      // BF16: the top half of the F32 bits (truncated); F16: rounded.
      const uint16_t h =
          dtype == DType::kBF16 ? static_cast<uint16_t>(u >> 16) : FloatToHalfBits(f[i]);
      std::memcpy(&out[i * 2], &h, 2);
    }
  }
  return out;
}

struct Packed {
  std::vector<uint32_t> words;
  std::vector<float> scales;
};

Packed WholeQuantization(const MatrixShape& s, const std::string& src, DType dtype) {
  Packed p;
  p.words.assign(static_cast<size_t>(s.layout().total_words()), 0);
  p.scales.assign(static_cast<size_t>(std::max<int64_t>(s.num_scales(), 1)), 0.0f);
  ref::QuantizePack(src.data(), dtype, s.rows, s.cols, ref::QuantizeOptions{s.format, s.scale_mode, s.saturate},
                    p.words.data(), p.scales.data());
  return p;
}

MatrixHeader Header(std::string_view name, int64_t rows, int64_t cols, DType dtype, ScaleMode mode,
                    Fp8Format format) {
  MatrixHeader h;
  h.name = name;
  h.rows = rows;
  h.cols = cols;
  h.source_dtype = static_cast<int>(dtype);
  h.scale_mode = static_cast<int>(mode);
  h.format = static_cast<int>(format);
  return h;
}

class UploadStreamTest : public ::testing::Test {
 protected:
  void Make(int64_t budget, std::unique_ptr<Backend> backend = nullptr) {
    backend_ = backend != nullptr ? std::move(backend) : std::make_unique<CpuBackend>(2);
    store_ = std::make_unique<MatrixStore>(budget, &metrics_);
    service_ = std::make_unique<MatrixService>(backend_.get(), store_.get(), Limits{});
  }

  // The resident matrix `name` holds the codes and scales of quantizing
  // `src` whole.
  void ExpectWholeQuantization(const std::string& name, const std::string& src, DType dtype) {
    auto m = store_->Get(name);
    ASSERT_TRUE(m.ok()) << m.status();
    const Packed want = WholeQuantization((*m)->shape, src, dtype);
    Packed got;
    got.words.assign(want.words.size(), 0);
    got.scales.assign(want.scales.size(), 0.0f);
    ASSERT_TRUE(backend_->ReadPacked(*(*m)->data, got.words.data(), got.scales.data()).ok());
    EXPECT_EQ(got.words, want.words) << name;
    EXPECT_EQ(got.scales, want.scales) << name;
  }

  Metrics metrics_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<MatrixStore> store_;
  std::unique_ptr<MatrixService> service_;
};

TEST_F(UploadStreamTest, UnevenChunksGiveTheCodesOfTheWholeMatrix) {
  Make(int64_t{1} << 30);
  std::mt19937 rng(42);
  int streamed = 0, cases = 0;
  for (ScaleMode mode : {ScaleMode::kNone, ScaleMode::kRow, ScaleMode::kBlock128, ScaleMode::kTensor}) {
    for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
      for (Fp8Format format : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
        for (int64_t cols : {int64_t{1}, int64_t{37}, int64_t{300}}) {
          const int64_t rows = 23;
          const std::string name = "m" + std::to_string(cases++);
          const std::string src = Source(rows, cols, dtype, 100 + static_cast<uint32_t>(cases));
          auto up = service_->BeginUpload(Header(name, rows, cols, dtype, mode, format));
          ASSERT_TRUE(up.ok()) << up.status();
          const bool expect_streamed = mode != ScaleMode::kTensor;
          EXPECT_EQ((*up)->streamed(), expect_streamed) << name;
          const int64_t row_bytes = cols * DTypeSize(dtype);
          EXPECT_EQ((*up)->staging_bytes(), expect_streamed ? row_bytes : rows * row_bytes);
          // Chunks of 1 byte up to three rows: rows and values split.
          for (size_t at = 0; at < src.size();) {
            const size_t n = std::min<size_t>(src.size() - at, 1 + rng() % (3 * row_bytes + 2));
            ASSERT_TRUE((*up)->AddData(std::string_view(src).substr(at, n)).ok());
            at += n;
          }
          auto info = (*up)->Finish();
          ASSERT_TRUE(info.ok()) << info.status();
          auto m = store_->Get(name);
          ASSERT_TRUE(m.ok());
          const MatrixShape& s = (*m)->shape;
          const Packed want = WholeQuantization(s, src, dtype);
          Packed got;
          got.words.assign(want.words.size(), 0xDEADBEEFu);
          got.scales.assign(want.scales.size(), -1.0f);
          ASSERT_TRUE(backend_->ReadPacked(*(*m)->data, got.words.data(), got.scales.data()).ok());
          EXPECT_EQ(got.words, want.words) << name;
          if (s.num_scales() > 0) {
            EXPECT_EQ(std::vector<float>(got.scales.begin(), got.scales.begin() + s.num_scales()),
                      std::vector<float>(want.scales.begin(), want.scales.begin() + s.num_scales()))
                << name;
          }
          streamed += expect_streamed;
        }
      }
    }
  }
  EXPECT_EQ(streamed, 3 * 3 * 2 * 3);
  EXPECT_EQ(store_->budget()->used(), store_->used_bytes());  // no staging left reserved
}

TEST_F(UploadStreamTest, StagingCountsAgainstTheBudget) {
  // 256 x 1024 F32 is 1 MiB of source and 256 KiB (+ 1 KiB of row scales)
  // resident; the budget is 1 MiB.
  Make(int64_t{1} << 20);
  const int64_t rows = 256, cols = 1024;
  // TENSOR stages the whole source: it cannot fit beside the matrix.
  auto tensor = service_->BeginUpload(Header("t", rows, cols, DType::kF32, ScaleMode::kTensor,
                                             Fp8Format::kE4M3));
  ASSERT_EQ(tensor.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(tensor.status().message().find("staging"), std::string::npos) << tensor.status();
  EXPECT_EQ(store_->budget()->used(), 0);  // the refused upload holds nothing
  // ROW streams: one row of staging beside the matrix.
  auto row = service_->BeginUpload(Header("r", rows, cols, DType::kF32, ScaleMode::kRow,
                                          Fp8Format::kE4M3));
  ASSERT_TRUE(row.ok()) << row.status();
  EXPECT_EQ((*row)->staging_bytes(), cols * 4);
  const int64_t used_while_uploading = store_->budget()->used();
  const std::string src = Source(rows, cols, DType::kF32, 5);
  for (size_t at = 0; at < src.size(); at += 40000) {
    ASSERT_TRUE((*row)->AddData(std::string_view(src).substr(at, 40000)).ok());
  }
  ASSERT_TRUE((*row)->Finish().ok());
  const int64_t resident = store_->used_bytes();
  EXPECT_EQ(resident, rows * cols + rows * 4);
  EXPECT_EQ(used_while_uploading, resident + cols * 4);
  EXPECT_EQ(store_->budget()->used(), resident);  // the staging went back
  // An abandoned streamed upload gives back its staging and its matrix.
  {
    auto gone = service_->BeginUpload(Header("g", 64, cols, DType::kF32, ScaleMode::kBlock128,
                                             Fp8Format::kE5M2));
    ASSERT_TRUE(gone.ok()) << gone.status();
    ASSERT_TRUE((*gone)->AddData(std::string_view(src).substr(0, 12345)).ok());
    EXPECT_GT(store_->budget()->used(), resident);
  }
  EXPECT_EQ(store_->budget()->used(), resident);
  EXPECT_FALSE(store_->Get("g").ok());
}

TEST_F(UploadStreamTest, ConcurrentTensorUploadsShareTheBudget) {
  // 128 x 1024 F32 with TENSOR scaling: 512 KiB of staging beside 128 KiB
  // (+ one scale) resident, so one upload fits a 1 MiB budget, two do not.
  Make(int64_t{1} << 20);
  const int64_t rows = 128, cols = 1024;
  const std::string src = Source(rows, cols, DType::kF32, 17);
  auto first = service_->BeginUpload(Header("t1", rows, cols, DType::kF32, ScaleMode::kTensor,
                                            Fp8Format::kE4M3));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE((*first)->streamed());
  EXPECT_EQ((*first)->staging_bytes(), rows * cols * 4);
  ASSERT_TRUE((*first)->AddData(std::string_view(src).substr(0, 100000)).ok());
  const int64_t one = store_->budget()->used();
  EXPECT_EQ(one, rows * cols + 4 + rows * cols * 4);
  auto second = service_->BeginUpload(Header("t2", rows, cols, DType::kF32, ScaleMode::kTensor,
                                             Fp8Format::kE5M2));
  ASSERT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted) << second.status();
  EXPECT_NE(second.status().message().find("--memory_budget_bytes"), std::string::npos)
      << second.status();
  EXPECT_EQ(store_->budget()->used(), one);  // the refused one holds nothing
  EXPECT_FALSE(store_->Get("t2").ok());
  ASSERT_TRUE((*first)->AddData(std::string_view(src).substr(100000)).ok());
  ASSERT_TRUE((*first)->Finish().ok());
  EXPECT_EQ(store_->budget()->used(), rows * cols + 4);  // its staging went back
  // Now the second fits, and stores the codes of the whole quantization.
  auto again = service_->BeginUpload(Header("t2", rows, cols, DType::kF32, ScaleMode::kTensor,
                                            Fp8Format::kE5M2));
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_TRUE((*again)->AddData(src).ok());
  ASSERT_TRUE((*again)->Finish().ok());
  ExpectWholeQuantization("t2", src, DType::kF32);
  EXPECT_EQ(store_->budget()->used(), 2 * (rows * cols + 4));
}

TEST_F(UploadStreamTest, StreamedUploadLargerThanTheFreeBudgetFitsWhenItsMatrixDoes) {
  // 512 x 2048 F32 ROW: 4 MiB of source, 1 MiB + 2 KiB resident. A 1 MiB
  // matrix already takes part of a 3 MiB budget, so the source could never
  // be staged whole, but the streamed upload needs its matrix and one row.
  Make(int64_t{3} << 20);
  const std::string other = Source(1024, 1024, DType::kF32, 6);
  auto pre = service_->BeginUpload(Header("other", 1024, 1024, DType::kF32, ScaleMode::kNone,
                                          Fp8Format::kE4M3));
  ASSERT_TRUE(pre.ok()) << pre.status();
  ASSERT_TRUE((*pre)->AddData(other).ok());
  ASSERT_TRUE((*pre)->Finish().ok());
  const int64_t rows = 512, cols = 2048;
  const int64_t free_bytes = store_->budget()->capacity() - store_->budget()->used();
  ASSERT_LT(free_bytes, rows * cols * 4);
  const std::string src = Source(rows, cols, DType::kF32, 7);
  auto up = service_->BeginUpload(Header("big", rows, cols, DType::kF32, ScaleMode::kRow,
                                         Fp8Format::kE4M3));
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_EQ((*up)->staging_bytes(), cols * 4);
  for (size_t at = 0; at < src.size(); at += 65537) {
    ASSERT_TRUE((*up)->AddData(std::string_view(src).substr(at, 65537)).ok());
  }
  auto info = (*up)->Finish();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(store_->budget()->used(), 1024 * 1024 + rows * cols + rows * 4);
}

TEST(UploadStreamServer, CancelledStreamedUploadGivesItsBudgetBack) {
  // Through the real server: a ROW upload sends its header and part of its
  // rows (the last one cut in the middle of a value), then the client
  // cancels. While it is open the budget holds its matrix and one row of
  // staging; after the cancel, nothing, and the name is free.
  auto t = testing::StartTestServer();
  ASSERT_TRUE(t.ok()) << t.status();
  const std::shared_ptr<Budget>& budget = t->engine->matrix_store()->budget();
  auto channel = grpc::CreateChannel(t->address(), grpc::InsecureChannelCredentials());
  auto stub = v1::MatrixService::NewStub(channel);
  const int64_t rows = 256, cols = 3072;  // no row padding
  const std::string src = Source(rows, cols, DType::kF32, 8);
  for (int round = 0; round < 3; ++round) {
    grpc::ClientContext ctx;
    v1::UploadMatrixResponse resp;
    auto w = stub->UploadMatrix(&ctx, &resp);
    v1::UploadMatrixRequest req;
    v1::MatrixHeader* h = req.mutable_header();
    h->set_name("c");
    h->set_rows(rows);
    h->set_cols(cols);
    h->set_source_dtype(v1::DTYPE_F32);
    ASSERT_TRUE(w->Write(req));
    req.set_data(src.substr(0, static_cast<size_t>(37 * cols * 4 + 4 * round + 2)));
    ASSERT_TRUE(w->Write(req));
    const int64_t want = rows * cols + rows * 4 + cols * 4;  // codes, row scales, one row
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (budget->used() != want && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    EXPECT_EQ(budget->used(), want);
    ctx.TryCancel();
    EXPECT_EQ(w->Finish().error_code(), grpc::StatusCode::CANCELLED);
    while (budget->used() != 0 && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    EXPECT_EQ(budget->used(), 0) << round;
    EXPECT_FALSE(t->engine->matrix_store()->Get("c").ok());
  }
}

TEST_F(UploadStreamTest, ShardedBackendStreamsRowsToEachDevice) {
  // Two CPU devices of 72000 bytes: a 300 x 256 ROW matrix (78000 bytes) is
  // row-sharded across them (256 + 44 rows); its codes equal the whole
  // quantization.
  std::vector<std::unique_ptr<Backend>> devices;
  devices.push_back(std::make_unique<CpuBackend>(1));
  devices.push_back(std::make_unique<CpuBackend>(1));
  ShardedBackendOptions o;
  o.device_ids = {0, 1};
  o.device_budget_bytes = 72000;
  auto sharded = ShardedBackend::Create(std::move(devices), o);
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  Make(int64_t{1} << 20, std::move(*sharded));
  const int64_t rows = 300, cols = 256;
  const std::string src = Source(rows, cols, DType::kF16, 9);
  auto up = service_->BeginUpload(Header("s", rows, cols, DType::kF16, ScaleMode::kRow,
                                         Fp8Format::kE4M3));
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_TRUE((*up)->streamed());
  for (size_t at = 0; at < src.size(); at += 3001) {
    ASSERT_TRUE((*up)->AddData(std::string_view(src).substr(at, 3001)).ok());
  }
  auto info = (*up)->Finish();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->placement.kind, Placement::kSharded);
  ExpectWholeQuantization("s", src, DType::kF16);
}

// The resident set size, in bytes.
int64_t RssBytes() {
  std::ifstream f("/proc/self/statm");
  int64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

// The kernel's exact peak RSS since the last ResetPeakRss (VmHWM), or -1.
int64_t PeakRssBytes() {
  std::ifstream f("/proc/self/status");
  std::string key;
  while (f >> key) {
    if (key == "VmHWM:") {
      int64_t kib = -1;
      f >> kib;
      return kib < 0 ? -1 : kib * 1024;
    }
  }
  return -1;
}

// Sets VmHWM to the current RSS; false where the kernel does not allow it.
bool ResetPeakRss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return f.good();
}

using testing::kSanitized;

TEST(UploadStreamMemory, LargeF32UploadPeaksWithinResidentPlus64MiB) {
  // 8192 x 8192 F32 through the real server (CPU backend) and the SDK: 256
  // MiB of source, 64 MiB resident. The source is made first; what the
  // upload adds on both sides of the wire (the client's chunk messages,
  // gRPC's buffers, the server's staging and the matrix) at its peak
  // (VmHWM, reset before; sampled every millisecond where it cannot be
  // reset) must stay within the resident size plus 64 MiB, plus 32 MiB for
  // the messages gRPC holds in flight on both sides (measured here: +81 to
  // +114 MiB in all, of which the server's staging is one 32 KiB row); a
  // TENSOR upload of the same source, which stages it whole, shows 200 MiB
  // more than its resident size.
  if (kSanitized) {
    GTEST_SKIP() << "sanitizer builds keep freed memory in quarantine: RSS says nothing here";
  }
  auto t = testing::StartTestServer();
  ASSERT_TRUE(t.ok()) << t.status();
  ClientOptions co;
  co.target = t->address();
  auto client = Client::Connect(co);
  ASSERT_TRUE(client.ok()) << client.status();
  const int64_t n = 8192;
  std::vector<float> w(static_cast<size_t>(n * n));
  std::mt19937 rng(3);
  std::normal_distribution<float> dist;
  for (float& v : w) v = dist(rng);
  // The RSS the upload of `w` as `name` adds at its peak, and its resident size.
  auto measure = [&](const std::string& name, v1::ScaleMode mode, int64_t* resident) {
    const bool exact = ResetPeakRss();
    const int64_t before = RssBytes();
    std::atomic<bool> done{false};
    std::atomic<int64_t> peak{before};
    std::thread sampler([&] {
      while (!done.load()) {
        const int64_t now = RssBytes();
        if (now > peak.load()) peak = now;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
    auto info = (*client)->UploadMatrix({.name = name, .scale_mode = mode},
                                        TensorRef::F32(w.data(), {n, n}));
    done = true;
    sampler.join();
    // The sampled peak, or the kernel's own where it can be reset (it sees
    // a peak shorter than the sampling interval too).
    if (const int64_t hwm = exact ? PeakRssBytes() : -1; hwm > peak.load()) peak = hwm;
    EXPECT_TRUE(info.ok()) << info.status();
    *resident = info.ok() ? info->resident_bytes() : 0;
    std::cout << "8192x8192 F32 upload (" << v1::ScaleMode_Name(mode) << "): RSS before "
              << (before >> 20) << " MiB, peak +" << ((peak.load() - before) >> 20)
              << " MiB" << (exact ? " (VmHWM)" : " (sampled)") << ", resident "
              << (*resident >> 20) << " MiB\n";
    return peak.load() - before;
  };
  int64_t resident = 0;
  const int64_t streamed = measure("big", v1::SCALE_MODE_ROW, &resident);
  constexpr int64_t kGrpcBuffers = int64_t{32} << 20;
  EXPECT_LE(streamed, resident + (int64_t{64} << 20) + kGrpcBuffers);
  // The contrast: TENSOR stages the whole 256 MiB source, and the same
  // measurement sees it.
  int64_t tensor_resident = 0;
  const int64_t staged = measure("big_tensor", v1::SCALE_MODE_TENSOR, &tensor_resident);
  EXPECT_GE(staged, tensor_resident + (int64_t{200} << 20));
}

}  // namespace
}  // namespace plume::core
