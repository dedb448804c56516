// The CPU backend: packed FP8 in host memory, GEMV by the multithreaded,
// vectorized CPU reference (kernels/reference); K/V caches in host pages and
// attention by the reference's FP32 path.
#pragma once

#include <memory>

#include "server/core/backend.h"

namespace plume {
class ThreadPool;
}

namespace plume::core {

class CpuBackend final : public Backend {
 public:
  // threads <= 0: one per hardware thread.
  explicit CpuBackend(int threads = 0);
  ~CpuBackend() override;

  std::string_view name() const override { return "cpu"; }
  int64_t memory_capacity_bytes() const override;
  absl::StatusOr<std::unique_ptr<BackendMatrix>> Quantize(const MatrixShape& shape,
                                                          const void* src,
                                                          DType src_dtype) override;
  absl::StatusOr<std::unique_ptr<RowQuantizer>> BeginRowQuantize(const MatrixShape& shape,
                                                                 DType src_dtype) override;
  absl::StatusOr<std::unique_ptr<PackedWriter>> BeginPackedWrite(const MatrixShape& shape) override;
  absl::StatusOr<std::unique_ptr<BackendMatrix>> FromPacked(const MatrixShape& shape,
                                                            const uint32_t* words,
                                                            const float* scales) override;
  absl::Status ReadPacked(const BackendMatrix& m, uint32_t* words, float* scales) override;
  absl::Status ReadPackedRows(const BackendMatrix& m, int64_t row0, int64_t rows, uint32_t* words,
                              float* scales) override;
  absl::Status Gemv(const BackendMatrix& w, const GemvArgs& args) override;
  absl::StatusOr<std::unique_ptr<BackendKvCache>> CreateKv(const KvShape& shape) override;
  absl::Status AppendKv(BackendKvCache& cache, const KvAppendArgs& args) override;
  absl::Status Attention(const BackendKvCache& cache, const AttentionArgs& args) override;
  absl::Status ReadKv(const BackendKvCache& cache, int64_t first_page, int64_t num_pages,
                      uint8_t* pages, float* k_scales, float* v_scales) override;
  absl::StatusOr<std::unique_ptr<BackendKvCache>> KvFromPacked(const KvShape& shape, int64_t seq,
                                                               const uint8_t* pages,
                                                               const float* k_scales,
                                                               const float* v_scales) override;

 private:
  std::unique_ptr<ThreadPool> pool_;
};

}  // namespace plume::core
