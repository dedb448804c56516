// The Batcher: dynamic batching of GEMV and attention requests.
//
// There is one queue per target (a matrix or a K/V cache). Requests with
// compatible arguments (the same BatchKey: for GEMV the x dtype, x scale and
// y dtype) form a batch. A batch closes when it holds options.max_batch
// units (vectors, or attention batch elements), or options.max_queue_delay
// after its first request arrived, whichever comes first; a single request
// larger than max_batch forms a batch of its own. Under the adaptive policy
// (the default) a batch also closes at once when its target has no batch
// running, and whatever gathered while batches ran closes when one of them
// finishes: a lone client never waits, and under load batches grow with the
// backend's time per call. A closed batch runs on a
// WorkQueue thread: its live requests are gathered into one HostBuffer from
// the backend's pool (one memcpy each), the target's run function makes one
// backend call for all of them, and each result is copied from the output
// HostBuffer straight into its caller's bytes (one memcpy each). The
// worker's part ends once the call is started: the copy out and the
// callers' callbacks run where the call finishes (for a GEMV on the CUDA
// backend, its lane's completion thread), so a worker is never held while a
// device computes. Several batches of one target may run at once.
//
// A request whose deadline passed, or whose caller cancelled, is dropped
// when its batch launches, before the backend sees it, and counted in
// plume_requests_dropped_total. The queue time of each request that runs
// goes to its target's series (BatchRequest::metrics). A full queue
// refuses a request at once with RESOURCE_EXHAUSTED. No gRPC here: callers
// pass a deadline and a cancellation check.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "server/core/backend.h"
#include "server/core/batching_options.h"

namespace plume::core {

class Metrics;
class TargetMetrics;
class WorkQueue;

using BatchClock = std::chrono::steady_clock;

// Requests batch together only when their keys are equal.
using BatchKey = std::array<uint64_t, 8>;

// The life of a request as its transport sees it.
struct RequestLife {
  BatchClock::time_point deadline = BatchClock::time_point::max();
  std::function<bool()> cancelled;  // may be empty
};

// Runs one batch: `units` units of input at `in`, results to `out` (both
// laid out unit after unit, host memory, usually HostBuffers). `info` is
// handed to every request's done callback (attention: the seq it ran on).
// It calls `finished` exactly once, once the results are in `out` or the
// call failed: before it returns (a backend call made on the calling
// thread) or later, from any thread (a GEMV on the CUDA backend finishes on
// its lane's completion thread), so that no worker waits for the device.
using BatchFinishedFn = std::function<void(const absl::Status&, int64_t info)>;
using BatchRunFn =
    std::function<void(const void* in, int64_t units, void* out, BatchFinishedFn finished)>;

struct BatchRequest {
  BatchKey key{};
  // Set by Submit: keeps the target alive while the request waits or runs.
  std::shared_ptr<const void> target;
  // The target's series (it holds them, so they live while `target` does),
  // where its queue time is recorded; may be null.
  const TargetMetrics* metrics = nullptr;
  int64_t units = 0;
  const void* in = nullptr;  // units * in_unit_bytes; valid until done runs
  void* out = nullptr;       // units * out_unit_bytes; valid until done runs
  size_t in_unit_bytes = 0;
  size_t out_unit_bytes = 0;
  // A cap on the units of a batch below max_batch (0: none), the same for
  // every request of one key: attention keeps a batch within
  // --max_attention_rows.
  int64_t max_batch_units = 0;
  // The same for every request of one key and target: the batch runs its
  // first request's.
  BatchRunFn run;
  RequestLife life;
  // Called exactly once: where the batch completed (a WorkQueue thread, or
  // a CUDA lane's completion thread), or inline from Submit when the
  // request is refused.
  std::function<void(const absl::Status&, int64_t info)> done;
};

class Batcher {
 public:
  struct Options {
    BatchingOptions defaults;
    // The clock of arrivals, deadlines and delays. Empty: steady_clock.
    std::function<BatchClock::time_point()> now;
    // Without the timer thread, batches close on max_batch or on Poll()
    // only (tests with an injected clock).
    bool timer_thread = true;
    // Spare input/output buffers kept per queue.
    int buffers_per_queue = 4;
  };

  // `queue` runs the batches and must outlive the Batcher; `metrics` may be
  // null.
  Batcher(Backend* backend, WorkQueue* queue, Metrics* metrics, Options options);
  // Launches what is still waiting and waits for every batch to finish.
  ~Batcher();

  // A per-target override resolved against the defaults (0: default).
  BatchingOptions Resolve(const BatchingOptions& overrides) const;
  const BatchingOptions& defaults() const { return options_.defaults; }

  // Queues `req` on the queue of `target` (identified by the object it
  // points to, which stays alive while requests for it wait or run).
  // `kind` and `name` name it in errors, e.g. matrix "w" (the text is made
  // once, with the queue, not per request).
  void Submit(std::shared_ptr<const void> target, std::string_view kind, std::string_view name,
              const BatchingOptions& options, BatchRequest req);

  // Launches every batch still waiting and waits until none runs (a server
  // shutting down, once its calls are done).
  void Flush();

  // Closes every batch whose delay has passed (the timer thread calls it).
  // Returns when the next one is due (time_point::max() if none waits).
  BatchClock::time_point Poll();

  // Requests waiting in all queues (submitted, not yet launched).
  int64_t waiting() const;
  // Batches handed to the work queue and not yet finished.
  int64_t batches_in_flight() const;
  // Targets with a queue here. A queue, with its pooled buffers, goes once
  // its target is gone (a deleted matrix or K/V cache) and nothing waits or
  // runs there: when its last batch finishes, or within kForgetEvery of the
  // delete (the timer thread's Poll) where none ran.
  int64_t queues() const;
  static constexpr std::chrono::milliseconds kForgetEvery{1000};

 private:
  struct Queue;
  struct Batch;

  BatchClock::time_point Now() const;
  // Takes a batch off the front of `p` (at least one request; up to
  // max_batch units).
  std::unique_ptr<Batch> TakeBatch(const std::shared_ptr<Queue>& q, const BatchKey& key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Dispatch(std::unique_ptr<Batch> batch);
  // A batch of `q` finished its backend call: under the adaptive policy,
  // dispatches what gathered meanwhile.
  void Finished(const std::shared_ptr<Queue>& q);
  // Drops `q` from queues_ when its target is gone and nothing waits or
  // runs there.
  void ForgetIfGoneLocked(const std::shared_ptr<Queue>& q) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops what is no longer wanted, gathers the rest and starts the run;
  // Complete finishes the batch once the run function returned and the run
  // finished, on whichever thread saw the later of the two.
  void Run(std::shared_ptr<Batch> batch);
  struct Launched;
  void Complete(Launched& l);  // with l.status and l.info
  absl::StatusOr<std::unique_ptr<HostBuffer>> TakeBuffer(Queue& q, size_t bytes, size_t typical);
  void ReturnBuffer(Queue& q, std::unique_ptr<HostBuffer> buffer);
  void TimerLoop();
  void SetDepthLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Backend* const backend_;
  WorkQueue* const queue_;
  Metrics* const metrics_;
  const Options options_;

  mutable absl::Mutex mu_;
  absl::CondVar timer_cv_;
  std::map<const void*, std::shared_ptr<Queue>> queues_ ABSL_GUARDED_BY(mu_);
  int64_t waiting_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool timer_wake_ ABSL_GUARDED_BY(mu_) = false;  // a new first request since the last Poll
  std::thread timer_;
};

}  // namespace plume::core
