// A backend over several child backends, one per device (multi-GPU: one
// CudaBackend per GPU; tests: several CpuBackends). Generic over Backend.
//
// Each matrix is placed by MatrixShape::placement:
// - kSingle: whole on the device with the most free budget.
// - kSharded: rows split into contiguous ranges, one per device, each a
//   matrix of its own (packed rows and scales) on its device. Boundaries are
//   multiples of 128 rows, so BLOCK128 scale blocks are never split; TENSOR
//   matrices are quantized once on the host (kernels/reference) so every
//   shard has the single scale of the unsharded matrix. A GEMV starts every
//   shard at once and then waits for them all, each shard writing its rows
//   of y: the calling thread runs the first, launcher threads of each
//   further device run the others in parallel (they spin briefly between
//   calls, so back to back GEMVs don't pay a thread wake-up, then sleep).
//   Each shard is a whole child Gemv, so no shard holds a device's stream
//   while waiting for another device (no cycle between concurrent calls).
//   Shares follow free budget: even when every device has room for its
//   share, otherwise in proportion to what each has free.
// - kReplicated: a copy on every device; each GEMV goes to the copy with the
//   fewest calls in flight (ties in turn).
// - kAuto: kSingle when the matrix fits one device's free budget, otherwise
//   kSharded.
// Each device has its own budget (its child's memory_capacity_bytes(), or
// ShardedBackendOptions::device_budget_bytes); a placement that does not fit
// gets RESOURCE_EXHAUSTED saying what each device has free.
//
// K/V caches go whole to the device with the least budget in use; appends
// are charged to that device.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "server/core/backend.h"

namespace plume::core {

struct ShardedBackendOptions {
  // The device number of each child, as reported in MatrixInfo and metrics;
  // empty: 0, 1, ...
  std::vector<int> device_ids;
  // Budget of each device in bytes; 0: the child's memory_capacity_bytes().
  int64_t device_budget_bytes = 0;
};

// --devices: "all" (0 .. visible-1) or a comma-separated list of distinct
// device numbers below `visible`. INVALID_ARGUMENT otherwise, or when there
// is no device at all.
absl::StatusOr<std::vector<int>> ParseDeviceList(std::string_view flag, int visible);

class ShardedBackend final : public Backend {
 public:
  // INVALID_ARGUMENT without children or with a device_ids of the wrong size.
  static absl::StatusOr<std::unique_ptr<ShardedBackend>> Create(
      std::vector<std::unique_ptr<Backend>> children, const ShardedBackendOptions& options = {});
  ~ShardedBackend() override;

  // "<child name>:<device ids>", e.g. "cuda:0,1".
  std::string_view name() const override { return name_; }
  int num_devices() const { return static_cast<int>(children_.size()); }
  Backend& child(int i) const { return *children_[static_cast<size_t>(i)]; }
  // Budget bytes in use on device i (matrices and K/V caches placed there).
  int64_t device_used_bytes(int i) const;
  int64_t device_budget_bytes(int i) const;
  std::vector<DeviceBudget> device_budgets() const override;

  absl::StatusOr<std::unique_ptr<HostBuffer>> AllocateHostBuffer(size_t bytes) override;
  bool device_memory(DeviceMemory* out) const override;  // summed over the devices
  int64_t memory_capacity_bytes() const override;        // summed device budgets
  int64_t ReservedBytes(const MatrixShape& shape) const override;
  MatrixPlacement PlacementOf(const BackendMatrix& m) const override;

  // Streamed uploads: places the matrix first, then feeds each device's
  // quantizer its rows as they arrive (TENSOR, or a child without one: none).
  absl::StatusOr<std::unique_ptr<RowQuantizer>> BeginRowQuantize(const MatrixShape& shape,
                                                                 DType src_dtype) override;
  absl::StatusOr<std::unique_ptr<BackendMatrix>> Quantize(const MatrixShape& shape,
                                                          const void* src,
                                                          DType src_dtype) override;
  absl::StatusOr<std::unique_ptr<BackendMatrix>> FromPacked(const MatrixShape& shape,
                                                            const uint32_t* words,
                                                            const float* scales) override;
  absl::Status ReadPacked(const BackendMatrix& m, uint32_t* words, float* scales) override;
  // From the shards the rows lie in (kSharded), else from one copy.
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

  struct Ledger;    // per-device budget in use, shared with the matrices
  struct Part;      // one device's piece of a matrix
  class Launcher;   // a thread that starts GEMVs on one device

 private:
  ShardedBackend() = default;
  // Chooses where a matrix goes and charges each device its part.
  absl::StatusOr<std::vector<Part>> Place(const MatrixShape& shape, Placement* kind);
  // The replica that takes the next call.
  int PickReplica() const;

  std::vector<std::unique_ptr<Backend>> children_;
  std::vector<int> device_ids_;
  std::string name_;
  std::shared_ptr<Ledger> ledger_;
  std::unique_ptr<std::atomic<int>[]> in_flight_;  // calls per device, replicated matrices
  std::vector<std::unique_ptr<Launcher>> launchers_;  // [i]: device i
  mutable std::atomic<unsigned> turn_{0};
};

}  // namespace plume::core
