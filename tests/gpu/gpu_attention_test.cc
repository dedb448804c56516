// The CUDA attention kernels (plume/cuda/attention.h) against the FP64
// reference on the dequantized cache, over head dims {64, 128, 256, 512},
// seq {1, 63, 64, 65, 1000, 4097}, q_len {1, 3, 8} (decode) and {16, 100, 257}
// (prefill), GQA and MHA, causal and not, both FP8 formats, every scale mode,
// every decode path the device has, F32/F16/BF16 queries and outputs. Outputs
// are poisoned with NaN first and every element is checked written. Then the
// CUDA backend through the Backend interface against the CPU backend (upload,
// appends, attention), and the error at 128k tokens. The harness (device
// caches, one case against the reference, the grid): attention_harness.h.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "plume/cuda/attention.h"
#include "plume/kernels/half.h"
#include "plume/reference/attention.h"
#include "plume/reference/naive.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/backends/cuda/cuda_backend.h"
#include "tests/gpu/attention_harness.h"

namespace plume {
namespace {

using namespace gpu_attention;

TEST(GpuAttention, ParallelReferenceMatchesTheLibraryReference) {
  for (bool causal : {false, true}) {
    const KvLayout l{2, 96, KvScaleMode::kTokenBlock};
    ref::HostKvCache h(l, Fp8Format::kE4M3);
    const auto k = KvValues(2, 150, 96, 5), v = KvValues(2, 150, 96, 6);
    ASSERT_TRUE(h.Append(k.data(), v.data(), 150));
    const Queries q = MakeQueries(2 * 6 * 5 * 96, DType::kF32, 7);
    const AttentionQueries p = F32Queries(q.f.data(), 2, 6, 5, 0.1f, causal);
    std::vector<double> lib(q.f.size());
    naive::Attention({h.view(), p}, lib.data());
    const auto mine = ParallelReference(h.view(), q.f, p);
    // Both accumulate in FP64, but the library rounds each dequantized K/V
    // value to FP32 first (code x scale), so they agree to ~1e-7 relative
    // (1.2e-7 seen on an H200 host), far below any kernel's bound of 1e-5.
    for (size_t i = 0; i < lib.size(); ++i) ASSERT_NEAR(mine[i], lib[i], 1e-6 * (1 + std::fabs(lib[i])));
  }
}

TEST(GpuAttention, DecodeGrid) {
  Sweep(AttentionKernel::kDecode, {1, 3, 8}, 1e-5);
  PrintWorst("decode");
}

// kPrefill is the Hopper (wgmma) kernel on compute capability 9.0 at head
// dim 128; kPrefillMmaSync keeps the mma.sync kernel tested there.
TEST(GpuAttention, PrefillGrid) {
  Sweep(AttentionKernel::kPrefill, {16, 100, 257}, 2e-3);
  PrintWorst("prefill");
}

TEST(GpuAttention, PrefillGridMmaSync) {
  Sweep(AttentionKernel::kPrefillMmaSync, {16, 100, 257}, 2e-3);
  PrintWorst("prefill-mma.sync");
}

// Every format x scale mode x causal on both kernels at one ragged shape, and
// head dims the kernels pad (not a multiple of 16, over 512).
TEST(GpuAttention, EveryScaleModeAndFormat) {
  int idx = 0;
  for (Fp8Format f : kFormats)
    for (KvScaleMode m : kModes)
      for (bool causal : {false, true}) {
        Case c{128, 333, 5, 2, 6, 1, causal, f, m, DType::kF32, DType::kF32};
        RunCase(c, AttentionKernel::kDecode, 1e-5, 50 + idx);
        c.q_len = 70;
        RunCase(c, AttentionKernel::kPrefill, 2e-3, 80 + idx);
        ++idx;
      }
  for (int64_t dim : {40, 100, 200, 1000}) {
    Case c{dim, 130, 4, 1, 3, 1, true, Fp8Format::kE4M3, KvScaleMode::kTokenBlock, DType::kF32, DType::kF32};
    RunCase(c, AttentionKernel::kDecode, 1e-5, 200 + static_cast<uint32_t>(dim));
    c.q_len = 40;
    if (dim <= 200) RunCase(c, AttentionKernel::kPrefill, 2e-3, 300 + static_cast<uint32_t>(dim));
  }
}

// Long prefills, as a model's prompt: q_len = seq (ragged, many K/V pages and
// query tiles; causal tiles skip pages), tiles that span two batches, and
// GQA over a long cache, at every head dim the flash prefills cover.
void LongQueries(AttentionKernel kernel, uint32_t& seed) {
  for (int64_t dim : {64, 128, 256, 512}) {
    for (bool causal : {true, false}) {
      Case c{dim, 1000, 1000, 1, 1, 1, causal, Fp8Format::kE4M3, KvScaleMode::kTokenBlock, DType::kF16,
             DType::kF32};
      RunCase(c, kernel, 2e-3, seed++);
    }
    Case b{dim, 777, 150, 2, 6, 2, true, Fp8Format::kE5M2, KvScaleMode::kHead, DType::kBF16, DType::kBF16};
    RunCase(b, kernel, 2e-3, seed++);
    Case g{dim, 3001, 333, 2, 8, 1, false, Fp8Format::kE4M3, KvScaleMode::kTensor, DType::kF32, DType::kF16};
    RunCase(g, kernel, 2e-3, seed++);
  }
}

// The benchmark's prompt shape, scaled down (4 heads, S=2048, causal).
void BenchShapeScaledDown(AttentionKernel kernel, uint32_t& seed) {
  Case c{128, 2048, 2048, 4, 4, 1, true, Fp8Format::kE4M3, KvScaleMode::kTokenBlock, DType::kF16, DType::kF16};
  RunCase(c, kernel, 2e-3, seed++);
}

TEST(GpuAttention, PrefillLongQueries) {
  uint32_t seed = 700;
  LongQueries(AttentionKernel::kPrefill, seed);
  for (AttentionKernel kernel : {AttentionKernel::kPrefill, AttentionKernel::kPrefillMmaSync}) {
    BenchShapeScaledDown(kernel, seed);
  }
  PrintWorst("prefill");
}

// kPrefillImages, the Hopper prefill over FP16 K / V images (kAuto's prefill
// there): on compute capability 9.0 at head dims padding to 64, 128, 256
// and 512, the grid, every scale mode and format, long queries and the
// benchmark's shape scaled down; refused elsewhere.
TEST(GpuAttention, PrefillImages) {
  int major = 0, minor = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0), cudaSuccess);
  // No workspace size: the kernel refuses the problem rather than run another.
  const auto refused = [](int64_t head_dim) {
    cuda::AttentionProblem p;
    p.layout = KvLayout{2, head_dim, KvScaleMode::kHead};
    p.seq = 100;
    p.batch = 1;
    p.heads = 2;
    p.q_len = 100;
    p.kernel = AttentionKernel::kPrefillImages;
    return cuda::AttentionWorkspaceBytes(p, 0) == 0;
  };
  if (major * 10 + minor != 90) {
    EXPECT_TRUE(refused(128));
    return;
  }
  EXPECT_TRUE(refused(1000));  // head dims past 512
  Sweep(AttentionKernel::kPrefillImages, {16, 100, 257}, 2e-3, {64, 128, 256, 512});
  uint32_t seed = 1500;
  for (Fp8Format f : kFormats)
    for (KvScaleMode m : kModes)
      for (bool causal : {false, true}) {
        Case c{100, 333, 70, 2, 6, 1, causal, f, m, DType::kF32, DType::kF32};
        RunCase(c, AttentionKernel::kPrefillImages, 2e-3, seed++);
      }
  LongQueries(AttentionKernel::kPrefillImages, seed);
  BenchShapeScaledDown(AttentionKernel::kPrefillImages, seed);
  // Several L2 bands of kv heads (16 MiB of images a band): one head a band
  // at D = 512 over 8300 tokens, two at D = 256 over 8192 (5 kv heads: the
  // last band one head).
  Case w{512, 8300, 64, 3, 6, 1, true, Fp8Format::kE4M3, KvScaleMode::kTokenBlock, DType::kF16, DType::kF32};
  RunCase(w, AttentionKernel::kPrefillImages, 2e-3, seed++);
  Case d{256, 8192, 64, 5, 10, 1, true, Fp8Format::kE5M2, KvScaleMode::kTokenBlock, DType::kF32, DType::kF16};
  RunCase(d, AttentionKernel::kPrefillImages, 2e-3, seed++);
  // 16 tiles round the 6-stage ring of head dim 64 more than twice.
  Case s{64, 2000, 300, 2, 4, 1, true, Fp8Format::kE4M3, KvScaleMode::kTokenBlock, DType::kF16, DType::kF32};
  RunCase(s, AttentionKernel::kPrefillImages, 2e-3, seed++);
  PrintWorst("prefill-images");
}

// kAuto: q_len <= 8 runs the decode kernel (FP32 bound), longer the prefill:
// kPrefillImages on compute capability 9.0 (its workspace holds the
// images), kPrefill elsewhere.
TEST(GpuAttention, AutoPicksByQueryLength) {
  Case c{128, 500, 8, 2, 4, 1, true, Fp8Format::kE4M3, KvScaleMode::kHead, DType::kF16, DType::kF32};
  RunCase(c, AttentionKernel::kAuto, 1e-5, 900);
  c.q_len = 9;
  RunCase(c, AttentionKernel::kAuto, 2e-3, 901);

  cuda::AttentionProblem p;
  p.layout = KvLayout{2, 128, KvScaleMode::kHead};
  p.seq = 500;
  p.batch = 1;
  p.heads = 4;
  const auto bytes = [&](int64_t q_len, AttentionKernel kernel) {
    p.q_len = q_len;
    p.kernel = kernel;
    return cuda::AttentionWorkspaceBytes(p, 0);
  };
  EXPECT_EQ(bytes(8, AttentionKernel::kAuto), bytes(8, AttentionKernel::kDecode));
  if (DeviceCc() == 90) {
    EXPECT_EQ(bytes(9, AttentionKernel::kAuto), bytes(9, AttentionKernel::kPrefillImages));
    EXPECT_GT(bytes(9, AttentionKernel::kAuto), bytes(9, AttentionKernel::kPrefill));
  } else {
    EXPECT_EQ(bytes(9, AttentionKernel::kAuto), bytes(9, AttentionKernel::kPrefill));
  }
}

TEST(GpuAttention, BadArgumentsAreRefused) {
  cuda::AttentionProblem p;
  p.layout = KvLayout{2, 64, KvScaleMode::kNone};
  p.seq = 10;
  p.batch = 1;
  p.heads = 3;  // not a multiple of kv_heads
  p.q_len = 1;
  EXPECT_EQ(cuda::AttentionWorkspaceBytes(p, 0), 0);
  p.heads = 2;
  p.causal = true;
  p.q_len = 11;  // longer than seq
  EXPECT_EQ(cuda::AttentionWorkspaceBytes(p, 0), 0);
  p.q_len = 1;
  p.out_dtype = DType::kE4M3;
  EXPECT_EQ(cuda::AttentionWorkspaceBytes(p, 0), 0);
  p.out_dtype = DType::kF32;
  char dummy[256];
  EXPECT_EQ(cuda::Attention(p, dummy, 256, nullptr), cudaErrorInvalidValue);  // null pages
  if (DeviceCc() < 89) {
    p.path = cuda::DecodePath::kNative;
    EXPECT_EQ(cuda::AttentionWorkspaceBytes(p, 0), 0);
  }
}

// A format, decode path or kernel choice outside its enum is refused, never
// run as another one.
TEST(GpuAttention, UnknownValuesAreRefused) {
  char dummy[256];
  cuda::AttentionProblem p;
  p.layout = KvLayout{2, 64, KvScaleMode::kNone};
  p.pages = reinterpret_cast<const uint8_t* const*>(dummy);  // never read: every call below is refused
  p.seq = 10;
  p.q = dummy;
  p.out = dummy;
  p.batch = 1;
  p.heads = 2;
  p.q_len = 1;
  p.path = cuda::DecodePath::kSoftware;
  ASSERT_GT(cuda::AttentionWorkspaceBytes(p, 0), 0);  // the problem itself is valid
  auto refused = [&](const cuda::AttentionProblem& q) {
    EXPECT_EQ(cuda::AttentionWorkspaceBytes(q, 0), 0);
    EXPECT_EQ(cuda::Attention(q, dummy, sizeof(dummy), nullptr), cudaErrorInvalidValue);
  };
  for (int v : {6, 7, 200}) {  // not a format (4, 5), path (0, 1) nor kernel (0-3)
    SCOPED_TRACE(v);
    cuda::AttentionProblem q = p;
    q.format = static_cast<Fp8Format>(v);
    refused(q);
    q = p;
    q.path = static_cast<cuda::DecodePath>(v);
    refused(q);
    q = p;
    q.kernel = static_cast<cuda::AttentionKernel>(v);
    refused(q);
  }
}

// An E4M3 NaN code in K (a non-saturating append past the TENSOR scale): the
// rows that see its token are NaN, as in the reference, the others finite and
// right, on both kernels and every decode path (the software path patches NaN
// codes back to NaN).
TEST(GpuAttention, NanCodeInKGivesNanRows) {
  const KvLayout layout{2, 64, KvScaleMode::kTensor};
  ref::HostKvCache host(layout, Fp8Format::kE4M3, false);
  auto k = KvValues(2, 200, 64, 5), v = KvValues(2, 200, 64, 6);
  ASSERT_TRUE(host.Append(k.data(), v.data(), 200));
  k = KvValues(2, 3, 64, 7);
  v = KvValues(2, 3, 64, 8);
  k[5] = 1e6f;  // kv head 0, token 200
  ASSERT_TRUE(host.Append(k.data(), v.data(), 3));
  DeviceKv dev(host);
  for (AttentionKernel kernel : {AttentionKernel::kDecode, AttentionKernel::kPrefill}) {
    const int64_t q_len = kernel == AttentionKernel::kPrefill ? 20 : 4;
    const int64_t n = 4 * q_len * 64;
    const Queries q = MakeQueries(n, DType::kF32, 9);
    const AttentionQueries rp = F32Queries(q.f.data(), 1, 4, q_len, 0.125f, true);
    std::vector<double> want(static_cast<size_t>(n));
    naive::Attention({host.view(), rp}, want.data());
    void *d_q = nullptr, *d_out = nullptr, *ws = nullptr;
    ASSERT_EQ(cudaMalloc(&d_q, static_cast<size_t>(n) * 4), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&d_out, static_cast<size_t>(n) * 4), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(d_q, q.f.data(), static_cast<size_t>(n) * 4, cudaMemcpyHostToDevice), cudaSuccess);
    for (cuda::DecodePath path : Paths()) {
      SCOPED_TRACE(std::string(kernel == AttentionKernel::kPrefill ? "prefill " : "decode ") + PathName(path));
      cuda::AttentionProblem p;
      p.layout = layout;
      p.format = Fp8Format::kE4M3;
      p.pages = dev.table();
      p.k_scales = dev.k_scales();
      p.v_scales = dev.v_scales();
      p.seq = host.seq();
      p.q = d_q;
      p.batch = 1;
      p.heads = 4;
      p.q_len = q_len;
      p.scale = rp.scale;
      p.causal = true;
      p.out = d_out;
      p.path = path;
      p.kernel = kernel;
      const int64_t ws_bytes = cuda::AttentionWorkspaceBytes(p, 0);
      ASSERT_GT(ws_bytes, 0);
      ASSERT_EQ(cudaMalloc(&ws, static_cast<size_t>(ws_bytes)), cudaSuccess);
      ASSERT_EQ(cudaMemset(ws, 0, static_cast<size_t>(ws_bytes)), cudaSuccess);
      ASSERT_EQ(cudaMemset(d_out, 0xff, static_cast<size_t>(n) * 4), cudaSuccess);
      ASSERT_EQ(cuda::Attention(p, ws, ws_bytes, nullptr), cudaSuccess);
      std::vector<float> got(static_cast<size_t>(n));
      ASSERT_EQ(cudaMemcpy(got.data(), d_out, static_cast<size_t>(n) * 4, cudaMemcpyDeviceToHost), cudaSuccess);
      cudaFree(ws);
      int64_t nan_rows = 0;
      double num = 0.0, den = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(std::isnan(got[i]), std::isnan(want[i])) << "element " << i;
        if (std::isnan(want[i])) {
          nan_rows += i % 64 == 0;
          continue;
        }
        num += (got[i] - want[i]) * (got[i] - want[i]);
        den += want[i] * want[i];
      }
      EXPECT_EQ(nan_rows, 6);  // heads 0 and 1 (kv head 0) x the queries at 200, 201, 202
      EXPECT_LE(std::sqrt(num / den), kernel == AttentionKernel::kPrefill ? 2e-3 : 1e-5);
    }
    cudaFree(d_q);
    cudaFree(d_out);
  }
}

// Many query rows per kv head (the tensor-core decode tiles them by 64):
// batch 16 at heads 32 / kv_heads 8 (64 rows, FP16 queries, as benchmarked),
// and 96 rows (a full tile and a half one).
TEST(GpuAttention, DecodeManyRows) {
  Case c{128, 8192, 1, 8, 32, 16, true, Fp8Format::kE4M3, KvScaleMode::kTokenBlock, DType::kF16,
         DType::kF32};
  RunCase(c, AttentionKernel::kDecode, 1e-5, 4300);
  c = Case{128, 1000, 8, 2, 8, 3, true, Fp8Format::kE5M2, KvScaleMode::kHead, DType::kF32, DType::kF32};
  RunCase(c, AttentionKernel::kDecode, 1e-5, 4301);
  // 40 rows of a ragged head dim (rows of 112 bytes) with BF16 queries, and
  // 128k tokens at batch 16 with FP32 queries (many pages a split): on
  // compute capability 9.0, with the Hopper decode built in
  // (PLUME_DECODE_WGMMA), these take it too.
  c = Case{100, 3000, 1, 2, 16, 5, false, Fp8Format::kE4M3, KvScaleMode::kTensor, DType::kBF16, DType::kF32};
  RunCase(c, AttentionKernel::kDecode, 1e-5, 4302);
  c = Case{128, 131072, 1, 8, 32, 16, true, Fp8Format::kE4M3, KvScaleMode::kTokenBlock, DType::kF32,
           DType::kF32};
  RunCase(c, AttentionKernel::kDecode, 1e-5, 4303);
}

// Past 16384 tiles of query rows (the fused combine's counters) the decode
// merges its splits with the combine kernel, a second launch: head dim 512
// (the CUDA-core decode, 8 rows a tile), 131200 rows of one kv head.
TEST(GpuAttention, DecodeOfMoreTilesThanCountersMergesWithTheCombineKernel) {
  const Case c{512, 300, 1, 1, 16, 8200, true, Fp8Format::kE4M3, KvScaleMode::kHead, DType::kF16,
               DType::kF16};
  RunCase(c, AttentionKernel::kDecode, 1e-5, 4350);
}

// At most four query rows per kv head (the operand-swapped tensor-core
// decode): batch 1 at heads 32 / kv_heads 8 as benchmarked, causal rows at
// distinct positions, three rows of a ragged head dim.
TEST(GpuAttention, DecodeFewRows) {
  Case c{128, 8192, 1, 8, 32, 1, true, Fp8Format::kE4M3, KvScaleMode::kTokenBlock, DType::kF16,
         DType::kF32};
  RunCase(c, AttentionKernel::kDecode, 1e-5, 4400);
  c = Case{128, 1000, 2, 2, 2, 2, true, Fp8Format::kE5M2, KvScaleMode::kHead, DType::kF32, DType::kF32};
  RunCase(c, AttentionKernel::kDecode, 1e-5, 4401);
  c = Case{100, 4097, 1, 2, 6, 1, false, Fp8Format::kE4M3, KvScaleMode::kTensor, DType::kBF16, DType::kF32};
  RunCase(c, AttentionKernel::kDecode, 1e-5, 4402);
}

// State the error at 128k tokens (decode, heads 32 / kv_heads 8, D=128).
TEST(GpuAttention, Decode128kTokens) {
  Case c{128, 131072, 1, 8, 32, 1, true, Fp8Format::kE4M3, KvScaleMode::kTokenBlock, DType::kF32,
         DType::kF32};
  RunCase(c, AttentionKernel::kDecode, 1e-5, 4242);  // prints its error per path
}

// ---------------------------------------------------------------- backend

double RelL2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
    den += double{b[i]} * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

TEST(GpuAttention, CudaBackendMatchesTheCpuBackend) {
  core::CpuBackend cpu(4);
  for (const char* path : {"", "software"}) {
    core::CudaBackendOptions o;
    o.decode_path = path;
    auto cuda_or = core::CudaBackend::Create(o);
    ASSERT_TRUE(cuda_or.ok()) << cuda_or.status();
    auto& gpu = **cuda_or;
    for (KvScaleMode mode : kModes) {
      SCOPED_TRACE(std::string(path) + " " + KvScaleModeName(mode));
      const core::KvShape shape{2, 128, Fp8Format::kE4M3, mode, true};
      auto gc = gpu.CreateKv(shape);
      auto cc = cpu.CreateKv(shape);
      ASSERT_TRUE(gc.ok()) << gc.status();
      ASSERT_TRUE(cc.ok()) << cc.status();
      ref::HostKvCache host(shape.layout(), shape.format, true);
      // Upload 1000 tokens, then appends of 1, 100 (F16) and 37 tokens: the
      // partly filled last page comes back from the device each time.
      int step = 0;
      for (int64_t tokens : {1000, 1, 100, 37}) {
        const auto k = KvValues(2, tokens, 128, 70 + step), v = KvValues(2, tokens, 128, 80 + step);
        core::KvAppendArgs a{k.data(), v.data(), DType::kF32, tokens};
        std::vector<uint16_t> k16, v16;
        std::vector<float> kf = k, vf = v;
        if (step == 2) {
          for (size_t i = 0; i < k.size(); ++i) {
            k16.push_back(FloatToHalfBits(k[i]));
            v16.push_back(FloatToHalfBits(v[i]));
            kf[i] = HalfBitsToFloat(k16.back());
            vf[i] = HalfBitsToFloat(v16.back());
          }
          a = {k16.data(), v16.data(), DType::kF16, tokens};
        }
        ASSERT_TRUE(gpu.AppendKv(**gc, a).ok());
        ASSERT_TRUE(cpu.AppendKv(**cc, a).ok());
        ASSERT_TRUE(host.Append(kf.data(), vf.data(), tokens));
        ++step;
        ASSERT_EQ((*gc)->seq(), host.seq());
        for (int64_t q_len : {1, 8, 100}) {
          for (bool causal : {false, true}) {
            const int64_t batch = 2, heads = 4;
            const int64_t n = batch * heads * q_len * 128;
            const Queries q = MakeQueries(n, DType::kF32, 90 + static_cast<uint32_t>(q_len));
            core::AttentionArgs args{q.f.data(), DType::kF32, batch, heads, q_len, 0.09f, causal, nullptr,
                                     DType::kF32};
            std::vector<float> og(static_cast<size_t>(n), NAN), oc(og.size(), NAN);
            args.out = og.data();
            ASSERT_TRUE(gpu.Attention(**gc, args).ok());
            args.out = oc.data();
            ASSERT_TRUE(cpu.Attention(**cc, args).ok());
            const auto want = ParallelReference(host.view(), q.f, args);
            std::vector<float> wf(want.begin(), want.end());
            const double bound = q_len <= 8 ? 1e-5 : 2e-3;
            EXPECT_LE(RelL2(og, wf), bound) << "seq " << host.seq() << " q_len " << q_len;
            EXPECT_LE(RelL2(oc, wf), 1e-5);
            EXPECT_LE(RelL2(og, oc), bound + 1e-5);
          }
        }
      }
      // The durable store's hooks: the device pages read back are byte for
      // byte the CPU backend's (both quantize with the reference), and a
      // cache made from them answers exactly as the original does.
      ASSERT_TRUE(gpu.ReadKv(**gc, 0, 0, nullptr, nullptr, nullptr).ok());  // the start-up probe
      const KvLayout l = shape.layout();
      const int64_t n_pages = KvLayout::pages_for((*gc)->seq());
      const size_t bytes = static_cast<size_t>(n_pages * l.page_bytes());
      const size_t ns = static_cast<size_t>(std::max<int64_t>(l.global_scales(), 1));
      std::vector<uint8_t> pg(bytes), pc(bytes);
      std::vector<float> kg(ns), vg(ns), kc(ns), vc(ns);
      ASSERT_TRUE(gpu.ReadKv(**gc, 0, n_pages, pg.data(), kg.data(), vg.data()).ok());
      ASSERT_TRUE(cpu.ReadKv(**cc, 0, n_pages, pc.data(), kc.data(), vc.data()).ok());
      EXPECT_EQ(pg, pc);
      if (l.global_scales() > 0) {
        EXPECT_EQ(kg, kc);
        EXPECT_EQ(vg, vc);
      }
      EXPECT_FALSE(gpu.ReadKv(**gc, n_pages, 1, pg.data(), nullptr, nullptr).ok());  // past the end
      auto restored = gpu.KvFromPacked(shape, (*gc)->seq(), pg.data(), kg.data(), vg.data());
      ASSERT_TRUE(restored.ok()) << restored.status();
      ASSERT_EQ((*restored)->seq(), (*gc)->seq());
      for (int64_t q_len : {1, 100}) {
        const int64_t n = 2 * 4 * q_len * 128;
        const Queries q = MakeQueries(n, DType::kF32, 190 + static_cast<uint32_t>(q_len));
        core::AttentionArgs args{q.f.data(), DType::kF32, 2, 4, q_len, 0.09f, true, nullptr, DType::kF32};
        std::vector<float> a(static_cast<size_t>(n), NAN), b(a.size(), NAN);
        args.out = a.data();
        ASSERT_TRUE(gpu.Attention(**gc, args).ok());
        args.out = b.data();
        ASSERT_TRUE(gpu.Attention(**restored, args).ok());
        EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << "q_len " << q_len;
      }
    }
  }
}

// A decode's output for a pinned buffer is stored by the kernel straight
// into it (no copy-out): every element written, the same bits as the
// copied-out output of a heap buffer, for F32 / F16 / BF16 outputs and head
// dims 64 and 128. Prefill outputs (q_len over kAttentionDecodeMaxQ), and
// every output with the option off, are copied out as before.
TEST(GpuAttention, CudaBackendStoresDecodeOutputsStraightIntoPinnedBuffers) {
  for (bool direct : {true, false}) {
    core::CudaBackendOptions o;
    o.kernels_write_pinned_results = direct;
    auto made = core::CudaBackend::Create(o);
    ASSERT_TRUE(made.ok()) << made.status();
    auto& gpu = **made;
    for (int64_t dim : {64, 128}) {
      const core::KvShape shape{2, dim, Fp8Format::kE4M3, KvScaleMode::kTokenBlock, true};
      auto cache = gpu.CreateKv(shape);
      ASSERT_TRUE(cache.ok()) << cache.status();
      const auto k = KvValues(2, 1000, dim, 300), v = KvValues(2, 1000, dim, 301);
      ASSERT_TRUE(gpu.AppendKv(**cache, {k.data(), v.data(), DType::kF32, 1000}).ok());
      for (int64_t q_len : {1, 4, 8, 16}) {
        for (DType out_dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
          const std::string what = "direct " + std::to_string(direct) + " dim " + std::to_string(dim) +
                                   " q_len " + std::to_string(q_len) + " out " + DTypeStr(out_dtype);
          const int64_t batch = 3, heads = 8;
          const int64_t n = batch * heads * q_len * dim;
          const Queries q = MakeQueries(n, DType::kF32, 310 + static_cast<uint32_t>(q_len));
          const size_t out_bytes = static_cast<size_t>(n * DTypeSize(out_dtype));
          auto qp = gpu.AllocateHostBuffer(q.f.size() * sizeof(float));
          auto op = gpu.AllocateHostBuffer(out_bytes);
          ASSERT_TRUE(qp.ok() && op.ok());
          std::memcpy((*qp)->data(), q.f.data(), q.f.size() * sizeof(float));
          std::memset((*op)->data(), 0xff, out_bytes);  // NaN in every dtype
          std::vector<uint8_t> heap_out(out_bytes, 0xff);
          core::AttentionArgs args{(*qp)->data(), DType::kF32, batch, heads, q_len, 0.1f, true,
                                   (*op)->data(), out_dtype};
          const int64_t before = gpu.kernel_written_results();
          ASSERT_TRUE(gpu.Attention(**cache, args).ok()) << what;
          const bool stored = direct && q_len <= cuda::kAttentionDecodeMaxQ;
          EXPECT_EQ(gpu.kernel_written_results(), before + (stored ? 1 : 0)) << what;
          args.q = q.f.data();
          args.out = heap_out.data();
          ASSERT_TRUE(gpu.Attention(**cache, args).ok()) << what;
          EXPECT_EQ(gpu.kernel_written_results(), before + (stored ? 1 : 0)) << what << ": heap out";
          EXPECT_EQ(std::memcmp((*op)->data(), heap_out.data(), out_bytes), 0) << what;
          for (int64_t i = 0; i < n; ++i) {
            const float f = OutToFloat(static_cast<const uint8_t*>((*op)->data()), out_dtype, i);
            if (!std::isfinite(f)) {
              ADD_FAILURE() << what << ": element " << i << " not written";
              break;
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace plume
