// The CUDA backend: packed FP8 matrices resident in device memory
// (cudaMalloc, never managed memory), quantized on the device, GEMV by the
// kernels in kernels/cuda. Built only when CUDA is (PLUME_HAVE_CUDA).
//
// K/V caches: pages in device memory (kv_layout.h), allocated per append as
// one slab of the new pages, listed in a device page table that grows
// geometrically. Appends are quantized on the host by the reference code
// (the partly filled last page comes back from the device for it) and the
// touched pages copied up. Attention runs the kernels of plume/cuda/attention.h
// (decode for q_len <= 8, the tensor-core prefill above).
//
// Requests run on a few lanes, each a CUDA stream with its own pinned host
// staging and device buffers, so that several GEMVs overlap: one call's
// copies in, kernel and copies out are on its lane's stream, and only that
// stream is synchronized (no device-wide sync, no lock shared by the lanes).
// GemvAsync does not synchronize at all: a completion thread per lane
// finishes its calls as the stream gets there (cuda_completions.h).
// Activations and results in buffers from AllocateHostBuffer (pinned) skip
// the staging: they are copied straight between them and the device.
// Every CUDA call is checked; errors become statuses (out of memory:
// RESOURCE_EXHAUSTED, anything else: INTERNAL with the CUDA error's name).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/core/backend.h"

namespace plume::core {

namespace cuda_internal {
class Completions;
class PendingGemv;
}  // namespace cuda_internal

struct CudaBackendOptions {
  int device = 0;
  // Device memory left out of the matrix budget, for workspaces, staging and
  // the CUDA context's own needs.
  int64_t reserve_bytes = int64_t{1} << 30;
  int lanes = 4;  // concurrent GEMVs (CUDA streams)
  // Decode path override for tests and benchmarks: "" picks the native path
  // on sm_89+ and the software one elsewhere; "native" or "software" forces.
  std::string decode_path;
  // GEMV kernel family: "" or "auto" lets the dispatcher choose (measured on
  // first use per shape and batch bucket); "mma" or "wgmma" (sm_90) forces.
  std::string gemv_kernel;
  // Streamed uploads (BeginRowQuantize): pinned host bytes per upload, in two
  // buffers of whole rows (at least one row each) that take turns, one
  // filling while the other is copied to the device and quantized there.
  int64_t upload_stage_bytes = int64_t{16} << 20;
  // GEMV results and decode outputs of up to 2 MiB for a pinned, packed
  // buffer (AllocateHostBuffer) are stored by plume's kernels straight into
  // it, through the device's mapping of that host memory: no copy-out. Off,
  // they are copied out as for any other buffer (for measurement:
  // bench/gpu_call_bench.cc --direct-results).
  bool kernels_write_pinned_results = true;
  // How long a lane's completion thread keeps polling for the next call
  // once it has none, before it sleeps (cuda_completions.h); 0 sleeps at
  // once. It polls on a core of its own while the lane is in use.
  int completion_spin_us = 500;
  // How a thread waiting for the device waits (cudaSetDeviceFlags): "" or
  // "auto" (the driver's choice: spin while there are more cores than
  // contexts), "spin", "yield" (spin, giving the core to other threads) or
  // "block" (sleep until the device is done).
  std::string sync;
};

// Number of CUDA devices usable here (0 when there is no driver or GPU).
int CudaDeviceCount();

// The CUDA runtime library loaded (cudaRuntimeGetVersion) as "major.minor";
// "unknown" if it cannot say. Needs no driver or GPU.
std::string CudaRuntimeVersion();

class CudaBackend final : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(const CudaBackendOptions& options);
  ~CudaBackend() override;

  std::string_view name() const override { return "cuda"; }
  std::string description() const;
  int64_t memory_capacity_bytes() const override { return capacity_; }
  bool device_memory(DeviceMemory* out) const override;

  absl::StatusOr<std::unique_ptr<BackendMatrix>> Quantize(const MatrixShape& shape,
                                                          const void* src,
                                                          DType src_dtype) override;
  // Streamed uploads (cuda_upload.cc): rows gather in pinned host buffers
  // (upload_stage_bytes in all); each full one is copied to the device and
  // quantized there into the resident matrix while the next one fills.
  absl::StatusOr<std::unique_ptr<RowQuantizer>> BeginRowQuantize(const MatrixShape& shape,
                                                                 DType src_dtype) override;
  absl::StatusOr<std::unique_ptr<BackendMatrix>> FromPacked(const MatrixShape& shape,
                                                            const uint32_t* words,
                                                            const float* scales) override;
  absl::Status ReadPacked(const BackendMatrix& m, uint32_t* words, float* scales) override;
  // The rows' words and scales copied from the device on a lane's stream
  // (the durable store's bounded reads); straight by DMA when the host
  // memory is a pinned buffer of AllocateHostBuffer.
  absl::Status ReadPackedRows(const BackendMatrix& m, int64_t row0, int64_t rows, uint32_t* words,
                              float* scales) override;
  absl::Status Gemv(const BackendMatrix& w, const GemvArgs& args) override;
  // Enqueues the copies and the kernels on a lane and returns; the
  // lane's completion thread (cuda_completions.h) calls `done` once they ran.
  void GemvAsync(const BackendMatrix& w, const GemvArgs& args, GemvDoneFn done) override;
  std::vector<GemvKernelChoice> GemvKernels(const BackendMatrix& m) const override;
  // Pinned (cudaHostAlloc, portable to every device), RESOURCE_EXHAUSTED when
  // it cannot be had. A GEMV or attention call whose inputs or outputs lie in
  // such a buffer copies them straight to and from the device.
  absl::StatusOr<std::unique_ptr<HostBuffer>> AllocateHostBuffer(size_t bytes) override;
  int device_ordinal() const override { return options_.device; }
  // GEMVs whose activations and results were both in pinned buffers (tests).
  int64_t zero_copy_gemvs() const { return zero_copy_gemvs_.load(std::memory_order_relaxed); }
  // GEMV and attention calls whose kernels stored the results straight into
  // a pinned buffer (tests).
  int64_t kernel_written_results() const {
    return kernel_written_results_.load(std::memory_order_relaxed);
  }

  absl::StatusOr<std::unique_ptr<BackendKvCache>> CreateKv(const KvShape& shape) override;
  absl::Status AppendKv(BackendKvCache& cache, const KvAppendArgs& args) override;
  absl::Status Attention(const BackendKvCache& cache, const AttentionArgs& args) override;
  // The durable store's K/V hooks: whole pages between device and host.
  absl::Status ReadKv(const BackendKvCache& cache, int64_t first_page, int64_t num_pages,
                      uint8_t* pages, float* k_scales, float* v_scales) override;
  absl::StatusOr<std::unique_ptr<BackendKvCache>> KvFromPacked(const KvShape& shape, int64_t seq,
                                                               const uint8_t* pages,
                                                               const float* k_scales,
                                                               const float* v_scales) override;

  struct Lane;

 private:
  CudaBackend() = default;
  Lane& AcquireLane();
  // Enqueues a GEMV on a lane, which stays taken until the call is waited
  // for.
  absl::StatusOr<std::unique_ptr<cuda_internal::PendingGemv>> StartGemv(const BackendMatrix& w,
                                                                        const GemvArgs& args);

  CudaBackendOptions options_;
  int64_t capacity_ = 0;
  int64_t total_ = 0;
  std::string device_name_;
  int cc_ = 0;
  int decode_path_ = 0;  // cuda::DecodePath
  int gemv_kernel_ = 0;  // cuda::GemvKernel
  std::vector<std::unique_ptr<Lane>> lanes_;
  // Finish what GemvAsync started, one thread per lane (each runs its
  // calls' callbacks, so that one batch's callers are told while the next
  // batch computes on another lane); go first, before the lanes.
  std::vector<std::unique_ptr<cuda_internal::Completions>> completions_;
  std::atomic<int64_t> zero_copy_gemvs_{0};
  std::atomic<int64_t> kernel_written_results_{0};
};

}  // namespace plume::core
