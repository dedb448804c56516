// The CUDA backend through the Backend interface, against the CPU backend and
// the FP64 reference: quantize on the device, packed uploads, NaN codes,
// streamed uploads through the pinned buffers, ranged reads of packed rows
// and the store file written from them, concurrent GEMVs on several
// streams, GEMVs finished by the completion thread, BLOCK128X128
// checkpoints, device memory, bad options.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <thread>
#include <vector>

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "plume/cuda/gemv.h"
#include "plume/kernels/fp8.h"
#include "plume/kernels/half.h"

#include "server/backends/cpu/cpu_backend.h"
#include "server/backends/cuda/cuda_backend.h"
#include "server/core/durable_store.h"
#include "server/core/packed_matrix.h"
#include "tests/common/gemv_reference.h"

namespace plume::core {
namespace {

using plume::testing::ExpectedGemv;
using plume::testing::RandomNormal;

std::string ReadWhole(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::unique_ptr<CudaBackend> MakeCuda(const std::string& path = "") {
  CudaBackendOptions o;
  o.decode_path = path;
  auto b = CudaBackend::Create(o);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? std::move(*b) : nullptr;
}

// The packed codes and scales of two matrices of `shape` agree.
void ExpectSamePacked(CudaBackend& cuda, const BackendMatrix& a, const BackendMatrix& b,
                      const MatrixShape& shape, const std::string& what) {
  const size_t nw = size_t(shape.layout().total_words());
  const size_t ns = size_t(std::max<int64_t>(shape.num_scales(), 1));
  std::vector<uint32_t> w1(nw, 1), w2(nw, 2);
  std::vector<float> s1(ns, 1.0f), s2(ns, 2.0f);
  ASSERT_TRUE(cuda.ReadPacked(a, w1.data(), s1.data()).ok());
  ASSERT_TRUE(cuda.ReadPacked(b, w2.data(), s2.data()).ok());
  EXPECT_EQ(w1, w2) << what;
  if (shape.num_scales() > 0) EXPECT_EQ(s1, s2) << what;
}

std::vector<std::string> Paths() {
  CudaBackendOptions o;
  o.decode_path = "native";
  return CudaBackend::Create(o).ok() ? std::vector<std::string>{"native", "software"}
                                     : std::vector<std::string>{"software"};
}

TEST(CudaBackend, QuantizeAndGemvMatchTheCpuBackend) {
  CpuBackend cpu(2);
  for (const std::string& path : Paths()) {
    auto cuda = MakeCuda(path);
    ASSERT_NE(cuda, nullptr);
    for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
      for (ScaleMode m : {ScaleMode::kTensor, ScaleMode::kRow, ScaleMode::kBlock128}) {
        const MatrixShape shape{300, 517, f, m, true};
        const auto w = RandomNormal(shape.rows * shape.cols, 3);
        auto gm = cuda->Quantize(shape, w.data(), DType::kF32);
        auto cm = cpu.Quantize(shape, w.data(), DType::kF32);
        ASSERT_TRUE(gm.ok()) << gm.status();
        ASSERT_TRUE(cm.ok()) << cm.status();
        for (int64_t batch : {1, 5, 40}) {
          const auto x = RandomNormal(batch * shape.cols, 4);
          std::vector<float> yg(size_t(batch * shape.rows), NAN), yc(yg.size(), NAN);
          GemvArgs a{x.data(), DType::kF32, 1.0f, batch, yg.data(), DType::kF32};
          ASSERT_TRUE(cuda->Gemv(**gm, a).ok());
          a.y = yc.data();
          ASSERT_TRUE(cpu.Gemv(**cm, a).ok());
          const ExpectedGemv want(w, shape.rows, shape.cols, f, m);
          EXPECT_LE(want.RelErr(x, batch, yg), 1e-5) << path << " " << ScaleModeName(m);
          EXPECT_LE(want.RelErr(x, batch, yc), 1e-5);
        }
      }
    }
  }
}

TEST(CudaBackend, Block128x128CheckpointsServeEveryPath) {
  // A 128x128-block-scaled matrix, as FP8 checkpoints ship it, uploaded
  // pre-packed the way the core does (FromPackedAsUploaded expands the
  // scales to BLOCK128), on both decode paths and ragged shapes: GEMV within
  // 1e-5 of FP64 over the dequantized codes, and the codes and 128x128
  // scales read back exactly.
  for (const std::string& path : Paths()) {
    auto cuda = MakeCuda(path);
    ASSERT_NE(cuda, nullptr);
    for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
      for (auto [rows, cols] : {std::pair<int64_t, int64_t>{300, 517}, {1000, 3001}, {256, 8192}}) {
        const MatrixShape shape{rows, cols, f, ScaleMode::kBlock128x128, true};
        const auto w = RandomNormal(rows * cols, 31);
        std::vector<uint32_t> words(size_t(shape.layout().total_words()));
        std::vector<float> tiles(size_t(shape.num_scales()));
        ref::QuantizePack(w.data(), DType::kF32, rows, cols, {f, ScaleMode::kBlock128x128, true},
                          words.data(), tiles.data());
        auto m = FromPackedAsUploaded(cuda.get(), shape, words.data(), tiles.data());
        ASSERT_TRUE(m.ok()) << m.status();
        const ExpectedGemv want(w, rows, cols, f, ScaleMode::kBlock128x128);
        for (int64_t batch : {1, 16, 40}) {
          const auto x = RandomNormal(batch * cols, 32);
          std::vector<float> y(size_t(batch * rows), NAN);
          ASSERT_TRUE(cuda->Gemv(**m, {x.data(), DType::kF32, 1.0f, batch, y.data(), DType::kF32}).ok());
          EXPECT_LE(want.RelErr(x, batch, y), 1e-5)
              << path << " " << (f == Fp8Format::kE4M3 ? "e4m3" : "e5m2") << " " << rows << "x" << cols << " b" << batch;
        }
        std::vector<uint32_t> got_words(words.size(), 0);
        std::vector<float> got_tiles(tiles.size(), 0.0f);
        ASSERT_TRUE(ReadPackedAsUploaded(cuda.get(), **m, shape, got_words.data(), got_tiles.data()).ok());
        EXPECT_EQ(got_words, words);
        EXPECT_EQ(got_tiles, tiles);
      }
    }
  }
}

TEST(CudaBackend, PackedUploadWithNanCodes) {
  auto cuda = MakeCuda("software");  // the path that needs the NaN-row fix
  ASSERT_NE(cuda, nullptr);
  const MatrixShape shape{20, 64, Fp8Format::kE4M3, ScaleMode::kRow, true};
  std::vector<uint32_t> words(size_t(shape.layout().total_words()), 0x38383838u);  // all 1.0
  words[size_t(7 * shape.layout().words_per_row() + 2)] = 0x387f3838u;            // a NaN in row 7
  std::vector<float> scales(size_t(shape.rows), 0.5f);
  auto m = cuda->FromPacked(shape, words.data(), scales.data());
  ASSERT_TRUE(m.ok()) << m.status();
  const auto x = RandomNormal(shape.cols, 5);
  double sum = 0;
  for (float v : x) sum += v;
  std::vector<float> y(size_t(shape.rows), 0.0f);
  ASSERT_TRUE(cuda->Gemv(**m, {x.data(), DType::kF32, 1.0f, 1, y.data(), DType::kF32}).ok());
  for (int64_t r = 0; r < shape.rows; ++r) {
    if (r == 7) {
      EXPECT_TRUE(std::isnan(y[size_t(r)]));
    } else {
      EXPECT_NEAR(y[size_t(r)], 0.5 * sum, 1e-4 * std::abs(sum) + 1e-5) << r;
    }
  }
}

TEST(CudaBackend, StreamedRowsGiveTheCodesOfTheWholeQuantization) {
  // Rows in uneven groups (1 row up to more than the 16 MiB device window
  // would hold for a small matrix: here all at once) through
  // BeginRowQuantize against Quantize over the whole source: the same codes
  // and scales, bit for bit; a NaN source value lands in its row's flags, so
  // the software path's GEMV gives NaN for that row only.
  auto cuda = MakeCuda("software");
  ASSERT_NE(cuda, nullptr);
  std::mt19937 rng(11);
  for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
    for (ScaleMode m : {ScaleMode::kNone, ScaleMode::kRow, ScaleMode::kBlock128}) {
      const MatrixShape shape{301, 517, f, m, true};
      auto w = RandomNormal(shape.rows * shape.cols, 21);
      w[size_t(123 * shape.cols + 45)] = NAN;
      auto whole = cuda->Quantize(shape, w.data(), DType::kF32);
      ASSERT_TRUE(whole.ok()) << whole.status();
      auto q = cuda->BeginRowQuantize(shape, DType::kF32);
      ASSERT_TRUE(q.ok()) << q.status();
      ASSERT_NE(*q, nullptr);
      for (int64_t r = 0; r < shape.rows;) {
        const int64_t n = std::min<int64_t>(shape.rows - r, 1 + int64_t(rng() % 70));
        ASSERT_TRUE((*q)->AddRows(w.data() + r * shape.cols, n).ok());
        r += n;
      }
      auto streamed = (*q)->Finish();
      ASSERT_TRUE(streamed.ok()) << streamed.status();
      ExpectSamePacked(*cuda, **whole, **streamed, shape, ScaleModeName(m));
      const auto x = RandomNormal(shape.cols, 22);
      std::vector<float> y1(size_t(shape.rows)), y2(size_t(shape.rows));
      ASSERT_TRUE(cuda->Gemv(**whole, {x.data(), DType::kF32, 1.0f, 1, y1.data(), DType::kF32}).ok());
      ASSERT_TRUE(cuda->Gemv(**streamed, {x.data(), DType::kF32, 1.0f, 1, y2.data(), DType::kF32}).ok());
      for (int64_t r = 0; r < shape.rows; ++r) {
        if (std::isnan(y1[size_t(r)])) {
          EXPECT_TRUE(std::isnan(y2[size_t(r)])) << r;
        } else {
          EXPECT_EQ(y1[size_t(r)], y2[size_t(r)]) << r;
        }
      }
    }
  }
  // TENSOR needs the whole source: no row quantizer.
  auto none = cuda->BeginRowQuantize({16, 16, Fp8Format::kE4M3, ScaleMode::kTensor, true},
                                     DType::kF32);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, nullptr);
}

TEST(CudaBackend, StreamedRowsThroughSmallPinnedBuffers) {
  // Pinned buffers of 5 rows each (upload_stage_bytes = 10 rows): groups of
  // 1 to 13 rows fill part of a buffer, fill it exactly, or span both, so
  // the buffers take turns while earlier rows are still being copied. F32,
  // F16 and BF16 sources, ragged columns; codes and scales equal Quantize's
  // over the whole source, bit for bit, and the pinned bytes are reported
  // for the upload's budget.
  std::mt19937 rng(12);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const int64_t cols = 389;
    const int64_t row_bytes = cols * DTypeSize(dtype);
    CudaBackendOptions o;
    o.upload_stage_bytes = 10 * row_bytes + 7;
    auto made = CudaBackend::Create(o);
    ASSERT_TRUE(made.ok()) << made.status();
    CudaBackend& cuda = **made;
    for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
      for (ScaleMode m : {ScaleMode::kNone, ScaleMode::kRow, ScaleMode::kBlock128}) {
        const MatrixShape shape{203, cols, f, m, true};
        auto w = RandomNormal(shape.rows * cols, 31);
        for (int64_t c = 0; c < cols; ++c) w[size_t(17 * cols + c)] *= 300.0f;  // a row apart
        std::vector<uint16_t> half(w.size());
        for (size_t i = 0; i < w.size(); ++i) {
          uint32_t u;
          std::memcpy(&u, &w[i], 4);
          half[i] = dtype == DType::kBF16 ? uint16_t(u >> 16) : FloatToHalfBits(w[i]);
        }
        const char* src = dtype == DType::kF32 ? reinterpret_cast<const char*>(w.data())
                                               : reinterpret_cast<const char*>(half.data());
        auto whole = cuda.Quantize(shape, src, dtype);
        ASSERT_TRUE(whole.ok()) << whole.status();
        auto q = cuda.BeginRowQuantize(shape, dtype);
        ASSERT_TRUE(q.ok()) << q.status();
        ASSERT_NE(*q, nullptr);
        EXPECT_EQ((*q)->host_staging_bytes(), 10 * row_bytes);
        // The caller's rows are reused once AddRows returns: scribble on
        // them, as the next network message would.
        std::vector<char> chunk;
        for (int64_t r = 0; r < shape.rows;) {
          const int64_t n = std::min<int64_t>(shape.rows - r, 1 + int64_t(rng() % 13));
          chunk.assign(src + r * row_bytes, src + (r + n) * row_bytes);
          ASSERT_TRUE((*q)->AddRows(chunk.data(), n).ok());
          std::fill(chunk.begin(), chunk.end(), char(0x7f));
          r += n;
        }
        auto streamed = (*q)->Finish();
        ASSERT_TRUE(streamed.ok()) << streamed.status();
        ExpectSamePacked(cuda, **whole, **streamed, shape,
                         std::string(DTypeName(dtype)) + " " + ScaleModeName(m));
      }
    }
    // Too few rows, then more rows than the matrix has: refused, no crash.
    const MatrixShape shape{8, cols, Fp8Format::kE4M3, ScaleMode::kRow, true};
    auto q = cuda.BeginRowQuantize(shape, dtype);
    ASSERT_TRUE(q.ok()) << q.status();
    std::vector<char> rows(size_t(9 * row_bytes), 0);
    ASSERT_TRUE((*q)->AddRows(rows.data(), 3).ok());
    EXPECT_EQ((*q)->Finish().status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ((*q)->AddRows(rows.data(), 6).code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(CudaBackend, ReadPackedRowsReturnsExactlyTheRowsWordsAndScales) {
  // Packed matrices made on the host (every resident scale mode, and
  // BLOCK128X128 held as BLOCK128; both formats; ragged shapes), read back a
  // band of rows at a time into poisoned pageable memory and into a pinned
  // buffer of AllocateHostBuffer: exactly those rows' words and the scales
  // they carry, nothing written past them; bands out of range are refused.
  auto cuda = MakeCuda();
  ASSERT_NE(cuda, nullptr);
  for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
    for (ScaleMode mode : {ScaleMode::kNone, ScaleMode::kTensor, ScaleMode::kRow,
                           ScaleMode::kBlock128, ScaleMode::kBlock128x128}) {
      for (auto [rows, cols] : {std::pair<int64_t, int64_t>{300, 517}, {129, 128}, {1, 17}}) {
        const MatrixShape shape{rows, cols, f, mode, true};
        const MatrixShape held = ResidentShape(shape);
        const auto w = RandomNormal(rows * cols, 41);
        std::vector<uint32_t> words(size_t(shape.layout().total_words()));
        std::vector<float> scales(size_t(std::max<int64_t>(shape.num_scales(), 1)));
        ref::QuantizePack(w.data(), DType::kF32, rows, cols, {f, mode, true}, words.data(),
                          scales.data());
        // The scales as the backend holds them (BLOCK128X128: each row its band's).
        std::vector<float> held_scales(size_t(std::max<int64_t>(held.num_scales(), 1)));
        if (mode == ScaleMode::kBlock128x128) {
          ExpandBlockScales(rows, cols, scales.data(), held_scales.data());
        } else {
          std::copy(scales.begin(), scales.begin() + std::max<int64_t>(shape.num_scales(), 0),
                    held_scales.begin());
        }
        auto m = FromPackedAsUploaded(cuda.get(), shape, words.data(), scales.data());
        ASSERT_TRUE(m.ok()) << m.status();
        const int64_t wpr = shape.layout().words_per_row();
        const int64_t most_scales = ScalesOfRowsCount(held.scale_mode, cols, rows);
        auto pinned = cuda->AllocateHostBuffer(size_t((rows * wpr + most_scales + 8) * 4));
        ASSERT_TRUE(pinned.ok()) << pinned.status();
        std::vector<std::pair<int64_t, int64_t>> bands = {{0, 1}, {0, rows}, {rows - 1, 1}};
        if (rows > 200) bands.insert(bands.end(), {{7, 50}, {128, 128}, {13, 200}, {255, 45}});
        for (auto [row0, n] : bands) {
          const std::string what = std::string(ScaleModeName(mode)) + " " + std::to_string(rows) +
                                   "x" + std::to_string(cols) + " rows " + std::to_string(row0) +
                                   "+" + std::to_string(n);
          const int64_t ns = ScalesOfRowsCount(held.scale_mode, cols, n);
          const int64_t s0 = ScalesOfRowsStart(held.scale_mode, cols, row0);
          const std::vector<uint32_t> want_words(words.begin() + row0 * wpr,
                                                 words.begin() + (row0 + n) * wpr);
          const std::vector<float> want_scales(held_scales.begin() + s0,
                                               held_scales.begin() + s0 + ns);
          // Pageable memory, one poisoned word and scale past the band.
          std::vector<uint32_t> got_words(size_t(n * wpr + 1), 0xA5A5A5A5u);
          std::vector<float> got_scales(size_t(ns + 1), -7.0f);
          ASSERT_TRUE(cuda->ReadPackedRows(**m, row0, n, got_words.data(), got_scales.data()).ok()) << what;
          EXPECT_EQ(got_words.back(), 0xA5A5A5A5u) << what;
          EXPECT_EQ(got_scales.back(), -7.0f) << what;
          got_words.pop_back();
          got_scales.pop_back();
          EXPECT_EQ(got_words, want_words) << what;
          EXPECT_EQ(got_scales, want_scales) << what;
          // The pinned buffer: words, then the scales right after them.
          auto* pw = static_cast<uint32_t*>((*pinned)->data());
          std::fill(pw, pw + (rows * wpr + most_scales + 8), 0xA5A5A5A5u);
          auto* ps = reinterpret_cast<float*>(pw + n * wpr);
          ASSERT_TRUE(cuda->ReadPackedRows(**m, row0, n, pw, ps).ok()) << what;
          EXPECT_TRUE(std::equal(want_words.begin(), want_words.end(), pw)) << what;
          EXPECT_TRUE(std::equal(want_scales.begin(), want_scales.end(), ps)) << what;
          EXPECT_EQ(pw[n * wpr + ns], 0xA5A5A5A5u) << what;
        }
        for (auto [row0, n] : {std::pair<int64_t, int64_t>{0, 0}, {-1, 1}, {rows, 1}, {0, rows + 1}}) {
          EXPECT_EQ(cuda->ReadPackedRows(**m, row0, n, words.data(), scales.data()).code(),
                    absl::StatusCode::kOutOfRange)
              << row0 << "+" << n;
        }
      }
    }
  }
}

TEST(CudaBackend, StoreFileFromDeviceSlicesIsTheWholeReadBacksFile) {
  // A matrix quantized on the device, written by the durable store from
  // slices read off the device (4 KiB, so a few rows each, and one row),
  // in every mode the device quantizes (BLOCK128X128 from a pre-packed
  // upload): the file SaveMatrix writes from a whole read-back, byte for
  // byte.
  auto cuda = MakeCuda();
  ASSERT_NE(cuda, nullptr);
  const std::string dir = ::testing::TempDir() + "plume_gpu_slices_" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  auto whole = DirectoryStore::Open(dir + "-whole");
  auto sliced = DirectoryStore::Open(dir + "-sliced");
  ASSERT_TRUE(whole.ok() && sliced.ok());
  for (ScaleMode mode : {ScaleMode::kNone, ScaleMode::kTensor, ScaleMode::kRow, ScaleMode::kBlock128,
                         ScaleMode::kBlock128x128}) {
    const MatrixShape shape{301, 517, Fp8Format::kE4M3, mode, true};
    const auto w = RandomNormal(shape.rows * shape.cols, 51);
    absl::StatusOr<std::unique_ptr<BackendMatrix>> m;
    std::vector<uint32_t> words(size_t(shape.layout().total_words()));
    std::vector<float> scales(size_t(std::max<int64_t>(shape.num_scales(), 1)));
    if (mode == ScaleMode::kBlock128x128) {
      ref::QuantizePack(w.data(), DType::kF32, shape.rows, shape.cols, {shape.format, mode, true},
                        words.data(), scales.data());
      m = FromPackedAsUploaded(cuda.get(), shape, words.data(), scales.data());
    } else {
      m = cuda->Quantize(shape, w.data(), DType::kF32);
    }
    ASSERT_TRUE(m.ok()) << m.status();
    ASSERT_TRUE(ReadPackedAsUploaded(cuda.get(), **m, shape, words.data(), scales.data()).ok());
    const StoredMatrixMeta meta{std::string("m") + ScaleModeName(mode), shape, DType::kF32,
                                1700000000000, "hash"};
    ASSERT_TRUE((*whole)->SaveMatrix(meta, words.data(), scales.data()).ok());
    const std::string want = ReadWhole(dir + "-whole/" + meta.name + ".pmx");
    for (int64_t slice : {int64_t{1}, int64_t{4096}}) {
      auto source = BackendSliceSource::Create(cuda.get(), **m, shape, slice);
      ASSERT_TRUE(source.ok()) << source.status();
      ASSERT_TRUE((*sliced)->SaveMatrixFrom(meta, **source).ok());
      EXPECT_EQ(ReadWhole(dir + "-sliced/" + meta.name + ".pmx"), want)
          << ScaleModeName(mode) << " slice " << slice;
    }
  }
  std::filesystem::remove_all(dir + "-whole");
  std::filesystem::remove_all(dir + "-sliced");
}

TEST(CudaBackend, ConcurrentGemvsOnSeveralStreams) {
  auto cuda = MakeCuda();
  ASSERT_NE(cuda, nullptr);
  const MatrixShape shape{1000, 2048, Fp8Format::kE4M3, ScaleMode::kRow, true};
  const auto w = RandomNormal(shape.rows * shape.cols, 8);
  auto m = cuda->Quantize(shape, w.data(), DType::kF32);
  ASSERT_TRUE(m.ok());
  const ExpectedGemv want(w, shape.rows, shape.cols, shape.format, shape.scale_mode);
  std::vector<std::thread> threads;
  std::vector<double> worst(8, 0.0);
  std::vector<int> failures(8, 0);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        const int64_t batch = 1 + (t + i) % 9;
        const auto x = RandomNormal(batch * shape.cols, uint32_t(100 * t + i));
        std::vector<float> y(size_t(batch * shape.rows), NAN);
        if (!cuda->Gemv(**m, {x.data(), DType::kF32, 1.0f, batch, y.data(), DType::kF32}).ok()) {
          ++failures[size_t(t)];
          continue;
        }
        worst[size_t(t)] = std::max(worst[size_t(t)], want.RelErr(x, batch, y));
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 8; ++t) {
    EXPECT_EQ(failures[size_t(t)], 0);
    EXPECT_LE(worst[size_t(t)], 1e-5);
  }
}

// GemvAsync returns once the call is enqueued; the completion thread copies
// staged results out, gives the lane back and calls back, with the device
// time. More calls than lanes from one thread, with heap and pinned
// vectors; destroying the backend finishes what is still in flight.
TEST(CudaBackend, GemvAsyncCallsBackFromTheCompletionThread) {
  auto cuda = MakeCuda();
  ASSERT_NE(cuda, nullptr);
  const MatrixShape shape{1000, 2048, Fp8Format::kE4M3, ScaleMode::kRow, true};
  const auto w = RandomNormal(shape.rows * shape.cols, 9);
  auto m = cuda->Quantize(shape, w.data(), DType::kF32);
  ASSERT_TRUE(m.ok()) << m.status();
  const ExpectedGemv want(w, shape.rows, shape.cols, shape.format, shape.scale_mode);
  constexpr int kCalls = 40;  // ten times the default lanes
  struct Result {
    std::vector<float> x, y;
    std::unique_ptr<HostBuffer> xp, yp;  // pinned, for every other call
    absl::Status status = absl::UnknownError("not called back");
    double device_seconds = -2;
    std::thread::id thread;
    int calls = 0;
  };
  std::vector<Result> r(kCalls);
  absl::Mutex mu;
  int finished = 0;
  const std::thread::id caller = std::this_thread::get_id();
  auto start = [&](CudaBackend& b, int i) {
    Result& c = r[size_t(i)];
    const int64_t batch = 1 + i % 7;
    c.x = RandomNormal(batch * shape.cols, uint32_t(500 + i));
    c.y.assign(size_t(batch * shape.rows), NAN);
    const float* x = c.x.data();
    float* y = c.y.data();
    if (i % 2 == 1) {
      auto xp = b.AllocateHostBuffer(c.x.size() * 4);
      auto yp = b.AllocateHostBuffer(c.y.size() * 4);
      ASSERT_TRUE(xp.ok() && yp.ok());
      c.xp = std::move(*xp);
      c.yp = std::move(*yp);
      std::memcpy(c.xp->data(), c.x.data(), c.x.size() * 4);
      x = static_cast<const float*>(c.xp->data());
      y = static_cast<float*>(c.yp->data());
    }
    b.GemvAsync(**m, {x, DType::kF32, 1.0f, batch, y, DType::kF32},
                [&, i](const absl::Status& s, double device) {
                  Result& d = r[size_t(i)];
                  absl::MutexLock lock(&mu);
                  d.status = s;
                  d.device_seconds = device;
                  d.thread = std::this_thread::get_id();
                  ++d.calls;
                  ++finished;
                });
  };
  for (int i = 0; i < kCalls; ++i) start(*cuda, i);
  {
    absl::MutexLock lock(&mu);
    mu.Await(absl::Condition(+[](int* n) { return *n == kCalls; }, &finished));
  }
  for (int i = 0; i < kCalls; ++i) {
    Result& c = r[size_t(i)];
    ASSERT_TRUE(c.status.ok()) << i << ": " << c.status;
    EXPECT_EQ(c.calls, 1);
    EXPECT_NE(c.thread, caller) << "call " << i << " was finished on the caller's thread";
    EXPECT_GT(c.device_seconds, 0) << i;
    if (c.yp != nullptr) std::memcpy(c.y.data(), c.yp->data(), c.y.size() * 4);
    EXPECT_LE(want.RelErr(c.x, 1 + i % 7, c.y), 1e-5) << i;
  }
  // In flight at destruction: every call still finishes, once.
  finished = 0;
  for (int i = 0; i < 8; ++i) {
    r[size_t(i)].calls = 0;
    start(*cuda, i);
  }
  cuda.reset();
  EXPECT_EQ(finished, 8);
  for (int i = 0; i < 8; ++i) {
    Result& c = r[size_t(i)];
    EXPECT_EQ(c.calls, 1) << i;
    EXPECT_TRUE(c.status.ok()) << i << ": " << c.status;
    if (c.yp != nullptr) std::memcpy(c.y.data(), c.yp->data(), c.y.size() * 4);
    EXPECT_LE(want.RelErr(c.x, 1 + i % 7, c.y), 1e-5) << i;
  }
}

// Results for a pinned y (up to 2 MiB) are stored by the kernel straight
// into it (no copy-out): every element written, the same bits as the copied-out results
// of a heap y, for every kernel family the device has, F32 / F16 / BF16
// results, F32 and F16 activations, batches across the buckets. FP8
// activations (which cuBLASLt may take) and backends with the option off
// copy out as before.
TEST(CudaBackend, KernelsStoreResultsStraightIntoPinnedBuffers) {
  cudaDeviceProp prop{};
  ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  std::vector<std::string> kernels = {"", "mma"};
  if (prop.major == 9 && prop.minor == 0) kernels.push_back("wgmma");
  const MatrixShape shape{1000, 2048, Fp8Format::kE4M3, ScaleMode::kRow, true};
  const auto w = RandomNormal(shape.rows * shape.cols, 31);
  const ExpectedGemv want(w, shape.rows, shape.cols, shape.format, shape.scale_mode);
  for (const std::string& kernel : kernels) {
    for (bool direct : {true, false}) {
      CudaBackendOptions o;
      o.gemv_kernel = kernel;
      o.kernels_write_pinned_results = direct;
      auto made = CudaBackend::Create(o);
      ASSERT_TRUE(made.ok()) << made.status();
      CudaBackend& cuda = **made;
      auto m = cuda.Quantize(shape, w.data(), DType::kF32);
      ASSERT_TRUE(m.ok()) << m.status();
      for (const int64_t batch : {1, 5, 16, 64}) {
        for (const DType xt : {DType::kF32, DType::kF16}) {
          for (const DType yt : {DType::kF32, DType::kF16, DType::kBF16}) {
            const std::string what = "kernel '" + kernel + "' direct " + std::to_string(direct) +
                                     " batch " + std::to_string(batch) + " x " +
                                     std::to_string(int(xt)) + " y " + std::to_string(int(yt));
            const auto xf = RandomNormal(batch * shape.cols, uint32_t(700 + batch));
            std::vector<uint8_t> x(xf.size() * size_t(DTypeSize(xt)));
            if (xt == DType::kF32) {
              std::memcpy(x.data(), xf.data(), x.size());
            } else {
              for (size_t i = 0; i < xf.size(); ++i) {
                const uint16_t h = FloatToHalfBits(xf[i]);
                std::memcpy(x.data() + 2 * i, &h, 2);
              }
            }
            const size_t y_bytes = size_t(batch * shape.rows * DTypeSize(yt));
            auto xp = cuda.AllocateHostBuffer(x.size());
            auto yp = cuda.AllocateHostBuffer(y_bytes);
            ASSERT_TRUE(xp.ok() && yp.ok());
            std::memcpy((*xp)->data(), x.data(), x.size());
            std::memset((*yp)->data(), 0xff, y_bytes);  // NaN in every dtype
            std::vector<uint8_t> heap_y(y_bytes, 0xff);
            const int64_t before = cuda.kernel_written_results();
            ASSERT_TRUE(cuda.Gemv(**m, {(*xp)->data(), xt, 1.0f, batch, (*yp)->data(), yt}).ok()) << what;
            EXPECT_EQ(cuda.kernel_written_results(), before + (direct ? 1 : 0)) << what;
            ASSERT_TRUE(cuda.Gemv(**m, {x.data(), xt, 1.0f, batch, heap_y.data(), yt}).ok()) << what;
            EXPECT_EQ(cuda.kernel_written_results(), before + (direct ? 1 : 0)) << what << ": heap y";
            EXPECT_EQ(std::memcmp((*yp)->data(), heap_y.data(), y_bytes), 0) << what;
            if (xt == DType::kF32 && yt == DType::kF32) {
              std::vector<float> y(size_t(batch * shape.rows));
              std::memcpy(y.data(), (*yp)->data(), y_bytes);
              EXPECT_LE(want.RelErr(xf, batch, y), 1e-5) << what;
            }
          }
        }
      }
      // Over 2 MiB of results (64 x 9000 F32): copied out whatever the option.
      {
        const MatrixShape tall{9000, 256, Fp8Format::kE4M3, ScaleMode::kRow, true};
        const auto wt = RandomNormal(tall.rows * tall.cols, 32);
        auto mt = cuda.Quantize(tall, wt.data(), DType::kF32);
        ASSERT_TRUE(mt.ok()) << mt.status();
        const auto xf = RandomNormal(64 * tall.cols, 33);
        auto xp = cuda.AllocateHostBuffer(xf.size() * 4);
        auto yp = cuda.AllocateHostBuffer(size_t(64 * tall.rows * 4));
        ASSERT_TRUE(xp.ok() && yp.ok());
        std::memcpy((*xp)->data(), xf.data(), xf.size() * 4);
        const int64_t before = cuda.kernel_written_results();
        ASSERT_TRUE(cuda.Gemv(**mt, {(*xp)->data(), DType::kF32, 1.0f, 64, (*yp)->data(), DType::kF32}).ok());
        EXPECT_EQ(cuda.kernel_written_results(), before) << "kernel '" << kernel << "': 2.3 MB of results";
        std::vector<float> y(size_t(64 * tall.rows));
        std::memcpy(y.data(), (*yp)->data(), y.size() * 4);
        const ExpectedGemv want_tall(wt, tall.rows, tall.cols, tall.format, tall.scale_mode);
        EXPECT_LE(want_tall.RelErr(xf, 64, y), 1e-5) << "kernel '" << kernel << "'";
      }
      // FP8 activations: copied out whatever the option.
      std::vector<uint8_t> x8(size_t(4 * shape.cols), 0x38);  // E4M3 1.0
      auto xp = cuda.AllocateHostBuffer(x8.size());
      auto yp = cuda.AllocateHostBuffer(size_t(4 * shape.rows * 4));
      ASSERT_TRUE(xp.ok() && yp.ok());
      std::memcpy((*xp)->data(), x8.data(), x8.size());
      const int64_t before = cuda.kernel_written_results();
      const absl::Status s = cuda.Gemv(**m, {(*xp)->data(), DType::kE4M3, 1.0f, 4, (*yp)->data(), DType::kF32});
      ASSERT_TRUE(s.ok()) << s;
      EXPECT_EQ(cuda.kernel_written_results(), before) << "kernel '" << kernel << "': FP8 activations";
      std::vector<float> y8(size_t(4 * shape.rows));
      std::memcpy(y8.data(), (*yp)->data(), y8.size() * 4);
      EXPECT_LE(want.RelErr(std::vector<float>(x8.size(), 1.0f), 4, y8), 1e-3)  // W8A8's bound
          << "kernel '" << kernel << "': FP8 activations";
    }
  }
}

TEST(CudaBackend, ReportsDeviceMemoryAndBudget) {
  auto cuda = MakeCuda();
  ASSERT_NE(cuda, nullptr);
  DeviceMemory before;
  ASSERT_TRUE(cuda->device_memory(&before));
  EXPECT_GT(before.total, 0);
  EXPECT_GT(cuda->memory_capacity_bytes(), 0);
  EXPECT_LT(cuda->memory_capacity_bytes(), before.total);
  const MatrixShape shape{8192, 8192, Fp8Format::kE4M3, ScaleMode::kRow, true};
  std::vector<uint32_t> words(size_t(shape.layout().total_words()), 0x38383838u);
  std::vector<float> scales(size_t(shape.rows), 1.0f);
  auto m = cuda->FromPacked(shape, words.data(), scales.data());
  ASSERT_TRUE(m.ok());
  DeviceMemory after;
  ASSERT_TRUE(cuda->device_memory(&after));
  EXPECT_GE(after.used - before.used, 60 << 20);  // the 64 MiB matrix is in device memory
}

TEST(CudaBackend, BadOptionsAreRejected) {
  CudaBackendOptions o;
  o.device = 999;
  EXPECT_EQ(CudaBackend::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.device = 0;
  o.decode_path = "magic";
  EXPECT_EQ(CudaBackend::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.decode_path = "";
  o.lanes = 0;
  EXPECT_EQ(CudaBackend::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.lanes = 4;
  o.gemv_kernel = "tensor";
  EXPECT_EQ(CudaBackend::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

// The kernel choices MatrixInfo reports: every bucket and activation dtype,
// forced ones as forced, and kAuto's measured once a GEMV of that bucket ran.
TEST(CudaBackend, ReportsGemvKernelChoices) {
  cudaDeviceProp prop{};
  ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  const bool hopper = prop.major == 9 && prop.minor == 0;
  const MatrixShape shape{640, 1536, Fp8Format::kE4M3, ScaleMode::kRow, true};
  const auto w = RandomNormal(shape.rows * shape.cols, 21);
  for (std::string forced : {"", "mma"}) {
    CudaBackendOptions o;
    o.gemv_kernel = forced;
    auto cuda = CudaBackend::Create(o);
    ASSERT_TRUE(cuda.ok()) << cuda.status();
    auto m = (*cuda)->Quantize(shape, w.data(), DType::kF32);
    ASSERT_TRUE(m.ok()) << m.status();
    std::vector<GemvKernelChoice> before = (*cuda)->GemvKernels(**m);
    ASSERT_EQ(before.size(), 40u);  // 8 buckets x 5 dtypes
    for (const auto& c : before) {
      EXPECT_FALSE(c.measured);
      EXPECT_EQ(c.kernel, forced == "mma" || !hopper ? "mma" : "wgmma");
    }
    // A batch of 12 F32 vectors: bucket 16 of F32 is measured (kAuto on
    // sm_90) and the result is right whichever kernel won.
    const int64_t batch = 12;
    const auto x = RandomNormal(batch * shape.cols, 22);
    std::vector<float> y(size_t(batch * shape.rows), NAN);
    ASSERT_TRUE((*cuda)->Gemv(**m, {x.data(), DType::kF32, 1.0f, batch, y.data(), DType::kF32}).ok());
    CpuBackend cpu(2);
    auto cm = cpu.Quantize(shape, w.data(), DType::kF32);
    ASSERT_TRUE(cm.ok());
    std::vector<float> yc(y.size(), NAN);
    ASSERT_TRUE(cpu.Gemv(**cm, {x.data(), DType::kF32, 1.0f, batch, yc.data(), DType::kF32}).ok());
    double err = 0, norm = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      err += (double(y[i]) - yc[i]) * (double(y[i]) - yc[i]);
      norm += double(yc[i]) * yc[i];
    }
    EXPECT_LE(std::sqrt(err / norm), 1e-5);
    for (const auto& c : (*cuda)->GemvKernels(**m)) {
      const bool tuned = forced.empty() && hopper && c.x_dtype == DType::kF32 && c.max_batch == 16;
      EXPECT_EQ(c.measured, tuned) << c.max_batch << " " << DTypeName(c.x_dtype);
      if (tuned) EXPECT_TRUE(c.kernel == "mma" || c.kernel == "wgmma") << c.kernel;
    }
  }
}

// A forced cuBLASLt GEMV: accepted on sm_89 and later where the library
// opens (it is refused at startup where it does not), where MatrixInfo
// shows it for FP8 activations and "unavailable" for the others (whose
// GEMVs fail); refused on older GPUs.
TEST(CudaBackend, ForcedCublasLt) {
  cudaDeviceProp prop{};
  ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  CudaBackendOptions o;
  o.gemv_kernel = "cublaslt";
  auto cuda = CudaBackend::Create(o);
  if (prop.major * 10 + prop.minor < 89) {
    EXPECT_EQ(cuda.status().code(), absl::StatusCode::kFailedPrecondition);
    return;
  }
  if (!cuda::CublasLtLoadable()) {
    EXPECT_EQ(cuda.status().code(), absl::StatusCode::kFailedPrecondition) << cuda.status();
    return;
  }
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  const MatrixShape shape{256, 1024, Fp8Format::kE4M3, ScaleMode::kTensor, true};
  const auto w = RandomNormal(shape.rows * shape.cols, 31);
  auto m = (*cuda)->Quantize(shape, w.data(), DType::kF32);
  ASSERT_TRUE(m.ok()) << m.status();
  for (const auto& c : (*cuda)->GemvKernels(**m)) {
    EXPECT_EQ(c.kernel, IsFp8(c.x_dtype) ? "cublaslt" : "unavailable")
        << c.max_batch << " " << DTypeName(c.x_dtype);
    EXPECT_FALSE(c.measured);
  }
  const int64_t batch = 2;
  const std::vector<float> x = RandomNormal(batch * shape.cols, 32);
  std::vector<float> y(size_t(batch * shape.rows), NAN);
  EXPECT_FALSE((*cuda)->Gemv(**m, {x.data(), DType::kF32, 1.0f, batch, y.data(), DType::kF32}).ok());
  // E4M3 activations run, within W8A8's bound of FP64 over the codes.
  std::vector<uint8_t> x8(x.size());
  std::vector<float> xf(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    x8[i] = fp8::Encode(4.0f * x[i], Fp8Format::kE4M3, true);
    xf[i] = 0.25f * fp8::Decode(x8[i], Fp8Format::kE4M3);
  }
  ASSERT_TRUE((*cuda)->Gemv(**m, {x8.data(), DType::kE4M3, 0.25f, batch, y.data(), DType::kF32}).ok());
  const ExpectedGemv want(w, shape.rows, shape.cols, shape.format, shape.scale_mode);
  EXPECT_LE(want.RelErr(xf, batch, y), 1e-3);  // W8A8's bound (docs/api.md)
}

TEST(CudaBackend, OutOfDeviceMemoryIsResourceExhausted) {
  auto cuda = MakeCuda();
  ASSERT_NE(cuda, nullptr);
  // Rows x cols far beyond any GPU's memory: the allocation fails cleanly.
  const MatrixShape shape{int64_t{1} << 22, int64_t{1} << 20, Fp8Format::kE4M3, ScaleMode::kTensor, true};
  std::vector<uint32_t> words(1);
  std::vector<float> scales(1, 1.0f);
  EXPECT_EQ(cuda->FromPacked(shape, words.data(), scales.data()).status().code(),
            absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace plume::core
