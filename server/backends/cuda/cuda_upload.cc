// Streamed uploads on the CUDA backend (CudaBackend::BeginRowQuantize).
//
// Rows arrive from the network in host memory that the caller reuses once
// AddRows returns. They are copied into one of two pinned host buffers of
// whole rows; a full buffer is sent to a device window on the quantizer's
// own stream and quantized there straight into the resident matrix (the
// codes of rows r0.. start at word r0 * words_per_row, their scales at
// r0 * scales_per_row: every mode streamed here is row-local), while the
// other buffer fills. An event per buffer says when its copy to the device
// is done and it may be refilled. The device window is reused in stream
// order, so one suffices. Nothing waits for the device except a refill of a
// buffer still in flight and Finish.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "plume/cuda/fp8_codec.h"
#include "plume/cuda/gemv.h"
#include "server/backends/cuda/cuda_internal.h"

namespace plume::core {
namespace {

using namespace cuda_internal;

class CudaRowQuantizer final : public RowQuantizer {
 public:
  static absl::StatusOr<std::unique_ptr<CudaRowQuantizer>> Create(int device,
                                                                  const MatrixShape& shape,
                                                                  DType src_dtype,
                                                                  int64_t stage_bytes) {
    auto m = CudaMatrix::Allocate(shape);
    if (!m.ok()) return m.status();
    auto q = std::unique_ptr<CudaRowQuantizer>(new CudaRowQuantizer(device, std::move(*m), src_dtype));
    q->row_bytes_ = shape.cols * DTypeSize(src_dtype);
    q->rows_cap_ = std::clamp<int64_t>(stage_bytes / 2 / std::max<int64_t>(q->row_bytes_, 1), 1,
                                       shape.rows);
    const int64_t buf_bytes = q->rows_cap_ * q->row_bytes_;
    const int64_t src_bytes = AlignUp(buf_bytes, 256);
    const int64_t ws_bytes =
        AlignUp(cuda::QuantizePackWorkspaceBytes(q->rows_cap_, shape.cols, shape.scale_mode), 256);
    PLUME_RETURN_IF_CUDA(q->dev_.Allocate(src_bytes + ws_bytes + 256),
                         "allocating the upload's device window");
    q->d_src_ = static_cast<char*>(q->dev_.p);
    q->d_ws_ = q->d_src_ + src_bytes;
    q->d_any_ = reinterpret_cast<int*>(q->d_ws_ + ws_bytes);
    PLUME_RETURN_IF_CUDA(cudaStreamCreateWithFlags(&q->stream_, cudaStreamNonBlocking),
                         "creating the upload's stream");
    for (Buffer& b : q->bufs_) {
      PLUME_RETURN_IF_CUDA(cudaEventCreateWithFlags(&b.copied, cudaEventDisableTiming),
                           "creating the upload's events");
      if (const cudaError_t e = cudaHostAlloc(&b.host, static_cast<size_t>(buf_bytes),
                                              cudaHostAllocDefault);
          e != cudaSuccess) {
        b.host = nullptr;
        cudaGetLastError();
        return absl::ResourceExhaustedError(
            absl::StrCat("cuda backend: cannot pin ", buf_bytes,
                         " bytes of host memory to stage the upload: ", cudaGetErrorName(e)));
      }
    }
    q->host_bytes_ = 2 * buf_bytes;
    PLUME_RETURN_IF_CUDA(cudaMemsetAsync(q->d_any_, 0, sizeof(int), q->stream_), "finding NaN codes");
    return q;
  }

  ~CudaRowQuantizer() override {
    // Nobody to report to here; errors are cleared so that they cannot
    // surface at an unrelated call. The stream is drained first: a copy in
    // flight may still read a pinned buffer.
    if (cudaSetDevice(device_) != cudaSuccess) cudaGetLastError();
    if (stream_ != nullptr && cudaStreamSynchronize(stream_) != cudaSuccess) cudaGetLastError();
    for (Buffer& b : bufs_) {
      if (b.host != nullptr && cudaFreeHost(b.host) != cudaSuccess) cudaGetLastError();
      if (b.copied != nullptr) cudaEventDestroy(b.copied);
    }
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  int64_t host_staging_bytes() const override { return host_bytes_; }

 protected:
  // Rows arrive in order (RowQuantizer checks the range): row0 is always
  // the first row not yet gathered.
  absl::Status Quantize(const void* src, int64_t /*row0*/, int64_t rows) override {
    if (!failed_.ok()) return failed_;
    PLUME_RETURN_IF_CUDA(cudaSetDevice(device_), "selecting the device");
    const char* from = static_cast<const char*>(src);
    for (int64_t done = 0; done < rows;) {
      Buffer& b = bufs_[cur_];
      if (fill_ == 0) {
        // Its previous copy to the device must be done before it is refilled
        // (an event never recorded counts as done).
        if (absl::Status st = Fail(cudaEventSynchronize(b.copied), "copying upload rows to the device");
            !st.ok()) {
          return st;
        }
      }
      const int64_t n = std::min(rows_cap_ - fill_, rows - done);
      std::memcpy(static_cast<char*>(b.host) + fill_ * row_bytes_, from + done * row_bytes_,
                  static_cast<size_t>(n * row_bytes_));
      fill_ += n;
      done += n;
      if (fill_ == rows_cap_) {
        if (absl::Status st = Flush(); !st.ok()) return st;
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<BackendMatrix>> Take() override {
    if (!failed_.ok()) return failed_;
    PLUME_RETURN_IF_CUDA(cudaSetDevice(device_), "selecting the device");
    if (absl::Status st = Flush(); !st.ok()) return st;
    int any = 0;
    PLUME_RETURN_IF_CUDA(cudaMemcpyAsync(&any, d_any_, sizeof(int), cudaMemcpyDeviceToHost, stream_),
                         "finding NaN codes");
    PLUME_RETURN_IF_CUDA(cudaStreamSynchronize(stream_), "quantizing on the device");
    m_->set_has_nan(any != 0);
    return std::unique_ptr<BackendMatrix>(std::move(m_));
  }

 private:
  struct Buffer {
    void* host = nullptr;             // pinned, rows_cap_ rows
    cudaEvent_t copied = nullptr;     // recorded after its copy to the device
  };

  CudaRowQuantizer(int device, std::unique_ptr<CudaMatrix> m, DType src_dtype)
      : RowQuantizer(m->shape().rows), device_(device), m_(std::move(m)), src_dtype_(src_dtype) {}

  // Keeps the first failure: once a launch failed, the matrix is incomplete
  // and every later call reports the same error.
  absl::Status Fail(cudaError_t e, const char* what) {
    if (e != cudaSuccess && failed_.ok()) failed_ = CudaStatus(e, what);
    return failed_;
  }

  // Sends the rows gathered in the current buffer to the device, quantizes
  // them there and switches to the other buffer. Returns without waiting.
  absl::Status Flush() {
    if (fill_ == 0) return absl::OkStatus();
    const MatrixShape& s = m_->shape();
    const int64_t words_per_row = s.layout().words_per_row();
    const int64_t scales_per_row = s.num_scales() / s.rows;
    const int64_t r0 = flushed_rows_;
    Buffer& b = bufs_[cur_];
    if (absl::Status st = Fail(cudaMemcpyAsync(d_src_, b.host, static_cast<size_t>(fill_ * row_bytes_),
                                               cudaMemcpyHostToDevice, stream_),
                               "copying upload rows to the device");
        !st.ok()) {
      return st;
    }
    if (absl::Status st = Fail(cudaEventRecord(b.copied, stream_), "copying upload rows to the device");
        !st.ok()) {
      return st;
    }
    if (absl::Status st = Fail(
            cuda::QuantizePack(d_src_, src_dtype_, fill_, s.cols, s.format, s.scale_mode, s.saturate,
                               m_->words() + r0 * words_per_row,
                               scales_per_row > 0 ? m_->scales() + r0 * scales_per_row : m_->scales(),
                               d_ws_, stream_),
            "quantizing on the device");
        !st.ok()) {
      return st;
    }
    if (m_->flags() != nullptr) {
      if (absl::Status st = Fail(cuda::FindNanRows(m_->words() + r0 * words_per_row, fill_, s.cols,
                                                   m_->flags() + r0, d_any_, stream_),
                                 "finding NaN codes");
          !st.ok()) {
        return st;
      }
    }
    flushed_rows_ += fill_;
    fill_ = 0;
    cur_ ^= 1;
    return absl::OkStatus();
  }

  const int device_;
  std::unique_ptr<CudaMatrix> m_;
  const DType src_dtype_;
  int64_t row_bytes_ = 0;
  int64_t rows_cap_ = 1;      // rows per buffer (and per device window)
  int64_t host_bytes_ = 0;    // both pinned buffers
  int64_t flushed_rows_ = 0;  // rows sent to the device
  Buffer bufs_[2];
  int cur_ = 0;               // the buffer filling
  int64_t fill_ = 0;          // rows in it
  absl::Status failed_;
  DeviceAlloc dev_;  // the rows' window, then the quantizer's workspace, then the NaN flag
  char* d_src_ = nullptr;
  char* d_ws_ = nullptr;
  int* d_any_ = nullptr;
  cudaStream_t stream_ = nullptr;
};

}  // namespace

absl::StatusOr<std::unique_ptr<RowQuantizer>> CudaBackend::BeginRowQuantize(
    const MatrixShape& shape, DType src_dtype) {
  if (shape.scale_mode == ScaleMode::kTensor || shape.rows <= 0) {
    return std::unique_ptr<RowQuantizer>();
  }
  PLUME_RETURN_IF_CUDA(cudaSetDevice(options_.device), "selecting the device");
  auto q = CudaRowQuantizer::Create(options_.device, shape, src_dtype, options_.upload_stage_bytes);
  if (!q.ok()) return q.status();
  return std::unique_ptr<RowQuantizer>(std::move(*q));
}

}  // namespace plume::core
