// Streamed uploads (MatrixService::Upload): NONE, ROW and BLOCK128 sources
// are quantized as their rows arrive, in chunks of any size (rows and even
// single values split across chunks), into exactly the codes and scales of a
// whole-matrix quantization; TENSOR stages the whole source. Staging counts
// against the memory budget and goes back when an upload ends or is
// abandoned. And the host memory an upload of a large F32 matrix takes
// through the real server stays within the resident size plus 64 MiB.
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

#include "plume/client/client.h"
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

v1::MatrixHeader Header(const std::string& name, int64_t rows, int64_t cols, DType dtype,
                        ScaleMode mode, Fp8Format format) {
  v1::MatrixHeader h;
  h.set_name(name);
  h.set_rows(rows);
  h.set_cols(cols);
  h.set_source_dtype(static_cast<v1::DType>(dtype));
  h.set_scale_mode(static_cast<v1::ScaleMode>(mode));
  h.set_format(format == Fp8Format::kE4M3 ? v1::DTYPE_E4M3 : v1::DTYPE_E5M2);
  return h;
}

class UploadStreamTest : public ::testing::Test {
 protected:
  void Make(int64_t budget, std::unique_ptr<Backend> backend = nullptr) {
    backend_ = backend != nullptr ? std::move(backend) : std::make_unique<CpuBackend>(2);
    store_ = std::make_unique<MatrixStore>(budget, &metrics_);
    service_ = std::make_unique<MatrixService>(backend_.get(), store_.get(), &metrics_, Limits{});
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
  EXPECT_EQ(info->placement(), v1::PLACEMENT_SHARDED);
  auto m = store_->Get("s");
  ASSERT_TRUE(m.ok());
  const Packed want = WholeQuantization((*m)->shape, src, DType::kF16);
  Packed got;
  got.words.assign(want.words.size(), 0);
  got.scales.assign(want.scales.size(), 0.0f);
  ASSERT_TRUE(backend_->ReadPacked(*(*m)->data, got.words.data(), got.scales.data()).ok());
  EXPECT_EQ(got.words, want.words);
  EXPECT_EQ(got.scales, want.scales);
}

// The resident set size, in bytes.
int64_t RssBytes() {
  std::ifstream f("/proc/self/statm");
  int64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

using testing::kSanitized;

TEST(UploadStreamMemory, LargeF32UploadPeaksWithinResidentPlus64MiB) {
  // 8192 x 8192 F32 through the real server (CPU backend) and the SDK: 256
  // MiB of source, 64 MiB resident. The source is made first; what the
  // upload adds on both sides of the wire (the client's chunk messages,
  // gRPC's buffers, the server's staging and the matrix), sampled every
  // millisecond, must stay within the resident size plus 64 MiB; a TENSOR
  // upload of the same source, which stages it whole, shows 200 MiB more.
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
    EXPECT_TRUE(info.ok()) << info.status();
    *resident = info.ok() ? info->resident_bytes() : 0;
    std::cout << "8192x8192 F32 upload (" << v1::ScaleMode_Name(mode) << "): RSS before "
              << (before >> 20) << " MiB, peak +" << ((peak.load() - before) >> 20)
              << " MiB, resident " << (*resident >> 20) << " MiB\n";
    return peak.load() - before;
  };
  int64_t resident = 0;
  const int64_t streamed = measure("big", v1::SCALE_MODE_ROW, &resident);
  EXPECT_LE(streamed, resident + (int64_t{64} << 20));
  // The contrast: TENSOR stages the whole 256 MiB source, and the same
  // measurement sees it.
  int64_t tensor_resident = 0;
  const int64_t staged = measure("big_tensor", v1::SCALE_MODE_TENSOR, &tensor_resident);
  EXPECT_GE(staged, tensor_resident + (int64_t{200} << 20));
}

}  // namespace
}  // namespace plume::core
