// The batcher's knobs (batcher.h), kept apart so that the matrix store and
// the validators can carry them without the batcher itself.
#pragma once

#include <chrono>
#include <cstdint>

namespace plume::core {

struct BatchingOptions {
  // A batch closes once it holds this many vectors (GEMV) or batch elements
  // (attention); a single request with more runs alone.
  int64_t max_batch = 64;
  // ... or this long after its first request arrived, whichever is first.
  std::chrono::microseconds max_queue_delay{200};
  // Requests that may wait in one queue (one matrix or K/V cache); beyond
  // that a request is refused with RESOURCE_EXHAUSTED.
  int64_t max_queue_size = 1024;
};

// Per-upload limits of the knobs (MatrixHeader.batching): larger values are
// INVALID_ARGUMENT.
inline constexpr int64_t kMaxBatchLimit = 1 << 16;
inline constexpr int64_t kMaxQueueDelayUsLimit = 1'000'000;  // 1 s
inline constexpr int64_t kMaxQueueSizeLimit = 1 << 20;

}  // namespace plume::core
