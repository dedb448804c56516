// CUDA graphs for repeated GEMVs on a lane: a call's copy-in, kernels and
// copy-out, captured once and replayed by one cudaGraphLaunch when a later
// call on the same lane has exactly the same parameters. A server sees the
// same call again and again (one matrix, one batch size, the lane's own
// staging), and one graph launch costs the host less than the three to five
// copies and launches it replaces, and leaves the device no gaps between them.
//
// The key is every value the captured work depends on: the problem (device
// pointers of the matrix, shape, dtypes, activation scale, batch, decode
// path, kernel), the copies' host and device addresses, and the workspace's
// address. Equal keys therefore replay exactly what a direct call would
// enqueue, even when a deleted matrix's memory comes back to a new one. A key
// is captured on its second sighting on a lane: the first ran directly, so
// the dispatcher has timed its batch bucket (timing cannot be captured) and
// the lane's buffers are already large enough (growing them cannot be
// captured either). Internal to server/backends/cuda.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <functional>

#include <vector>

#include "plume/cuda/gemv.h"

namespace plume::core::cuda_internal {

class GemvGraphs {
 public:
  // What the captured work reads and writes besides the problem's own
  // pointers: where the activations are copied from (host) and to (device,
  // the problem's x), where the results go (host; a 2-D copy for a row
  // shard) and the workspace.
  struct Copies {
    const void* x_src = nullptr;
    int64_t x_bytes = 0;
    void* y_dst = nullptr;
    int64_t y_row_bytes = 0, y_stride_bytes = 0;
    const void* workspace = nullptr;
  };
  using Key = std::array<uint64_t, 16>;
  static Key KeyOf(const cuda::GemvProblem& p, const Copies& c);

  // Graphs kept per lane; the least recently used goes first.
  static constexpr int kCapacity = 64;

  GemvGraphs() = default;
  GemvGraphs(const GemvGraphs&) = delete;
  GemvGraphs& operator=(const GemvGraphs&) = delete;
  ~GemvGraphs();

  // Runs the work for key on stream: by its graph when there is one; else
  // captures enqueue(stream) into one (second sighting) and launches it;
  // else calls enqueue(stream) directly (first sighting, or a capture that
  // failed, which falls back to direct calls for that key from then on).
  // *replayed says whether a graph ran. Not thread-safe: one call at a time
  // (the lane's claim).
  cudaError_t Run(const Key& key, const std::function<cudaError_t(cudaStream_t)>& enqueue,
                  cudaStream_t stream, bool* replayed);

  int size() const { return static_cast<int>(entries_.size()); }

 private:
  struct Entry {
    Key key;
    cudaGraphExec_t exec = nullptr;
    bool uncapturable = false;
    uint64_t last_use = 0;
  };
  void EvictOne();
  cudaError_t Capture(const std::function<cudaError_t(cudaStream_t)>& enqueue, cudaStream_t stream,
                      cudaGraphExec_t* exec);

  // At most kCapacity, searched in turn: a few comparisons of 128 bytes,
  // most ending at the first word (the matrix).
  std::vector<Entry> entries_;
  uint64_t clock_ = 0;
};

}  // namespace plume::core::cuda_internal
