// The batcher's knobs (batcher.h), kept apart so that the matrix store and
// the validators can carry them without the batcher itself.
#pragma once

#include <chrono>
#include <cstdint>

namespace plume::core {

// When a batch that is not yet full launches.
enum class BatchPolicy {
  // At once when its target (matrix or K/V cache) has nothing running;
  // while a batch of the target runs, arrivals gather and launch when it
  // finishes. max_queue_delay is only an upper bound on that wait.
  kAdaptive,
  // max_queue_delay after its first request arrived: every request that
  // does not fill a batch waits that long.
  kFixed,
};

struct BatchingOptions {
  // A batch closes once it holds this many vectors (GEMV) or batch elements
  // (attention); a single request with more runs alone.
  int64_t max_batch = 64;
  // ... or this long after its first request arrived, whichever is first
  // (under kAdaptive, usually much earlier: see BatchPolicy).
  std::chrono::microseconds max_queue_delay{200};
  // Requests that may wait in one queue (one matrix or K/V cache); beyond
  // that a request is refused with RESOURCE_EXHAUSTED.
  int64_t max_queue_size = 1024;
  // Server-wide (--batching): the Batcher's defaults decide it, per-target
  // overrides cannot change it.
  BatchPolicy policy = BatchPolicy::kAdaptive;
};

// Per-upload limits of the knobs (MatrixHeader.batching): larger values are
// INVALID_ARGUMENT.
inline constexpr int64_t kMaxBatchLimit = 1 << 16;
inline constexpr int64_t kMaxQueueDelayUsLimit = 1'000'000;  // 1 s
inline constexpr int64_t kMaxQueueSizeLimit = 1 << 20;

}  // namespace plume::core
