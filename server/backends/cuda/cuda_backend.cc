#include "server/backends/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <new>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "plume/cuda/fp8_codec.h"
#include "plume/cuda/attention.h"
#include "plume/cuda/gemv.h"
#include "plume/reference/api.h"
#include "plume/reference/attention.h"
#include "server/backends/cuda/cuda_completions.h"
#include "server/backends/cuda/cuda_internal.h"

namespace plume::core {
namespace {

using namespace cuda_internal;

}  // namespace

namespace cuda_internal {

// A GEMV enqueued on a lane: Complete() synchronizes the lane's stream and
// copies staged results out (when y is not pinned); Wait() does that and
// gives the lane back.
class PendingGemv final {
 public:
  struct CopyOut {
    const char* staged = nullptr;  // null: the results went straight to y
    char* y = nullptr;
    int64_t batch = 0;
    size_t row_bytes = 0, stride_bytes = 0;
    double* device_seconds = nullptr;  // GemvArgs::device_seconds
  };
  PendingGemv(CudaBackend::Lane* lane, cudaStream_t stream, CopyOut out)
      : lane_(lane), stream_(stream), out_(out) {}
  ~PendingGemv() { Wait().IgnoreError(); }  // dropped unwaited: nobody to tell
  PendingGemv(const PendingGemv&) = delete;
  PendingGemv& operator=(const PendingGemv&) = delete;

  int lane_index() const { return lane_->index; }

  // The results are in y (or the call failed); the lane stays taken.
  absl::Status Complete() {
    if (completed_ || lane_ == nullptr) return status_;
    completed_ = true;
    status_ = CudaStatus(cudaStreamSynchronize(stream_), "running the GEMV");
    if (status_.ok() && out_.device_seconds != nullptr) {
      float ms = 0;
      status_ = CudaStatus(cudaEventElapsedTime(&ms, lane_->started, lane_->finished),
                           "timing the GEMV");
      if (status_.ok()) *out_.device_seconds = static_cast<double>(ms) * 1e-3;
    }
    if (status_.ok() && out_.staged != nullptr) {
      if (out_.row_bytes == out_.stride_bytes) {
        std::memcpy(out_.y, out_.staged, out_.row_bytes * static_cast<size_t>(out_.batch));
      } else {
        for (int64_t b = 0; b < out_.batch; ++b) {
          std::memcpy(out_.y + b * out_.stride_bytes, out_.staged + b * out_.row_bytes, out_.row_bytes);
        }
      }
    }
    return status_;
  }

  absl::Status Wait() {
    if (lane_ == nullptr) return status_;
    Complete().IgnoreError();
    std::exchange(lane_, nullptr)->busy.release();
    return status_;
  }

 private:
  CudaBackend::Lane* lane_;
  cudaStream_t stream_;
  CopyOut out_;
  bool completed_ = false;
  absl::Status status_;
};

}  // namespace cuda_internal

namespace {

// A GemvAsync call on its lane's completion thread: its device time lives
// here, where the call writes it, until `done` hears it.
class AsyncGemv final : public Completions::Call {
 public:
  explicit AsyncGemv(GemvDoneFn done) : done_(std::move(done)) {}
  double* device_seconds() { return &device_seconds_; }
  GemvDoneFn TakeDone() && { return std::move(done_); }
  void Started(std::unique_ptr<PendingGemv> call) { call_ = std::move(call); }
  // The lane is given back after the callback: a batch's next one, which
  // the callback starts, takes another lane and so is not finished behind
  // this batch's callers on this lane's thread.
  void Finish() override {
    const absl::Status s = call_->Complete();
    done_(s, device_seconds_);
    call_.reset();
  }

 private:
  GemvDoneFn done_;
  double device_seconds_ = -1;
  std::unique_ptr<PendingGemv> call_;
};

}  // namespace

int CudaDeviceCount() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

std::string CudaRuntimeVersion() {
  int v = 0;  // 1000 * major + 10 * minor
  if (cudaRuntimeGetVersion(&v) != cudaSuccess || v <= 0) return "unknown";
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(const CudaBackendOptions& options) {
  const int n = CudaDeviceCount();
  if (n == 0) return absl::FailedPreconditionError("cuda backend: no CUDA device is visible");
  if (options.device < 0 || options.device >= n) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda backend: device ", options.device, " does not exist (", n, " visible)"));
  }
  if (options.lanes < 1) return absl::InvalidArgumentError("cuda backend: lanes must be >= 1");
  if (options.completion_spin_us < 0) {
    return absl::InvalidArgumentError("cuda backend: completion_spin_us must be >= 0");
  }
  if (options.upload_stage_bytes < 0) {
    return absl::InvalidArgumentError("cuda backend: upload_stage_bytes must be >= 0");
  }
  unsigned sync_flag = cudaDeviceScheduleAuto;
  if (options.sync == "spin") {
    sync_flag = cudaDeviceScheduleSpin;
  } else if (options.sync == "yield") {
    sync_flag = cudaDeviceScheduleYield;
  } else if (options.sync == "block") {
    sync_flag = cudaDeviceScheduleBlockingSync;
  } else if (!options.sync.empty() && options.sync != "auto") {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda backend: sync must be auto, spin, yield or block, not \"", options.sync, "\""));
  }
  auto b = std::unique_ptr<CudaBackend>(new CudaBackend());
  b->options_ = options;
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options.device), "selecting the device");
  if (sync_flag != cudaDeviceScheduleAuto) {
    PLUME_RETURN_IF_CUDA(cudaSetDeviceFlags(sync_flag), "setting how threads wait for the device");
  }
  cudaDeviceProp prop{};
  PLUME_RETURN_IF_CUDA(cudaGetDeviceProperties(&prop, options.device), "reading device properties");
  b->device_name_ = prop.name;
  b->cc_ = prop.major * 10 + prop.minor;
  size_t free_bytes = 0, total_bytes = 0;
  PLUME_RETURN_IF_CUDA(cudaMemGetInfo(&free_bytes, &total_bytes), "reading device memory");
  b->total_ = static_cast<int64_t>(total_bytes);
  b->capacity_ = std::max<int64_t>(0, static_cast<int64_t>(free_bytes) - options.reserve_bytes);

  cuda::DecodePath path = cuda::DefaultDecodePath(options.device);
  if (options.decode_path == "software") {
    path = cuda::DecodePath::kSoftware;
  } else if (options.decode_path == "native") {
    if (b->cc_ < 89) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cuda backend: the native FP8 decode needs sm_89 or later; ", prop.name, " is sm_", b->cc_));
    }
    path = cuda::DecodePath::kNative;
  } else if (!options.decode_path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda backend: decode path must be native or software, not \"", options.decode_path, "\""));
  }
  b->decode_path_ = static_cast<int>(path);
  cuda::GemvKernel kernel = cuda::GemvKernel::kAuto;
  if (!options.gemv_kernel.empty() && !cuda::ParseGemvKernel(options.gemv_kernel.c_str(), &kernel)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda backend: GEMV kernel must be auto, mma, wgmma or cublaslt, not \"", options.gemv_kernel,
        "\""));
  }
  if (kernel == cuda::GemvKernel::kWgmma && b->cc_ != 90) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cuda backend: the wgmma GEMV needs sm_90; ", prop.name, " is sm_", b->cc_));
  }
  if (kernel == cuda::GemvKernel::kCublasLt && b->cc_ < 89) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cuda backend: the cuBLASLt FP8 GEMV needs sm_89 or later; ", prop.name, " is sm_", b->cc_));
  }
  if (kernel == cuda::GemvKernel::kCublasLt && !cuda::CublasLtLoadable()) {
    return absl::FailedPreconditionError(
        "cuda backend: the cuBLASLt FP8 GEMV was forced, but libcublasLt could not be opened (is "
        "CUDA's cuBLAS on the library path?)");
  }
  b->gemv_kernel_ = static_cast<int>(kernel);

  for (int i = 0; i < options.lanes; ++i) {
    auto lane = std::make_unique<Lane>();
    PLUME_RETURN_IF_CUDA(cudaStreamCreateWithFlags(&lane->stream, cudaStreamNonBlocking),
                         "creating a stream");
    b->lanes_.push_back(std::move(lane));
  }
  for (int i = 0; i < options.lanes; ++i) {
    b->lanes_[static_cast<size_t>(i)]->index = i;
    b->completions_.push_back(std::make_unique<Completions>(
        options.device, std::chrono::microseconds(options.completion_spin_us)));
  }
  return b;
}

CudaBackend::~CudaBackend() {
  completions_.clear();  // finishes the calls in flight, which hold lanes
  cudaSetDevice(options_.device);
  lanes_.clear();
}

std::string CudaBackend::description() const {
  return absl::StrCat("cuda device ", options_.device, " (", device_name_, ", sm_", cc_, ", ",
                      total_ >> 20, " MiB, ",
                      cuda::DecodePathName(static_cast<cuda::DecodePath>(decode_path_)),
                      " FP8 decode, ", lanes_.size(), " streams)");
}

bool CudaBackend::device_memory(DeviceMemory* out) const {
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaSetDevice(options_.device) != cudaSuccess ||
      cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    return false;
  }
  out->total = static_cast<int64_t>(total_bytes);
  out->used = static_cast<int64_t>(total_bytes - free_bytes);
  return true;
}

CudaBackend::Lane& CudaBackend::AcquireLane() {
  // The first free lane: calls that come one at a time take the same lane,
  // whose completion thread is still polling for them (completion_spin_us).
  for (const auto& lane : lanes_) {
    if (lane->busy.try_acquire()) return *lane;
  }
  static std::atomic<unsigned> next{0};
  Lane& l = *lanes_[next.fetch_add(1, std::memory_order_relaxed) % lanes_.size()];
  l.busy.acquire();
  return l;
}

absl::StatusOr<std::unique_ptr<BackendMatrix>> CudaBackend::Quantize(const MatrixShape& shape,
                                                                     const void* src,
                                                                     DType src_dtype) {
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options_.device), "selecting the device");
  auto m = CudaMatrix::Allocate(shape);
  if (!m.ok()) return m.status();
  // The source goes to the device whole and is quantized there.
  const int64_t src_bytes = shape.rows * shape.cols * DTypeSize(src_dtype);
  const int64_t ws_bytes = AlignUp(
      cuda::QuantizePackWorkspaceBytes(shape.rows, shape.cols, shape.scale_mode), 256);
  DeviceAlloc tmp;
  PLUME_RETURN_IF_CUDA(tmp.Allocate(AlignUp(src_bytes, 256) + ws_bytes + 256),
                       "allocating the upload's source on the device");
  char* d_src = static_cast<char*>(tmp.p);
  char* d_ws = d_src + AlignUp(src_bytes, 256);
  int* d_any = reinterpret_cast<int*>(d_ws + ws_bytes);
  Lane& lane = AcquireLane();
  LaneGuard guard(lane);
  PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(d_src, src, static_cast<size_t>(src_bytes),
                                       cudaMemcpyHostToDevice, lane.stream),
                       "copying the upload to the device");
  PLUME_RETURN_IF_CUDA(cuda::QuantizePack(d_src, src_dtype, shape.rows, shape.cols, shape.format,
                                          shape.scale_mode, shape.saturate, (*m)->words(),
                                          (*m)->scales(), d_ws, lane.stream),
                       "quantizing on the device");
  int any = 0;
  if ((*m)->flags() != nullptr) {
    PLUME_RETURN_IF_CUDA(cudaMemsetAsync(d_any, 0, sizeof(int), lane.stream), "finding NaN codes");
    PLUME_RETURN_IF_CUDA(cuda::FindNanRows((*m)->words(), shape.rows, shape.cols, (*m)->flags(),
                                           d_any, lane.stream),
                         "finding NaN codes");
    PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(&any, d_any, sizeof(int), cudaMemcpyDeviceToHost, lane.stream),
                         "finding NaN codes");
  }
  PLUME_RETURN_IF_CUDA(cudaStreamSynchronize(lane.stream), "quantizing on the device");
  (*m)->set_has_nan(any != 0);
  return std::unique_ptr<BackendMatrix>(std::move(*m));
}

absl::StatusOr<std::unique_ptr<BackendMatrix>> CudaBackend::FromPacked(const MatrixShape& shape,
                                                                       const uint32_t* words,
                                                                       const float* scales) {
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options_.device), "selecting the device");
  auto m = CudaMatrix::Allocate(shape);
  if (!m.ok()) return m.status();
  DeviceAlloc d_any;
  PLUME_RETURN_IF_CUDA(d_any.Allocate(sizeof(int)), "finding NaN codes");
  Lane& lane = AcquireLane();
  LaneGuard guard(lane);
  PLUME_RETURN_IF_CUDA(cudaMemcpyAsync((*m)->words(), words,
                                       static_cast<size_t>(shape.layout().total_words()) * 4,
                                       cudaMemcpyHostToDevice, lane.stream),
                       "copying packed codes to the device");
  if (shape.num_scales() > 0) {
    PLUME_RETURN_IF_CUDA(cudaMemcpyAsync((*m)->scales(), scales,
                                         static_cast<size_t>(shape.num_scales()) * 4,
                                         cudaMemcpyHostToDevice, lane.stream),
                         "copying scales to the device");
  }
  int any = 0;
  if ((*m)->flags() != nullptr) {
    PLUME_RETURN_IF_CUDA(cudaMemsetAsync(d_any.p, 0, sizeof(int), lane.stream), "finding NaN codes");
    PLUME_RETURN_IF_CUDA(cuda::FindNanRows((*m)->words(), shape.rows, shape.cols, (*m)->flags(),
                                           static_cast<int*>(d_any.p), lane.stream),
                         "finding NaN codes");
    PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(&any, d_any.p, sizeof(int), cudaMemcpyDeviceToHost, lane.stream),
                         "finding NaN codes");
  }
  PLUME_RETURN_IF_CUDA(cudaStreamSynchronize(lane.stream), "copying a matrix to the device");
  (*m)->set_has_nan(any != 0);
  return std::unique_ptr<BackendMatrix>(std::move(*m));
}

absl::Status CudaBackend::ReadPacked(const BackendMatrix& m, uint32_t* words, float* scales) {
  const auto& c = static_cast<const CudaMatrix&>(m);
  const MatrixShape& s = m.shape();
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options_.device), "selecting the device");
  Lane& lane = AcquireLane();
  LaneGuard guard(lane);
  PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(words, c.words(), static_cast<size_t>(s.layout().total_words()) * 4,
                                       cudaMemcpyDeviceToHost, lane.stream),
                       "copying packed codes from the device");
  if (s.num_scales() > 0) {
    if (const cudaError_t e = cudaMemcpyAsync(scales, c.scales(), static_cast<size_t>(s.num_scales()) * 4,
                                              cudaMemcpyDeviceToHost, lane.stream);
        e != cudaSuccess) {
      return CopiesDrained(lane.stream, CudaStatus(e, "copying scales from the device"));
    }
  }
  PLUME_RETURN_IF_CUDA(cudaStreamSynchronize(lane.stream), "copying a matrix from the device");
  return absl::OkStatus();
}

absl::Status CudaBackend::ReadPackedRows(const BackendMatrix& m, int64_t row0, int64_t rows,
                                         uint32_t* words, float* scales) {
  const auto& c = static_cast<const CudaMatrix&>(m);
  const MatrixShape& s = m.shape();
  if (absl::Status st = CheckRowRange(s.rows, row0, rows); !st.ok()) return st;
  const int64_t wpr = s.layout().words_per_row();
  const int64_t n = ScalesOfRowsCount(s.scale_mode, s.cols, rows);
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options_.device), "selecting the device");
  Lane& lane = AcquireLane();
  LaneGuard guard(lane);
  PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(words, c.words() + row0 * wpr,
                                       static_cast<size_t>(rows * wpr) * 4, cudaMemcpyDeviceToHost,
                                       lane.stream),
                       "copying packed rows from the device");
  if (n > 0) {
    if (const cudaError_t e =
            cudaMemcpyAsync(scales, c.scales() + ScalesOfRowsStart(s.scale_mode, s.cols, row0),
                            static_cast<size_t>(n) * 4, cudaMemcpyDeviceToHost, lane.stream);
        e != cudaSuccess) {
      return CopiesDrained(lane.stream, CudaStatus(e, "copying the rows' scales from the device"));
    }
  }
  PLUME_RETURN_IF_CUDA(cudaStreamSynchronize(lane.stream), "copying packed rows from the device");
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<HostBuffer>> CudaBackend::AllocateHostBuffer(size_t bytes) {
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options_.device), "selecting the device");
  void* p = nullptr;
  if (const cudaError_t e = cudaHostAlloc(&p, std::max<size_t>(bytes, 1), cudaHostAllocPortable);
      e != cudaSuccess) {
    cudaGetLastError();
    return absl::ResourceExhaustedError(absl::StrCat("cuda backend: cannot allocate ", bytes,
                                                     " bytes of pinned host memory: ",
                                                     cudaGetErrorName(e)));
  }
  return std::unique_ptr<HostBuffer>(new PinnedHostBuffer(p, bytes));
}

std::vector<GemvKernelChoice> CudaBackend::GemvKernels(const BackendMatrix& w) const {
  const auto& m = static_cast<const CudaMatrix&>(w);
  const MatrixShape& s = m.shape();
  std::vector<GemvKernelChoice> out;
  cuda::GemvProblem p;
  static_cast<MatrixView&>(p) = s.view(nullptr, nullptr);  // the shape is what counts here
  p.path = static_cast<cuda::DecodePath>(decode_path_);
  p.kernel = static_cast<cuda::GemvKernel>(gemv_kernel_);
  for (DType x : {DType::kF16, DType::kBF16, DType::kF32, DType::kE4M3, DType::kE5M2}) {
    for (int batch = 1; batch <= 128; batch *= 2) {
      p.x_dtype = x;
      p.batch = batch;
      bool measured = false;
      const cuda::GemvKernel k = cuda::ChosenGemvKernel(p, options_.device, &measured);
      // kAuto back: the forced kernel does not take this problem (cuBLASLt
      // takes FP8 activations only), so such GEMVs fail.
      out.push_back({batch, x, k == cuda::GemvKernel::kAuto ? "unavailable" : cuda::GemvKernelName(k),
                     measured});
    }
  }
  return out;
}

absl::Status CudaBackend::Gemv(const BackendMatrix& w, const GemvArgs& args) {
  auto call = StartGemv(w, args);
  if (!call.ok()) return call.status();
  return (*call)->Wait();
}

void CudaBackend::GemvAsync(const BackendMatrix& w, const GemvArgs& args, GemvDoneFn done) {
  auto async = std::make_unique<AsyncGemv>(std::move(done));
  GemvArgs timed = args;
  timed.device_seconds = async->device_seconds();
  auto call = StartGemv(w, timed);
  if (!call.ok()) {
    // Not started: its caller hears at once, on this thread.
    GemvDoneFn failed = std::move(*async).TakeDone();
    return failed(call.status(), -1);
  }
  Completions& lane_thread = *completions_[static_cast<size_t>((*call)->lane_index())];
  async->Started(std::move(*call));
  lane_thread.Add(std::move(async));
}

absl::StatusOr<std::unique_ptr<PendingGemv>> CudaBackend::StartGemv(const BackendMatrix& w,
                                                                    const GemvArgs& args) {
  const auto& m = static_cast<const CudaMatrix&>(w);
  const MatrixShape& s = m.shape();
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options_.device), "selecting the device");
  const int64_t y_elem = DTypeSize(args.y_dtype);
  const int64_t stride = args.y_stride != 0 ? args.y_stride : s.rows;
  const int64_t x_bytes = args.batch * s.cols * DTypeSize(args.x_dtype);
  const int64_t y_bytes = args.batch * s.rows * y_elem;  // packed, on the device
  const int64_t x_off = 0, y_off = AlignUp(x_bytes, 256);
  // Activations or results in pinned memory of ours go straight between it
  // and the device; anything else through the lane's pinned staging.
  const PinnedRegistry& pinned = PinnedRegistry::Get();
  const bool x_direct = pinned.Contains(args.x, static_cast<size_t>(x_bytes));
  const bool y_direct =
      pinned.Contains(args.y, static_cast<size_t>(((args.batch - 1) * stride + s.rows) * y_elem));
  if (x_direct && y_direct) zero_copy_gemvs_.fetch_add(1, std::memory_order_relaxed);
  // plume's kernels store packed results of up to kKernelWrittenResultBytes
  // straight into a pinned y (mapped host memory: the same pointer on the
  // device), so no copy-out follows them: on an H200 a backend call's device
  // time at 8192^2 batch 1 went from 35-40 to 31-32 us. cuBLASLt, which FP8
  // activations may take, writes through the lane's buffer as before.
  const cuda::GemvKernel kernel = static_cast<cuda::GemvKernel>(gemv_kernel_);
  const bool y_by_kernel = options_.kernels_write_pinned_results && y_direct && stride == s.rows &&
                           y_bytes <= kKernelWrittenResultBytes && !IsFp8(args.x_dtype) &&
                           kernel != cuda::GemvKernel::kCublasLt;

  Lane& lane = AcquireLane();
  LaneGuard guard(lane);
  // Copies already enqueued must finish before the lane is given back.
  auto fail = [&](absl::Status st) { return CopiesDrained(lane.stream, std::move(st)); };
  if (!x_direct || !y_direct) {
    if (absl::Status st = lane.EnsurePinned(y_off + y_bytes); !st.ok()) return st;
  }
  if (absl::Status st = Lane::Ensure(lane.dev, lane.dev_bytes, y_off + y_bytes, false, lane.stream);
      !st.ok()) {
    return st;
  }
  if (args.device_seconds != nullptr) {
    if (absl::Status st = lane.EnsureEvents(); !st.ok()) return st;
  }
  char* h = static_cast<char*>(lane.pinned);
  char* d = static_cast<char*>(lane.dev.p);

  // The call's problem in device memory: the vectors move to the lane's buffers.
  cuda::GemvProblem p;
  static_cast<plume::GemvProblem&>(p) = {s.view(m.words(), m.scales()), args};
  p.x = d + x_off;
  p.y = y_by_kernel ? args.y : d + y_off;
  p.nan_rows = m.nan_rows();
  p.path = static_cast<cuda::DecodePath>(decode_path_);
  p.kernel = kernel;

  const void* x_src = args.x;
  if (!x_direct) {
    std::memcpy(h + x_off, args.x, static_cast<size_t>(x_bytes));
    x_src = h + x_off;
  }
  if (args.device_seconds != nullptr) {
    if (const cudaError_t e = cudaEventRecord(lane.started, lane.stream); e != cudaSuccess) {
      return fail(CudaStatus(e, "timing the GEMV"));
    }
  }
  if (const cudaError_t e = cudaMemcpyAsync(d + x_off, x_src, static_cast<size_t>(x_bytes),
                                            cudaMemcpyHostToDevice, lane.stream);
      e != cudaSuccess) {
    return fail(CudaStatus(e, "copying activations to the device"));
  }
  // One plan: the kernel asks for its workspace once it knows the size.
  absl::Status ws_status;
  const cudaError_t launched = cuda::Gemv(
      p,
      [&](int64_t need) -> void* {
        ws_status = Lane::Ensure(lane.ws, lane.ws_bytes, need, true, lane.stream);
        return ws_status.ok() ? lane.ws.p : nullptr;
      },
      lane.stream);
  if (!ws_status.ok()) return fail(ws_status);
  if (launched != cudaSuccess) return fail(CudaStatus(launched, "launching the GEMV"));

  PendingGemv::CopyOut out;
  out.y = static_cast<char*>(args.y);
  out.batch = args.batch;
  out.row_bytes = static_cast<size_t>(s.rows * y_elem);
  out.stride_bytes = static_cast<size_t>(stride * y_elem);
  cudaError_t e = cudaSuccess;
  if (y_by_kernel) {
    // Nothing to copy: the kernel stored the results in y.
  } else if (!y_direct) {
    out.staged = h + y_off;
    e = cudaMemcpyAsync(h + y_off, d + y_off, static_cast<size_t>(y_bytes), cudaMemcpyDeviceToHost,
                        lane.stream);
  } else if (stride == s.rows) {
    e = cudaMemcpyAsync(args.y, d + y_off, static_cast<size_t>(y_bytes), cudaMemcpyDeviceToHost,
                        lane.stream);
  } else {  // a row shard: its rows of each result vector
    e = cudaMemcpy2DAsync(args.y, out.stride_bytes, d + y_off, out.row_bytes, out.row_bytes,
                          static_cast<size_t>(args.batch), cudaMemcpyDeviceToHost, lane.stream);
  }
  if (e != cudaSuccess) return fail(CudaStatus(e, "copying results from the device"));
  if (args.device_seconds != nullptr) {
    if (const cudaError_t r = cudaEventRecord(lane.finished, lane.stream); r != cudaSuccess) {
      return fail(CudaStatus(r, "timing the GEMV"));
    }
    out.device_seconds = args.device_seconds;
  }
  if (y_by_kernel) kernel_written_results_.fetch_add(1, std::memory_order_relaxed);
  return std::make_unique<PendingGemv>(guard.release(), lane.stream, out);
}

}  // namespace plume::core
