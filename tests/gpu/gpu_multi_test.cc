// On the GPU: the CUDA backend's pinned (zero-copy) path against its
// staging path, bit for bit; and ShardedBackend over one CudaBackend per GPU
// (sharded and replicated placements) against the CPU backend, the FP64
// reference and one GPU, including many threads at once.
//
// With one GPU the sharded tests run two CudaBackends on device 0 and say so
// (the code paths are the same; only the concurrency across devices is not
// exercised). MultiGpu.ReportsTheDeviceCount says how many there are (at least one).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "plume/reference/api.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/backends/cuda/cuda_backend.h"
#include "server/backends/sharded/sharded_backend.h"
#include "tests/common/gemv_reference.h"

namespace plume::core {
namespace {

using plume::testing::ExpectedGemv;
using plume::testing::RandomNormal;

std::unique_ptr<CudaBackend> MakeCuda(int device) {
  CudaBackendOptions o;
  o.device = device;
  auto b = CudaBackend::Create(o);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? std::move(*b) : nullptr;
}

// One CudaBackend per GPU (two on device 0 when there is one GPU).
std::unique_ptr<ShardedBackend> MakeSharded() {
  const int n = CudaDeviceCount();
  std::vector<std::unique_ptr<Backend>> kids;
  std::vector<int> ids;
  if (n >= 2) {
    for (int d = 0; d < n; ++d) {
      kids.push_back(MakeCuda(d));
      ids.push_back(d);
    }
  } else {
    std::printf("NOTE: one GPU only: sharding over two CudaBackends on device 0 (no cross-device "
                "concurrency tested)\n");
    kids.push_back(MakeCuda(0));
    kids.push_back(MakeCuda(0));
    ids = {0, 0};
  }
  ShardedBackendOptions o;
  o.device_ids = ids;
  auto b = ShardedBackend::Create(std::move(kids), o);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? std::move(*b) : nullptr;
}

MatrixShape Shape(int64_t rows, int64_t cols, Fp8Format f, ScaleMode m, Placement p) {
  MatrixShape s{rows, cols, f, m, true};
  s.placement = p;
  return s;
}

// Values that F16 holds exactly, so the expected result needs no rounding.
std::vector<float> F16Exact(std::vector<float> v) {
  std::vector<uint16_t> h(v.size());
  ref::FromFloat(v.data(), static_cast<int64_t>(v.size()), DType::kF16, h.data());
  ref::ToFloat(h.data(), DType::kF16, 1.0f, static_cast<int64_t>(v.size()), v.data());
  return v;
}

// max |a - b| / max |b|; infinity for a NaN in a (a result not written).
double MaxRelDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) != std::isnan(b[i])) return INFINITY;
    diff = std::max(diff, std::fabs(double(a[i]) - double(b[i])));
    norm = std::max(norm, std::fabs(double(b[i])));
  }
  return norm > 0 ? diff / norm : INFINITY;
}

TEST(MultiGpu, ReportsTheDeviceCount) {
  const int n = CudaDeviceCount();
  std::printf("CUDA devices: %d\n", n);
  RecordProperty("cuda_devices", n);
  if (n < 2) {
    std::printf("NOTE: the sharded tests below ran two shards on ONE GPU; run on >= 2 GPUs for "
                "the multi-GPU check\n");
  }
  EXPECT_GE(n, 1);
}

TEST(CudaZeroCopy, PinnedBuffersMatchTheStagingPathBitForBit) {
  auto cuda = MakeCuda(0);
  ASSERT_NE(cuda, nullptr);
  const int64_t rows = 1000, cols = 2048 + 96;
  const auto w = RandomNormal(rows * cols, 61);
  for (ScaleMode mode : {ScaleMode::kTensor, ScaleMode::kRow, ScaleMode::kBlock128}) {
    auto m = cuda->Quantize(Shape(rows, cols, Fp8Format::kE4M3, mode, Placement::kAuto), w.data(), DType::kF32);
    ASSERT_TRUE(m.ok()) << m.status();
    for (DType xt : {DType::kF32, DType::kF16}) {
      for (int64_t batch : {1, 7, 16, 64}) {
        const int64_t x_bytes = batch * cols * DTypeSize(xt);
        const int64_t y_bytes = batch * rows * 4;
        const auto xf = RandomNormal(batch * cols, 62);
        std::vector<char> x(static_cast<size_t>(x_bytes));
        ref::FromFloat(xf.data(), batch * cols, xt, x.data());
        // Staging path: plain heap memory.
        std::vector<char> y_staged(static_cast<size_t>(y_bytes), '\x7f');
        GemvArgs a{x.data(), xt, 1.0f, batch, y_staged.data(), DType::kF32};
        ASSERT_TRUE(cuda->Gemv(**m, a).ok());
        // Pinned path: buffers from AllocateHostBuffer.
        auto px = cuda->AllocateHostBuffer(static_cast<size_t>(x_bytes));
        auto py = cuda->AllocateHostBuffer(static_cast<size_t>(y_bytes));
        ASSERT_TRUE(px.ok() && py.ok());
        std::memcpy((*px)->data(), x.data(), x.size());
        std::memset((*py)->data(), 0x7f, static_cast<size_t>(y_bytes));
        const int64_t before = cuda->zero_copy_gemvs();
        a.x = (*px)->data();
        a.y = (*py)->data();
        ASSERT_TRUE(cuda->Gemv(**m, a).ok());
        EXPECT_EQ(cuda->zero_copy_gemvs(), before + 1) << "the pinned path was not taken";
        EXPECT_EQ(std::memcmp((*py)->data(), y_staged.data(), static_cast<size_t>(y_bytes)), 0)
            << ScaleModeName(mode) << " " << DTypeName(xt) << " batch " << batch;
        // Pinned activations, heap results (one side direct).
        std::vector<char> y_mixed(static_cast<size_t>(y_bytes), '\x7f');
        a.y = y_mixed.data();
        ASSERT_TRUE(cuda->Gemv(**m, a).ok());
        EXPECT_EQ(y_mixed, y_staged);
        // Strided results (a row shard's way of writing), pinned and not.
        const int64_t stride = rows + 37;
        auto pys = cuda->AllocateHostBuffer(static_cast<size_t>(batch * stride * 4));
        ASSERT_TRUE(pys.ok());
        std::vector<float> ys_heap(static_cast<size_t>(batch * stride), -3.0f);
        std::fill_n(static_cast<float*>((*pys)->data()), batch * stride, -3.0f);
        a.y_stride = stride;
        a.y = ys_heap.data();
        ASSERT_TRUE(cuda->Gemv(**m, a).ok());
        a.y = (*pys)->data();
        ASSERT_TRUE(cuda->Gemv(**m, a).ok());
        EXPECT_EQ(std::memcmp((*pys)->data(), ys_heap.data(), ys_heap.size() * 4), 0);
        const auto* packed = reinterpret_cast<const float*>(y_staged.data());
        for (int64_t b = 0; b < batch; ++b) {
          ASSERT_EQ(std::memcmp(&ys_heap[size_t(b * stride)], packed + b * rows, size_t(rows) * 4), 0) << b;
          ASSERT_EQ(ys_heap[size_t(b * stride + rows)], -3.0f) << "wrote past its rows";
        }
      }
    }
  }
}

TEST(CudaZeroCopy, AttentionWithPinnedBuffersMatchesTheStagingPath) {
  auto cuda = MakeCuda(0);
  ASSERT_NE(cuda, nullptr);
  KvShape ks;
  ks.kv_heads = 2;
  ks.head_dim = 128;
  auto cache = cuda->CreateKv(ks);
  ASSERT_TRUE(cache.ok()) << cache.status();
  const int64_t tokens = 300;
  const auto k = RandomNormal(2 * tokens * 128, 91), v = RandomNormal(2 * tokens * 128, 92);
  ASSERT_TRUE(cuda->AppendKv(**cache, {k.data(), v.data(), DType::kF32, tokens}).ok());
  for (int64_t q_len : {1, 20}) {
    const int64_t n = 8 * q_len * 128;  // batch 1, 8 heads
    const auto q = RandomNormal(n, 93);
    std::vector<float> out(size_t(n), NAN);
    AttentionArgs a;
    a.q = q.data();
    a.batch = 1;
    a.heads = 8;
    a.q_len = q_len;
    a.scale = 0.088f;
    a.causal = q_len > 1;
    a.out = out.data();
    ASSERT_TRUE(cuda->Attention(**cache, a).ok());
    auto pq = cuda->AllocateHostBuffer(size_t(n) * 4), po = cuda->AllocateHostBuffer(size_t(n) * 4);
    ASSERT_TRUE(pq.ok() && po.ok());
    std::memcpy((*pq)->data(), q.data(), size_t(n) * 4);
    std::fill_n(static_cast<float*>((*po)->data()), n, NAN);
    a.q = (*pq)->data();
    a.out = (*po)->data();
    ASSERT_TRUE(cuda->Attention(**cache, a).ok());
    EXPECT_EQ(std::memcmp((*po)->data(), out.data(), size_t(n) * 4), 0) << "q_len " << q_len;
    EXPECT_FALSE(std::isnan(out[0]));
  }
}

TEST(CudaZeroCopy, PinnedAllocationIsCheckedAndFreed) {
  auto cuda = MakeCuda(0);
  ASSERT_NE(cuda, nullptr);
  for (int i = 0; i < 50; ++i) {
    auto b = cuda->AllocateHostBuffer(size_t{1} << 20);
    ASSERT_TRUE(b.ok()) << b.status();
    std::memset((*b)->data(), i, (*b)->size());
  }
  auto huge = cuda->AllocateHostBuffer(size_t{1} << 50);  // 1 PiB
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted) << huge.status();
}

TEST(MultiGpu, ShardedAndReplicatedMatchTheCpuBackend) {
  auto sharded = MakeSharded();
  ASSERT_NE(sharded, nullptr);
  CpuBackend cpu(4);
  const int64_t rows = 1000, cols = 1100;  // shards of 512 and 488 rows on 2 devices; ragged columns
  const auto w = RandomNormal(rows * cols, 71);
  for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
    for (ScaleMode mode : {ScaleMode::kNone, ScaleMode::kTensor, ScaleMode::kRow, ScaleMode::kBlock128}) {
      const ExpectedGemv want(w, rows, cols, f, mode);
      auto cm = cpu.Quantize(Shape(rows, cols, f, mode, Placement::kAuto), w.data(), DType::kF32);
      ASSERT_TRUE(cm.ok());
      std::vector<uint32_t> cpu_words(size_t(PackedLayout{rows, cols}.total_words()));
      std::vector<float> cpu_scales(size_t(std::max<int64_t>(1, NumScales(mode, rows, cols))));
      ASSERT_TRUE(cpu.ReadPacked(**cm, cpu_words.data(), cpu_scales.data()).ok());
      for (Placement p : {Placement::kSharded, Placement::kReplicated}) {
        SCOPED_TRACE(::testing::Message() << DTypeName(ToDType(f)) << " " << ScaleModeName(mode) << " "
                                          << PlacementName(p));
        auto m = sharded->Quantize(Shape(rows, cols, f, mode, p), w.data(), DType::kF32);
        ASSERT_TRUE(m.ok()) << m.status();
        EXPECT_EQ(sharded->PlacementOf(**m).kind, p);
        // The device quantizer is the reference's, bit for bit; ReadPacked
        // reassembles the shards.
        std::vector<uint32_t> words(cpu_words.size(), 0xdeadbeefu);
        std::vector<float> scales(cpu_scales.size(), -1.0f);
        ASSERT_TRUE(sharded->ReadPacked(**m, words.data(), scales.data()).ok());
        EXPECT_EQ(words, cpu_words);
        if (mode != ScaleMode::kNone) EXPECT_EQ(scales, cpu_scales);
        for (int64_t batch = 1; batch <= 17; ++batch) {
          const auto x = RandomNormal(batch * cols, 72 + uint32_t(batch));
          std::vector<float> y(size_t(batch * rows), NAN), yc(y.size(), NAN);
          ASSERT_TRUE(sharded->Gemv(**m, {x.data(), DType::kF32, 1.0f, batch, y.data(), DType::kF32}).ok());
          ASSERT_TRUE(cpu.Gemv(**cm, {x.data(), DType::kF32, 1.0f, batch, yc.data(), DType::kF32}).ok());
          EXPECT_LE(MaxRelDiff(y, yc), 1e-5) << "batch " << batch;
          if (batch == 1 || batch == 16 || batch == 17) {
            EXPECT_LE(want.RelErr(x, batch, y), 1e-5) << "batch " << batch;
          }
        }
        // F16 activations (the bench's), pinned buffers through the sharded
        // backend (portable pinned memory, strided copies per shard).
        const int64_t batch = 16;
        const auto xf = F16Exact(RandomNormal(batch * cols, 90));
        auto px = sharded->AllocateHostBuffer(size_t(batch * cols * 2));
        auto py = sharded->AllocateHostBuffer(size_t(batch * rows * 4));
        ASSERT_TRUE(px.ok() && py.ok());
        ref::FromFloat(xf.data(), batch * cols, DType::kF16, (*px)->data());
        std::fill_n(static_cast<float*>((*py)->data()), batch * rows, NAN);
        ASSERT_TRUE(sharded->Gemv(**m, {(*px)->data(), DType::kF16, 1.0f, batch, (*py)->data(), DType::kF32}).ok());
        const auto* yp = static_cast<const float*>((*py)->data());
        EXPECT_LE(want.RelErr(xf, batch, std::vector<float>(yp, yp + batch * rows)), 1e-5);
      }
    }
  }
}

TEST(MultiGpu, ManyThreadsOnShardedAndReplicatedMatrices) {
  auto sharded = MakeSharded();
  ASSERT_NE(sharded, nullptr);
  const int64_t rows = 4096 + 300, cols = 4096;
  const auto w = RandomNormal(rows * cols, 81);
  auto ms = sharded->Quantize(Shape(rows, cols, Fp8Format::kE4M3, ScaleMode::kRow, Placement::kSharded), w.data(), DType::kF32);
  auto mr = sharded->Quantize(Shape(rows, cols, Fp8Format::kE4M3, ScaleMode::kRow, Placement::kReplicated), w.data(), DType::kF32);
  ASSERT_TRUE(ms.ok() && mr.ok());
  const int64_t batch = 8;
  const auto x = RandomNormal(batch * cols, 82);
  // The kernels are deterministic: every run of one matrix gives the same bits.
  std::vector<float> want_s(size_t(batch * rows)), want_r(want_s.size());
  ASSERT_TRUE(sharded->Gemv(**ms, {x.data(), DType::kF32, 1.0f, batch, want_s.data(), DType::kF32}).ok());
  ASSERT_TRUE(sharded->Gemv(**mr, {x.data(), DType::kF32, 1.0f, batch, want_r.data(), DType::kF32}).ok());
  const ExpectedGemv expect(w, rows, cols, Fp8Format::kE4M3, ScaleMode::kRow);
  EXPECT_LE(expect.RelErr(x, batch, want_s), 1e-5);
  std::atomic<int> bad{0}, failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 12; ++t) {
    threads.emplace_back([&, t] {
      std::vector<float> y(want_s.size());
      for (int i = 0; i < 40; ++i) {
        const bool use_sharded = (i + t) % 2 == 0;
        std::fill(y.begin(), y.end(), NAN);
        if (!sharded->Gemv(use_sharded ? **ms : **mr, {x.data(), DType::kF32, 1.0f, batch, y.data(), DType::kF32}).ok()) {
          ++failed;
        } else if (std::memcmp(y.data(), (use_sharded ? want_s : want_r).data(), y.size() * 4) != 0) {
          ++bad;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(bad.load(), 0);
}

}  // namespace
}  // namespace plume::core
