// GPU GEMV benchmark: in one run, the read-bandwidth ceiling (a plain read
// kernel), plume's FP8 GEMV (both decode paths, both formats, every scaling
// mode), plume's GEMV with E4M3 activations (W8A8: plume's kernels and its
// cuBLASLt path, forced), cuBLASLt FP8 GEMM called directly (E4M3, TN,
// tensor-wise scales), cuBLAS FP16 GEMM and cuBLAS FP32 GEMV/GEMM, on the
// same shapes and batches.
//
// Weights rotate across enough copies that L2 can't hold them; each timed
// launch is bracketed by CUDA events and the median over --iters launches is
// reported. bench/run_gpu_bench.sh runs it on a GPU machine.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "plume/cuda/fp8_codec.h"
#include "plume/cuda/gemv.h"
#include "plume/kernels/layout.h"
#include "gpu_bench_common.cuh"

namespace {

using plume::DType;
using plume::Fp8Format;
using plume::ScaleMode;
using plume::cuda::DecodePath;

#define CHECK_CUBLAS(expr)                                                                  \
  do {                                                                                      \
    const cublasStatus_t s_ = (expr);                                                       \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                      \
      std::fprintf(stderr, "%s:%d: %s: cublas status %d\n", __FILE__, __LINE__, #expr, s_); \
      std::exit(1);                                                                         \
    }                                                                                       \
  } while (0)

struct Options {
  std::vector<std::pair<int64_t, int64_t>> shapes = {
      {4096, 4096}, {8192, 8192}, {16384, 16384}, {28672, 8192}};
  std::vector<int> batches = {1, 4, 16, 64};
  std::vector<Fp8Format> formats = {Fp8Format::kE4M3, Fp8Format::kE5M2};
  std::vector<ScaleMode> modes = {ScaleMode::kNone, ScaleMode::kTensor, ScaleMode::kRow,
                                  ScaleMode::kBlock128};
  std::vector<DecodePath> paths = {DecodePath::kNative, DecodePath::kSoftware};
  std::vector<plume::cuda::GemvKernel> kernels = {plume::cuda::GemvKernel::kAuto};
  DType x_dtype = DType::kF16;
  int iters = 200;
  bool baselines = true;
  bool w8a8 = true;
  bool quantize = true;
  // The quantize rows' saturate flag: off takes the software encode on
  // every GPU (on sm_89+ saturating uploads use the hardware conversion).
  bool quantize_saturate = true;
  std::string json;
};

// The same bytes read in plume's GEMV pattern, without the math: each warp
// reads 16 rows, 128 bytes of each per step (two 16-byte loads per lane),
// walking its rows' columns; one column split per grid.y. Staggered: block x
// starts x chunks into its range and wraps round (as the Hopper kernel).
__global__ void RowPatternReadKernel(const uint8_t* w, int64_t rows, int64_t row_bytes,
                                     int splits, bool stagger, uint32_t* sink) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t ra = (int64_t{blockIdx.x} * (blockDim.x / 32) + warp) * 16 + g;
  const int64_t chunks = row_bytes / 128;
  const int64_t per = (chunks + splits - 1) / splits;
  const int64_t c0 = blockIdx.y * per, c1 = min(chunks, c0 + per);
  uint32_t acc = 0;
  if (ra + 8 < rows) {
    const uint8_t* a = w + ra * row_bytes;
    const uint8_t* b = a + 8 * row_bytes;
    const int64_t n = c1 - c0;
    const int64_t rot = stagger && n > 0 ? int64_t{blockIdx.x} % n : 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t c = c0 + (i + rot < n ? i + rot : i + rot - n);
      const int64_t off = c * 128 + 16 * t;
      const uint4 v0 = __ldcs(reinterpret_cast<const uint4*>(a + off));
      const uint4 v1 = __ldcs(reinterpret_cast<const uint4*>(a + off + 64));
      const uint4 v2 = __ldcs(reinterpret_cast<const uint4*>(b + off));
      const uint4 v3 = __ldcs(reinterpret_cast<const uint4*>(b + off + 64));
      acc ^= v0.x ^ v1.y ^ v2.z ^ v3.w;
    }
  }
  if (acc == 0x12345678u) sink[0] = acc;
}

struct Row {
  std::string shape, kernel, variant;
  int batch;
  double us, weight_bytes;
};

std::vector<Row> g_rows;

void Report(const std::string& shape, int batch, const std::string& kernel,
            const std::string& variant, double us, double bytes) {
  g_rows.push_back({shape, kernel, variant, batch, us, bytes});
  std::printf("  %-12s b=%-3d %-14s %-28s %9.2f us %8.1f GB/s\n", shape.c_str(), batch,
              kernel.c_str(), variant.c_str(), us, bytes / us / 1e3);
  std::fflush(stdout);
}

template <typename T>
T* Alloc(size_t bytes) {
  void* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, bytes));
  return static_cast<T*>(p);
}

int CopiesFor(size_t bytes) {
  // At least 1 GiB across the copies (L2 is 50-60 MB), at least two.
  return static_cast<int>(std::max<size_t>(2, (size_t{1} << 30) / bytes + 1));
}

std::string FormatName(Fp8Format f) { return f == Fp8Format::kE4M3 ? "e4m3" : "e5m2"; }

void BenchShape(const Options& o, int64_t rows, int64_t cols, cudaStream_t stream,
                cublasHandle_t blas, cublasLtHandle_t lt, uint32_t* sink) {
  const std::string shape = std::to_string(rows) + "x" + std::to_string(cols);
  const plume::PackedLayout layout{rows, cols};
  const size_t code_bytes = static_cast<size_t>(layout.code_bytes());
  const int copies = CopiesFor(code_bytes);
  const int max_batch = *std::max_element(o.batches.begin(), o.batches.end());
  std::printf("%s: %d rotating copies of %.1f MiB of FP8\n", shape.c_str(), copies,
              code_bytes / 1048576.0);
  Timer timer(stream, o.iters);

  std::vector<uint32_t*> words(static_cast<size_t>(copies));
  for (auto& w : words) w = Alloc<uint32_t>(code_bytes);
  const int64_t nscales = rows * layout.blocks_per_row();
  float* scales = Alloc<float>(static_cast<size_t>(nscales) * 4);
  FillFloat<<<kFillBlocks, 256, 0, stream>>>(scales, nscales, 7, 0.01f);
  // BLOCK128X128 as the backends hold it (ResidentScaleMode): BLOCK128 with
  // each 128-row band's scales repeated on its rows.
  float* band_scales = nullptr;
  if (std::find(o.modes.begin(), o.modes.end(), ScaleMode::kBlock128x128) != o.modes.end()) {
    std::vector<float> tiles(static_cast<size_t>(plume::NumScales(ScaleMode::kBlock128x128, rows, cols)));
    std::mt19937 rng(8);
    std::uniform_real_distribution<float> d(0.001f, 0.02f);
    for (float& t : tiles) t = d(rng);
    std::vector<float> expanded(static_cast<size_t>(nscales));
    plume::ExpandBlockScales(rows, cols, tiles.data(), expanded.data());
    band_scales = Alloc<float>(static_cast<size_t>(nscales) * 4);
    CHECK_CUDA(cudaMemcpy(band_scales, expanded.data(), expanded.size() * 4, cudaMemcpyHostToDevice));
  }
  __half* x16 = Alloc<__half>(static_cast<size_t>(max_batch * cols) * 2);
  FillHalf<<<kFillBlocks, 256, 0, stream>>>(x16, max_batch * cols, 9);
  float* x32 = Alloc<float>(static_cast<size_t>(max_batch * cols) * 4);
  FillFloat<<<kFillBlocks, 256, 0, stream>>>(x32, max_batch * cols, 10, -1.0f);
  void* y = Alloc<void>(static_cast<size_t>(max_batch * rows) * 4);
  CHECK_CUDA(cudaGetLastError());

  // Read ceiling over the same bytes, rotating the same way.
  for (int c = 0; c < copies; ++c) {
    FillCodes<<<kFillBlocks, 256, 0, stream>>>(words[c], layout.total_words(), 100 + c, true);
  }
  CHECK_CUDA(cudaGetLastError());
  int sms = 0, dev = 0;
  CHECK_CUDA(cudaGetDevice(&dev));
  CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const double read_us = timer.Median([&](int i) {
    ReadKernel<<<sms * 4, 512, 0, stream>>>(reinterpret_cast<const uint4*>(words[i % copies]),
                                             static_cast<int64_t>(code_bytes / 16), sink);
  });
  Report(shape, 0, "read", "ceiling", read_us, static_cast<double>(code_bytes));
  for (bool stagger : {false, true}) {
    for (int splits : {1, 2, 4, 8}) {
      const dim3 grid(static_cast<unsigned>((rows + 127) / 128), static_cast<unsigned>(splits));
      const double us = timer.Median([&](int i) {
        RowPatternReadKernel<<<grid, 256, 0, stream>>>(
            reinterpret_cast<const uint8_t*>(words[i % copies]), rows, layout.padded_cols(),
            splits, stagger, sink);
      });
      Report(shape, 0, "read",
             std::string(stagger ? "staggered " : "") + "gemv pattern, splits " + std::to_string(splits),
             us, static_cast<double>(code_bytes));
    }
  }

  // GPU quantize-and-pack (uploads): source read, codes and scales written.
  if (o.quantize) {
    for (DType src_t : {DType::kF32, DType::kF16, DType::kBF16}) {
      const size_t src_bytes = static_cast<size_t>(rows * cols) * plume::DTypeSize(src_t);
      const int sc = CopiesFor(src_bytes);
      std::vector<void*> src(static_cast<size_t>(sc));
      for (int c = 0; c < sc; ++c) {
        src[c] = Alloc<void>(src_bytes);
        if (src_t == DType::kF32) {
          FillFloat<<<kFillBlocks, 256, 0, stream>>>(static_cast<float*>(src[c]), rows * cols, 400 + c, -1.0f);
        } else {  // random 16-bit patterns with a sane exponent work for both F16 and BF16
          FillHalf<<<kFillBlocks, 256, 0, stream>>>(static_cast<__half*>(src[c]), rows * cols, 400 + c);
        }
      }
      for (ScaleMode m : {ScaleMode::kTensor, ScaleMode::kRow, ScaleMode::kBlock128}) {
        const int64_t qws_bytes = plume::cuda::QuantizePackWorkspaceBytes(rows, cols, m);
        void* qws = Alloc<void>(static_cast<size_t>(std::max<int64_t>(qws_bytes, 16)));
        const double us = timer.Median([&](int i) {
          CHECK_CUDA(plume::cuda::QuantizePack(src[i % sc], src_t, rows, cols, Fp8Format::kE4M3, m,
                                               o.quantize_saturate, words[0], scales, qws, stream));
        });
        Report(shape, 0, "quantize", std::string("e4m3 ") + plume::ScaleModeName(m) + " from " +
                                         plume::DTypeName(src_t) +
                                         (o.quantize_saturate ? "" : " non-saturating"),
               us, static_cast<double>(src_bytes + code_bytes));
        CHECK_CUDA(cudaFree(qws));
      }
      for (void* p : src) CHECK_CUDA(cudaFree(p));
    }
  }

  // plume
  const std::string xname = plume::DTypeName(o.x_dtype);
  void* ws = nullptr;
  int64_t ws_bytes = 0;
  // Times p (words rotating over the copies) and reports it as `kname`, the
  // kernel that ran appended to the variant; false when p does not run on
  // this device.
  auto run_plume = [&](plume::cuda::GemvProblem p, const std::string& kname,
                       const std::string& variant) {
    const plume::cuda::GemvKernel ran = plume::cuda::ChosenGemvKernel(p, dev);
    if (ran == plume::cuda::GemvKernel::kAuto) return false;  // not on this device
    const int64_t need = plume::cuda::GemvWorkspaceBytes(p, dev);
    if (need > ws_bytes) {
      if (ws) CHECK_CUDA(cudaFree(ws));
      ws = Alloc<void>(static_cast<size_t>(need));
      CHECK_CUDA(cudaMemset(ws, 0, static_cast<size_t>(need)));
      ws_bytes = need;
    }
    const double us = timer.Median([&](int i) {
      p.words = words[i % copies];
      CHECK_CUDA(plume::cuda::Gemv(p, ws, ws_bytes, stream));
    });
    // The kernel that ran: for kAuto, the one its first call measured fastest.
    const plume::cuda::GemvKernel chosen = plume::cuda::ChosenGemvKernel(p, dev);
    Report(shape, p.batch, kname, variant + " k=" + plume::cuda::GemvKernelName(chosen), us,
           static_cast<double>(code_bytes));
    return true;
  };
  // "plume" is the dispatcher's pick; "plume-mma" / "plume-wgmma" a forced family.
  auto kernel_name = [](const std::string& base, plume::cuda::GemvKernel kernel) {
    return kernel == plume::cuda::GemvKernel::kAuto
               ? base
               : base + "-" + plume::cuda::GemvKernelName(kernel);
  };
  for (Fp8Format f : o.formats) {
    for (int c = 0; c < copies; ++c) {
      FillCodes<<<kFillBlocks, 256, 0, stream>>>(words[c], layout.total_words(), 100 + c,
                                                 f == Fp8Format::kE4M3);
    }
    CHECK_CUDA(cudaGetLastError());
    for (DecodePath path : o.paths) {
      if (path == DecodePath::kNative && plume::cuda::DefaultDecodePath(dev) != DecodePath::kNative) {
        continue;
      }
      for (ScaleMode m : o.modes) {
        for (plume::cuda::GemvKernel kernel : o.kernels) {
          for (int b : o.batches) {
            plume::cuda::GemvProblem p;
            p.scales = m == ScaleMode::kBlock128x128 ? band_scales : scales;
            p.rows = rows;
            p.cols = cols;
            p.format = f;
            p.scale_mode = plume::ResidentScaleMode(m);
            p.x = o.x_dtype == DType::kF16 ? static_cast<const void*>(x16) : x32;
            p.x_dtype = o.x_dtype;
            p.batch = b;
            p.y = y;
            p.y_dtype = DType::kF32;
            p.path = path;
            p.kernel = kernel;
            run_plume(p, kernel_name("plume", kernel),
                      FormatName(f) + " " + plume::ScaleModeName(m) + " " +
                          plume::cuda::DecodePathName(path) + " x=" + xname);
          }
        }
      }
    }
  }

  // W8A8: E4M3 weights and E4M3 activations through plume's GEMV, its kernels
  // (the dispatcher's pick and each family forced) beside its cuBLASLt path
  // forced; BF16 results, as the direct cuBLASLt baseline below.
  if (o.w8a8) {
    for (int c = 0; c < copies; ++c) {
      FillCodes<<<kFillBlocks, 256, 0, stream>>>(words[c], layout.total_words(), 100 + c, true);
    }
    uint8_t* xa = Alloc<uint8_t>(static_cast<size_t>(max_batch * cols + 16));
    FillCodes<<<kFillBlocks, 256, 0, stream>>>(reinterpret_cast<uint32_t*>(xa),
                                               (max_batch * cols + 3) / 4, 12, true);
    CHECK_CUDA(cudaGetLastError());
    const DecodePath path = plume::cuda::DefaultDecodePath(dev);
    for (ScaleMode m : {ScaleMode::kTensor, ScaleMode::kRow}) {
      for (plume::cuda::GemvKernel kernel :
           {plume::cuda::GemvKernel::kAuto, plume::cuda::GemvKernel::kMma,
            plume::cuda::GemvKernel::kWgmma, plume::cuda::GemvKernel::kCublasLt}) {
        for (int b : o.batches) {
          plume::cuda::GemvProblem p;
          p.scales = scales;
          p.rows = rows;
          p.cols = cols;
          p.format = Fp8Format::kE4M3;
          p.scale_mode = m;
          p.x = xa;
          p.x_dtype = DType::kE4M3;
          p.x_scale = 0.5f;
          p.batch = b;
          p.y = y;
          p.y_dtype = DType::kBF16;
          p.path = path;
          p.kernel = kernel;
          if (!run_plume(p, kernel_name("w8a8", kernel),
                         std::string("e4m3 ") + plume::ScaleModeName(m) + " x=e4m3 y=bf16")) {
            std::printf("  w8a8 %s b=%d: %s not available\n", plume::ScaleModeName(m), b,
                        plume::cuda::GemvKernelName(kernel));
          }
        }
      }
    }
    CHECK_CUDA(cudaFree(xa));
  }
  if (ws) CHECK_CUDA(cudaFree(ws));
  if (band_scales) CHECK_CUDA(cudaFree(band_scales));

  if (o.baselines) {
    // cuBLASLt FP8: D[rows x b] = A^T B with A = W (E4M3, cols x rows column
    // major, i.e. row-major W), B = x (E4M3), tensor-wise scales, BF16 out.
    for (int c = 0; c < copies; ++c) {
      FillCodes<<<kFillBlocks, 256, 0, stream>>>(words[c], layout.total_words(), 100 + c, true);
    }
    uint8_t* x8 = Alloc<uint8_t>(static_cast<size_t>(std::max(16, max_batch) * cols));
    FillCodes<<<kFillBlocks, 256, 0, stream>>>(reinterpret_cast<uint32_t*>(x8),
                                               std::max(16, max_batch) * cols / 4, 11, true);
    size_t lt_ws_bytes = 64 << 20;
    void* lt_ws = Alloc<void>(lt_ws_bytes);
    for (int b : o.batches) {
      int n = b;
      std::string note = "e4m3 tensor TN";
      for (int attempt = 0; attempt < 2; ++attempt) {
        cublasLtMatmulDesc_t desc;
        CHECK_CUBLAS(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
        CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
        CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
        const float* sp = scales;
        CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sp, sizeof(sp)));
        CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sp, sizeof(sp)));
        cublasLtMatrixLayout_t la, lb, lc;
        CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, cols, rows, layout.padded_cols()));
        CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, cols, n, cols));
        CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, rows, n, rows));
        cublasLtMatmulPreference_t pref;
        CHECK_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
        CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(
            pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &lt_ws_bytes, sizeof(lt_ws_bytes)));
        cublasLtMatmulHeuristicResult_t heur{};
        int found = 0;
        const cublasStatus_t hs =
            cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 1, &heur, &found);
        if (hs == CUBLAS_STATUS_SUCCESS && found > 0) {
          const float alpha = 1.0f, beta = 0.0f;
          const double us = timer.Median([&](int i) {
            CHECK_CUBLAS(cublasLtMatmul(lt, desc, &alpha, words[i % copies], la, x8, lb, &beta, y, lc,
                                        y, lc, &heur.algo, lt_ws, lt_ws_bytes, stream));
          });
          Report(shape, b, "cublasLt-fp8", note, us, static_cast<double>(code_bytes));
          attempt = 2;
        } else {
          std::printf("  cuBLASLt FP8 has no algorithm for n=%d (status %d)\n", n, hs);
          n = 16;  // FP8 GEMM wants dimensions that are multiples of 16
          note = "e4m3 tensor TN n=16";
        }
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatrixLayoutDestroy(la);
        cublasLtMatrixLayoutDestroy(lb);
        cublasLtMatrixLayoutDestroy(lc);
        cublasLtMatmulDescDestroy(desc);
        if (b >= 16) break;
      }
    }
    CHECK_CUDA(cudaFree(lt_ws));
    CHECK_CUDA(cudaFree(x8));
  }
  for (auto& w : words) CHECK_CUDA(cudaFree(w));

  if (o.baselines) {
    // cuBLAS FP16 and FP32: y = W x with W row-major (so op T on a
    // column-major cols x rows matrix).
    const size_t h_bytes = static_cast<size_t>(rows * cols) * 2;
    const int hc = CopiesFor(h_bytes);
    std::vector<__half*> wh(static_cast<size_t>(hc));
    for (int c = 0; c < hc; ++c) {
      wh[c] = Alloc<__half>(h_bytes);
      FillHalf<<<kFillBlocks, 256, 0, stream>>>(wh[c], rows * cols, 200 + c);
    }
    for (int b : o.batches) {
      const float alpha = 1.0f, beta = 0.0f;
      const double us = timer.Median([&](int i) {
        CHECK_CUBLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, b, cols, &alpha, wh[i % hc],
                                  CUDA_R_16F, cols, x16, CUDA_R_16F, cols, &beta, y, CUDA_R_16F,
                                  rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      });
      Report(shape, b, "cublas-fp16", "gemm f16 in, f32 acc", us, static_cast<double>(h_bytes));
    }
    for (auto* p : wh) CHECK_CUDA(cudaFree(p));

    const size_t f_bytes = static_cast<size_t>(rows * cols) * 4;
    const int fc = CopiesFor(f_bytes);
    std::vector<float*> wf(static_cast<size_t>(fc));
    for (int c = 0; c < fc; ++c) {
      wf[c] = Alloc<float>(f_bytes);
      FillFloat<<<kFillBlocks, 256, 0, stream>>>(wf[c], rows * cols, 300 + c, -1.0f);
    }
    for (int b : o.batches) {
      const float alpha = 1.0f, beta = 0.0f;
      const double us = timer.Median([&](int i) {
        if (b == 1) {
          CHECK_CUBLAS(cublasSgemv(blas, CUBLAS_OP_T, cols, rows, &alpha, wf[i % fc], cols, x32, 1,
                                   &beta, static_cast<float*>(y), 1));
        } else {
          CHECK_CUBLAS(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, b, cols, &alpha,
                                   wf[i % fc], cols, x32, cols, &beta, static_cast<float*>(y), rows));
        }
      });
      Report(shape, b, "cublas-fp32", b == 1 ? "sgemv" : "sgemm", us, static_cast<double>(f_bytes));
    }
    for (auto* p : wf) CHECK_CUDA(cudaFree(p));
  }
  CHECK_CUDA(cudaFree(scales));
  CHECK_CUDA(cudaFree(x16));
  CHECK_CUDA(cudaFree(x32));
  CHECK_CUDA(cudaFree(y));
}

template <typename T, typename F>
std::vector<T> ParseList(const std::string& s, F parse) {
  std::vector<T> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(parse(item));
  return out;
}

void Usage() {
  std::fprintf(stderr,
               "usage: gpu_gemv_bench [--shapes 4096x4096,...] [--batches 1,4,16,64]\n"
               "  [--formats e4m3,e5m2] [--modes none,tensor,row,block128,block128x128]\n"
               "  [--paths native,software] [--kernels auto,mma,wgmma,cublaslt] [--x f16|f32]\n"
               "  [--iters N]\n"
               "  [--no-baselines] [--no-w8a8]\n"
               "  [--no-quantize] [--quantize-saturate on|off]\n"
               "  [--json FILE]\n");
  std::exit(2);
}

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Usage();
      return argv[++i];
    };
    if (a == "--shapes") {
      o.shapes = ParseList<std::pair<int64_t, int64_t>>(next(), [](const std::string& s) {
        const auto x = s.find('x');
        if (x == std::string::npos) Usage();
        return std::make_pair(std::stoll(s.substr(0, x)), std::stoll(s.substr(x + 1)));
      });
    } else if (a == "--batches") {
      o.batches = ParseList<int>(next(), [](const std::string& s) { return std::stoi(s); });
    } else if (a == "--formats") {
      o.formats = ParseList<Fp8Format>(next(), [](const std::string& s) {
        if (s != "e4m3" && s != "e5m2") Usage();
        return s == "e4m3" ? Fp8Format::kE4M3 : Fp8Format::kE5M2;
      });
    } else if (a == "--modes") {
      o.modes = ParseList<ScaleMode>(next(), [](const std::string& s) {
        if (s == "none") return ScaleMode::kNone;
        if (s == "tensor") return ScaleMode::kTensor;
        if (s == "row") return ScaleMode::kRow;
        if (s == "block128") return ScaleMode::kBlock128;
        if (s == "block128x128") return ScaleMode::kBlock128x128;
        Usage();
        return ScaleMode::kNone;
      });
    } else if (a == "--paths") {
      o.paths = ParseList<DecodePath>(next(), [](const std::string& s) {
        if (s != "native" && s != "software") Usage();
        return s == "native" ? DecodePath::kNative : DecodePath::kSoftware;
      });
    } else if (a == "--kernels") {
      o.kernels = ParseList<plume::cuda::GemvKernel>(next(), [](const std::string& s) {
        plume::cuda::GemvKernel k{};
        if (!plume::cuda::ParseGemvKernel(s.c_str(), &k)) {
          std::fprintf(stderr, "unknown kernel %s (auto, mma, wgmma, cublaslt)\n", s.c_str());
          std::exit(2);
        }
        return k;
      });
    } else if (a == "--x") {
      const std::string s = next();
      if (s != "f16" && s != "f32") Usage();
      o.x_dtype = s == "f16" ? DType::kF16 : DType::kF32;
    } else if (a == "--iters") {
      o.iters = std::max(10, std::stoi(next()));
    } else if (a == "--no-quantize") {
      o.quantize = false;
    } else if (a == "--quantize-saturate") {
      const std::string s = next();
      if (s != "on" && s != "off") Usage();
      o.quantize_saturate = s == "on";
    } else if (a == "--no-baselines") {
      o.baselines = false;
    } else if (a == "--no-w8a8") {
      o.w8a8 = false;
    } else if (a == "--json") {
      o.json = next();
    } else {
      Usage();
    }
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = Parse(argc, argv);
  int dev = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
    std::fprintf(stderr, "FAIL: no CUDA device\n");
    return 1;
  }
  std::printf("device: %s, sm_%d%d, %d SMs, L2 %.0f MB; iters %d (median)\n", prop.name,
              prop.major, prop.minor, prop.multiProcessorCount, prop.l2CacheSize / 1e6, o.iters);
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cublasHandle_t blas;
  CHECK_CUBLAS(cublasCreate(&blas));
  CHECK_CUBLAS(cublasSetStream(blas, stream));
  cublasLtHandle_t lt;
  CHECK_CUBLAS(cublasLtCreate(&lt));
  uint32_t* sink = Alloc<uint32_t>(4);

  // The asymptotic read ceiling: 4 GiB read once per launch.
  {
    const size_t bytes = size_t{4} << 30;
    uint4* big = Alloc<uint4>(bytes);
    CHECK_CUDA(cudaMemset(big, 1, bytes));
    Timer timer(stream, std::min(o.iters, 50));
    const double us = timer.Median([&](int) {
      ReadKernel<<<prop.multiProcessorCount * 4, 512, 0, stream>>>(big, bytes / 16, sink);
    });
    Report("4GiB", 0, "read", "ceiling", us, static_cast<double>(bytes));
    CHECK_CUDA(cudaFree(big));
  }
  for (const auto& [rows, cols] : o.shapes) BenchShape(o, rows, cols, stream, blas, lt, sink);

  if (!o.json.empty()) {
    FILE* f = std::fopen(o.json.c_str(), "w");
    if (f == nullptr) {
      std::perror(o.json.c_str());
      return 1;
    }
    std::fprintf(f, "{\"device\": \"%s\", \"iters\": %d, \"results\": [\n", prop.name, o.iters);
    for (size_t i = 0; i < g_rows.size(); ++i) {
      const Row& r = g_rows[i];
      std::fprintf(f,
                   "  {\"shape\": \"%s\", \"batch\": %d, \"kernel\": \"%s\", \"variant\": \"%s\", "
                   "\"median_us\": %.3f, \"weight_bytes\": %.0f, \"gbps\": %.1f}%s\n",
                   r.shape.c_str(), r.batch, r.kernel.c_str(), r.variant.c_str(), r.us,
                   r.weight_bytes, r.weight_bytes / r.us / 1e3, i + 1 < g_rows.size() ? "," : "");
    }
    std::fprintf(f, "]}\n");
    std::fclose(f);
  }
  cublasLtDestroy(lt);
  cublasDestroy(blas);
  return 0;
}
