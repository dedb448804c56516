// The GEMV through cuBLASLt's FP8 GEMM (gemv_cublaslt.h). The product is
// D[rows][n] = alpha * a_scale * W x^T in cuBLASLt's column-major terms: A is
// the packed codes read as a cols x rows column-major matrix (plume's
// row-major rows, padded to 16 codes, which for cols % 16 == 0 is no padding)
// with op T, B the activations as cols x n column-major (x[b][cols]) with op
// N: the "TN" form FP8 GEMMs require. D is y[b][rows] column-major.
//  - alpha is the activations' x_scale; TENSOR passes its scale as A's scale
//    pointer; ROW runs with no A scale, D in F32 in the workspace (rows
//    padded to 16 floats), and a small epilogue multiplies each row by its
//    scale while converting to y's dtype.
//  - Where D straight into y has no algorithm (y's rows not a multiple of 16
//    bytes, say), it is staged the same way; batches with no algorithm of
//    their own are then padded to a multiple of 16 vectors (x copied into the
//    workspace, the tail zeroed).
//  - E4M3 NaN codes are NaN to the tensor cores, so NaN rows come out NaN
//    with no help from nan_rows.
//  - cuBLASLt is opened with dlopen on first use, not linked: its thread-
//    local storage (about 92 KiB) would otherwise be part of every thread's
//    static TLS, and threads with small stacks (civetweb's, under the metrics
//    endpoint) could no longer be created. Without the library this path is
//    unavailable, as on a GPU older than sm_89.
#include <cublasLt.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "plume/cuda/check.h"
#include "fp8_regs.cuh"
#include "gemv_cublaslt.h"

namespace plume::cuda::lt_gemv {
namespace {

// The most workspace cuBLASLt's heuristic may ask for (its documentation
// recommends 32 MiB on Hopper); a plan holds only what its algorithm needs.
constexpr size_t kMaxLtWorkspace = size_t{32} << 20;
constexpr int kMaxDevices = 64;
constexpr int kFinishThreads = 256;

cudaError_t FromCublas(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return cudaSuccess;
    case CUBLAS_STATUS_NOT_SUPPORTED:
    case CUBLAS_STATUS_ARCH_MISMATCH: return cudaErrorNotSupported;
    case CUBLAS_STATUS_ALLOC_FAILED: return cudaErrorMemoryAllocation;
    case CUBLAS_STATUS_INVALID_VALUE: return cudaErrorInvalidValue;
    case CUBLAS_STATUS_NOT_INITIALIZED: return cudaErrorInitializationError;
    case CUBLAS_STATUS_EXECUTION_FAILED: return cudaErrorLaunchFailure;
    default: return cudaErrorUnknown;  // internal, mapping, license: still an error
  }
}

#define PLUME_CUBLAS_TRY(expr) PLUME_CUDA_TRY(FromCublas(expr))

// The cuBLASLt functions this path calls (the *_internal ones are what the
// header's inline Init wrappers call).
struct LtApi {
  decltype(&cublasLtCreate) create = nullptr;
  decltype(&cublasLtMatmulDescInit_internal) desc_init = nullptr;
  decltype(&cublasLtMatmulDescSetAttribute) desc_set = nullptr;
  decltype(&cublasLtMatrixLayoutInit_internal) layout_init = nullptr;
  decltype(&cublasLtMatmulPreferenceInit_internal) pref_init = nullptr;
  decltype(&cublasLtMatmulPreferenceSetAttribute) pref_set = nullptr;
  decltype(&cublasLtMatmulAlgoGetHeuristic) heuristic = nullptr;
  decltype(&cublasLtMatmul) matmul = nullptr;
};

template <class F>
bool Bind(void* lib, const char* name, F* out) {
  *out = reinterpret_cast<F>(dlsym(lib, name));
  return *out != nullptr;
}

// The library of the cuBLAS major version this was built against, opened
// once; null when it cannot be opened or lacks a function.
const LtApi* Lt() {
  static const LtApi* api = []() -> const LtApi* {
    const std::string name = "libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR);
    void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) return nullptr;
    static LtApi a;
    const bool ok = Bind(lib, "cublasLtCreate", &a.create) &&
                    Bind(lib, "cublasLtMatmulDescInit_internal", &a.desc_init) &&
                    Bind(lib, "cublasLtMatmulDescSetAttribute", &a.desc_set) &&
                    Bind(lib, "cublasLtMatrixLayoutInit_internal", &a.layout_init) &&
                    Bind(lib, "cublasLtMatmulPreferenceInit_internal", &a.pref_init) &&
                    Bind(lib, "cublasLtMatmulPreferenceSetAttribute", &a.pref_set) &&
                    Bind(lib, "cublasLtMatmulAlgoGetHeuristic", &a.heuristic) &&
                    Bind(lib, "cublasLtMatmul", &a.matmul);
    return ok ? &a : nullptr;  // the library stays open for the process
  }();
  return api;
}

// cuBLASLt's type for an FP8 operand; cudaErrorInvalidValue for anything
// else.
cudaError_t Fp8Type(DType t, cudaDataType_t* out) {
  switch (t) {
    case DType::kE4M3: *out = CUDA_R_8F_E4M3; return cudaSuccess;
    case DType::kE5M2: *out = CUDA_R_8F_E5M2; return cudaSuccess;
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16: return cudaErrorInvalidValue;
  }
  return cudaErrorInvalidValue;
}

// cuBLASLt's type for the weights' format; cudaErrorInvalidValue for a
// format it does not know.
cudaError_t WeightType(Fp8Format f, cudaDataType_t* out) {
  switch (f) {
    case Fp8Format::kE4M3: *out = CUDA_R_8F_E4M3; return cudaSuccess;
    case Fp8Format::kE5M2: *out = CUDA_R_8F_E5M2; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

// cuBLASLt's type for a result dtype; cudaErrorInvalidValue for anything else.
cudaError_t OutType(DType t, cudaDataType_t* out) {
  switch (t) {
    case DType::kF32: *out = CUDA_R_32F; return cudaSuccess;
    case DType::kF16: *out = CUDA_R_16F; return cudaSuccess;
    case DType::kBF16: *out = CUDA_R_16BF; return cudaSuccess;
    case DType::kE4M3:
    case DType::kE5M2: return cudaErrorInvalidValue;
  }
  return cudaErrorInvalidValue;
}

// Whether this path applies a scale mode: cudaSuccess for NONE, TENSOR and
// ROW, cudaErrorNotSupported for the block modes, cudaErrorInvalidValue for
// a value it does not know.
cudaError_t ScaleModeTaken(ScaleMode m) {
  switch (m) {
    case ScaleMode::kNone:
    case ScaleMode::kTensor:
    case ScaleMode::kRow: return cudaSuccess;
    case ScaleMode::kBlock128:
    case ScaleMode::kBlock128x128: return cudaErrorNotSupported;
  }
  return cudaErrorInvalidValue;
}

// The largest power of two up to 256 that divides the address.
int AlignmentOf(const void* ptr) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(ptr);
  int align = 256;
  while (align > 1 && a % static_cast<uintptr_t>(align) != 0) align /= 2;
  return align;
}

int64_t AlignUp(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

// One matmul configuration: what the heuristic's answer depends on.
struct Key {
  int device = 0;
  int64_t rows = 0, cols = 0, n = 0, ldd = 0;
  cudaDataType_t a = CUDA_R_8F_E4M3, b = CUDA_R_8F_E4M3, d = CUDA_R_32F;
  bool a_scale = false;
  int align_a = 256, align_b = 256, align_d = 256;

  auto Tie() const {
    return std::tie(device, rows, cols, n, ldd, a, b, d, a_scale, align_a, align_b, align_d);
  }
  bool operator<(const Key& o) const { return Tie() < o.Tie(); }
};

// The heuristic's answer for a Key (found false: no algorithm), kept for the
// life of the process.
struct Entry {
  Key key;
  cublasLtHandle_t handle = nullptr;
  bool found = false;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
};

std::mutex g_mu;
cublasLtHandle_t g_handles[kMaxDevices];                 // guarded by g_mu
std::map<Key, std::unique_ptr<Entry>> g_entries;         // guarded by g_mu

// The device's handle, created on first use with `device` made current for
// the call (the caller's current device is restored).
cudaError_t HandleFor(int device, cublasLtHandle_t* out) {
  if (device < 0 || device >= kMaxDevices) return cudaErrorInvalidDevice;
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_handles[device] == nullptr) {
    int current = 0;
    PLUME_CUDA_TRY(cudaGetDevice(&current));
    if (current != device) PLUME_CUDA_TRY(cudaSetDevice(device));
    const cudaError_t made = FromCublas(Lt()->create(&g_handles[device]));
    if (current != device) PLUME_CUDA_TRY(cudaSetDevice(current));
    PLUME_CUDA_TRY(made);
  }
  *out = g_handles[device];
  return cudaSuccess;
}

// A matmul's descriptors, built on the stack for each call (no allocation,
// nothing shared between threads); only the algorithm is cached.
struct Descs {
  cublasLtMatmulDescOpaque_t op;
  cublasLtMatrixLayoutOpaque_t a, b, d;
};

cudaError_t MakeDescs(const Key& k, const float* a_scale, Descs* out) {
  PLUME_CUBLAS_TRY(Lt()->desc_init(&out->op, sizeof(out->op), CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  PLUME_CUBLAS_TRY(
      Lt()->desc_set(&out->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  PLUME_CUBLAS_TRY(
      Lt()->desc_set(&out->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  if (k.a_scale) {
    PLUME_CUBLAS_TRY(Lt()->desc_set(
        &out->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale, sizeof(a_scale)));
  }
  PLUME_CUBLAS_TRY(Lt()->layout_init(&out->a, sizeof(out->a), k.a, static_cast<uint64_t>(k.cols),
                                            static_cast<uint64_t>(k.rows), k.cols));
  PLUME_CUBLAS_TRY(Lt()->layout_init(&out->b, sizeof(out->b), k.b, static_cast<uint64_t>(k.cols),
                                            static_cast<uint64_t>(k.n), k.cols));
  PLUME_CUBLAS_TRY(Lt()->layout_init(&out->d, sizeof(out->d), k.d, static_cast<uint64_t>(k.rows),
                                            static_cast<uint64_t>(k.n), k.ldd));
  return cudaSuccess;
}

// A valid scale for the heuristic's descriptor: the answer is then the same
// whichever call asks first (ChosenGemvKernel asks with no matrix at hand).
__device__ float g_unit_scale = 1.0f;

cudaError_t AskHeuristic(const Key& k, Entry* e) {
  const float* a_scale = nullptr;
  if (k.a_scale) {
    void* unit = nullptr;
    PLUME_CUDA_TRY(cudaGetSymbolAddress(&unit, g_unit_scale));
    a_scale = static_cast<const float*>(unit);
  }
  Descs ds;
  PLUME_CUDA_TRY(MakeDescs(k, a_scale, &ds));
  cublasLtMatmulPreferenceOpaque_t pref;
  PLUME_CUBLAS_TRY(Lt()->pref_init(&pref, sizeof(pref)));
  const size_t max_ws = kMaxLtWorkspace;
  PLUME_CUBLAS_TRY(Lt()->pref_set(
      &pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_ws, sizeof(max_ws)));
  const uint32_t align[4] = {uint32_t(k.align_a), uint32_t(k.align_b), uint32_t(k.align_d),
                             uint32_t(k.align_d)};
  const cublasLtMatmulPreferenceAttributes_t attr[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  for (int i = 0; i < 4; ++i) {
    PLUME_CUBLAS_TRY(Lt()->pref_set(&pref, attr[i], &align[i], sizeof(uint32_t)));
  }
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t s = Lt()->heuristic(e->handle, &ds.op, &ds.a, &ds.b, &ds.d,
                                                          &ds.d, &pref, 1, &result, &found);
  if (s == CUBLAS_STATUS_NOT_SUPPORTED || (s == CUBLAS_STATUS_SUCCESS && found == 0)) {
    e->found = false;  // no algorithm for this configuration
    return cudaSuccess;
  }
  PLUME_CUBLAS_TRY(s);
  PLUME_CUBLAS_TRY(result.state);
  e->found = true;
  e->algo = result.algo;
  e->workspace = result.workspaceSize;
  return cudaSuccess;
}

// The cached answer for k, asking the heuristic on the first use. The
// returned entry lives as long as the process; there is one per (device,
// shape, batch, dtypes, scale, alignment) in use, a small set in practice.
cudaError_t Find(const Key& k, const Entry** out) {
  {
    std::lock_guard<std::mutex> lock(g_mu);
    if (auto it = g_entries.find(k); it != g_entries.end()) {
      *out = it->second.get();
      return cudaSuccess;
    }
  }
  auto e = std::make_unique<Entry>();
  e->key = k;
  PLUME_CUDA_TRY(HandleFor(k.device, &e->handle));
  PLUME_CUDA_TRY(AskHeuristic(k, e.get()));
  std::lock_guard<std::mutex> lock(g_mu);
  if (auto it = g_entries.find(k); it != g_entries.end()) {  // asked by another caller meanwhile
    *out = it->second.get();
    return cudaSuccess;
  }
  *out = e.get();
  g_entries.emplace(k, std::move(e));
  return cudaSuccess;
}

// y[b][r] = d[b][r] (times row r's scale when there are row scales),
// converted to y's dtype; d is [batch][ldd] F32, y [batch][rows].
__global__ void __launch_bounds__(kFinishThreads)
    FinishKernel(const float* d, int64_t ldd, int64_t rows, int64_t total,
                 const float* row_scales, void* y, DType y_dtype) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t b = i / rows, r = i - b * rows;
    float v = d[b * ldd + r];
    if (row_scales != nullptr) v *= __ldg(row_scales + r);
    Store(y, y_dtype, i, v);
  }
}

}  // namespace

bool Takes(const GemvProblem& p) {
  cudaDataType_t t;
  return Fp8Type(p.x_dtype, &t) == cudaSuccess && OutType(p.y_dtype, &t) == cudaSuccess &&
         ScaleModeTaken(p.scale_mode) == cudaSuccess &&
         !(p.format == Fp8Format::kE5M2 && p.x_dtype == DType::kE5M2) && p.rows > 0 &&
         p.cols > 0 && p.cols % 16 == 0;
}

cudaError_t MakePlan(const GemvProblem& p, int device, int cc, int64_t reserved, Plan* out) {
  PLUME_CUDA_TRY(ScaleModeTaken(p.scale_mode));
  Key k;
  k.device = device;
  k.rows = p.rows;
  k.cols = p.cols;
  PLUME_CUDA_TRY(WeightType(p.format, &k.a));
  if (Fp8Type(p.x_dtype, &k.b) != cudaSuccess) return cudaErrorNotSupported;  // not W8A8
  cudaDataType_t y_type;
  PLUME_CUDA_TRY(OutType(p.y_dtype, &y_type));
  if (!Takes(p) || !Runs(cc) || p.batch <= 0 || Lt() == nullptr) return cudaErrorNotSupported;
  k.a_scale = p.scale_mode == ScaleMode::kTensor;
  k.align_a = AlignmentOf(p.words);
  if (k.align_a < 16) return cudaErrorNotSupported;
  const bool row = p.scale_mode == ScaleMode::kRow;
  // The routes, cheapest first: results straight into y (not ROW, y
  // 16-byte aligned); through F32 in the workspace, its rows padded to 16
  // (ROW, or when y's rows are not a multiple of 16 bytes); and with the
  // batch padded to 16 vectors too.
  for (int route = 0; route < 3; ++route) {
    Plan pl;
    pl.padded = route == 2;
    pl.staged = route > 0;
    if (route == 0 && (row || AlignmentOf(p.y) < 16)) continue;
    if (!pl.padded && AlignmentOf(p.x) < 16) continue;  // padded copies x to an aligned place
    pl.n = pl.padded ? AlignUp(p.batch, 16) : p.batch;
    pl.ldd = pl.staged ? AlignUp(p.rows, 16) : p.rows;
    k.n = pl.n;
    k.ldd = pl.ldd;
    k.align_b = pl.padded ? 256 : AlignmentOf(p.x);
    k.d = pl.staged ? CUDA_R_32F : y_type;
    k.align_d = pl.staged ? 256 : AlignmentOf(p.y);
    const Entry* e = nullptr;
    PLUME_CUDA_TRY(Find(k, &e));
    if (!e->found) continue;
    pl.entry = e;
    int64_t off = AlignUp(reserved, 256);
    if (pl.padded) {
      pl.off_x = off;
      off += AlignUp(pl.n * p.cols, 256);
    }
    if (pl.staged) {
      pl.off_d = off;
      off += AlignUp(pl.n * pl.ldd * int64_t{sizeof(float)}, 256);
    }
    pl.off_lt = off;
    pl.lt_bytes = AlignUp(static_cast<int64_t>(e->workspace), 256);
    pl.total = pl.off_lt + pl.lt_bytes;
    *out = pl;
    return cudaSuccess;
  }
  return cudaErrorNotSupported;
}

cudaError_t Launch(const GemvProblem& p, const Plan& pl, void* workspace, cudaStream_t stream) {
  const auto* e = static_cast<const Entry*>(pl.entry);
  // The plan's staged buffers were planned 256-byte aligned (as cudaMalloc's are).
  if (e == nullptr || workspace == nullptr || AlignmentOf(workspace) < 256) {
    return cudaErrorInvalidValue;
  }
  char* ws = static_cast<char*>(workspace);
  const void* b = p.x;
  if (pl.padded) {
    const size_t x_bytes = static_cast<size_t>(p.batch * p.cols);
    PLUME_CUDA_TRY(cudaMemcpyAsync(ws + pl.off_x, p.x, x_bytes, cudaMemcpyDeviceToDevice, stream));
    PLUME_CUDA_TRY(cudaMemsetAsync(ws + pl.off_x + x_bytes, 0,
                                   static_cast<size_t>((pl.n - p.batch) * p.cols), stream));
    b = ws + pl.off_x;
  }
  void* d = pl.staged ? static_cast<void*>(ws + pl.off_d) : p.y;
  Descs ds;
  PLUME_CUDA_TRY(MakeDescs(e->key, p.scales, &ds));
  const float alpha = p.x_scale, beta = 0.0f;
  PLUME_CUBLAS_TRY(Lt()->matmul(e->handle, &ds.op, &alpha, p.words, &ds.a, b, &ds.b, &beta, d,
                                  &ds.d, d, &ds.d, &e->algo, pl.lt_bytes > 0 ? ws + pl.off_lt : nullptr,
                                  static_cast<size_t>(pl.lt_bytes), stream));
  if (!pl.staged) return cudaSuccess;
  const int64_t total = p.batch * p.rows;
  const int blocks = static_cast<int>(std::min<int64_t>((total + kFinishThreads - 1) / kFinishThreads, 4096));
  FinishKernel<<<blocks, kFinishThreads, 0, stream>>>(
      static_cast<const float*>(d), pl.ldd, p.rows, total,
      p.scale_mode == ScaleMode::kRow ? p.scales : nullptr, p.y, p.y_dtype);
  PLUME_CUDA_TRY_LAUNCH();
  return cudaSuccess;
}

}  // namespace plume::cuda::lt_gemv

namespace plume::cuda {

bool CublasLtLoadable() { return lt_gemv::Lt() != nullptr; }

}  // namespace plume::cuda
