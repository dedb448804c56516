#include "server/core/batcher.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "server/core/metrics.h"
#include "server/core/work_queue.h"

namespace plume::core {

namespace {

// Requests of one key waiting in a queue, oldest first.
struct Pending {
  std::deque<BatchRequest> requests;
  std::deque<BatchClock::time_point> arrivals;
  int64_t units = 0;
};

}  // namespace

struct Batcher::Queue {
  const void* key = nullptr;  // its entry in queues_: the target's address
  std::weak_ptr<const void> target;
  std::string name;
  BatchingOptions options;
  std::map<BatchKey, Pending> pending;  // guarded by Batcher::mu_
  int64_t waiting = 0;                  // guarded by Batcher::mu_: submitted, not launched
  int64_t running = 0;                  // guarded by Batcher::mu_: batches taken, not finished
  absl::Mutex pool_mu;
  std::vector<std::unique_ptr<HostBuffer>> pool ABSL_GUARDED_BY(pool_mu);
};

struct Batcher::Batch {
  std::shared_ptr<Queue> queue;
  std::vector<BatchRequest> requests;
  std::vector<BatchClock::time_point> arrivals;
};

namespace {

using DoneFn = std::function<void(const absl::Status&, int64_t)>;

double Seconds(BatchClock::duration d) { return std::chrono::duration<double>(d).count(); }

// The units that close a batch of requests like `r`.
int64_t BatchLimit(const BatchingOptions& o, const BatchRequest& r) {
  return r.max_batch_units > 0 ? std::min(o.max_batch, r.max_batch_units) : o.max_batch;
}

// Pooled buffers are sized for a full batch, so that one serves every usual
// batch, but no larger than this unless a batch needs it.
constexpr size_t kMaxPooledBufferBytes = size_t{64} << 20;

}  // namespace

Batcher::Batcher(Backend* backend, WorkQueue* queue, Metrics* metrics, Options options)
    : backend_(backend), queue_(queue), metrics_(metrics), options_(std::move(options)) {
  if (options_.timer_thread) timer_ = std::thread([this] { TimerLoop(); });
}

Batcher::~Batcher() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    timer_cv_.Signal();
  }
  if (timer_.joinable()) timer_.join();
  Flush();
}

void Batcher::Flush() {
  std::vector<std::unique_ptr<Batch>> rest;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [target, q] : queues_) {
      while (!q->pending.empty()) rest.push_back(TakeBatch(q, q->pending.begin()->first));
    }
  }
  for (auto& b : rest) Dispatch(std::move(b));
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](int64_t* n) { return *n == 0; }, &in_flight_));
}

BatchClock::time_point Batcher::Now() const {
  return options_.now ? options_.now() : BatchClock::now();
}

BatchingOptions Batcher::Resolve(const BatchingOptions& o) const {
  BatchingOptions r = options_.defaults;
  if (o.max_batch > 0) r.max_batch = o.max_batch;
  if (o.max_queue_delay.count() > 0) r.max_queue_delay = o.max_queue_delay;
  if (o.max_queue_size > 0) r.max_queue_size = o.max_queue_size;
  r.policy = options_.defaults.policy;
  return r;
}

void Batcher::Submit(std::shared_ptr<const void> target, std::string_view kind,
                     std::string_view name, const BatchingOptions& options, BatchRequest req) {
  const BatchClock::time_point now = Now();
  std::unique_ptr<Batch> ready;
  absl::Status refused;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      refused = absl::UnavailableError("server is shutting down; retry on another replica");
    } else {
      std::shared_ptr<Queue>& q = queues_[target.get()];
      // An expired queue at this address belonged to a target since freed.
      if (q == nullptr || q->target.expired()) {
        q = std::make_shared<Queue>();
        q->key = target.get();
        q->target = target;
        q->name = std::string(kind) + " \"" + std::string(name) + "\"";
        q->options = options;
        // A timer with no queue to look after sleeps until told (TimerLoop).
        timer_wake_ = true;
        timer_cv_.Signal();
      }
      if (q->waiting >= q->options.max_queue_size) {
        refused = absl::ResourceExhaustedError(absl::StrCat(
            "batch queue of ", q->name, " is full: ", q->waiting,
            " requests already wait (max_queue_size ", q->options.max_queue_size,
            "); retry later or raise --max_queue_size"));
      } else {
        req.target = std::move(target);
        const BatchKey key = req.key;
        Pending& p = q->pending[key];
        const bool first = p.requests.empty();
        p.units += req.units;
        p.requests.push_back(std::move(req));
        p.arrivals.push_back(now);
        ++q->waiting;
        ++waiting_;
        SetDepthLocked();
        if (p.units >= BatchLimit(q->options, p.requests.front()) ||
            q->options.max_queue_delay.count() <= 0 ||
            (q->options.policy == BatchPolicy::kAdaptive && q->running == 0)) {
          ready = TakeBatch(q, key);
        } else if (first) {
          timer_wake_ = true;  // a new deadline for the timer
          timer_cv_.Signal();
        }
      }
    }
  }
  if (!refused.ok()) {
    if (metrics_ != nullptr && refused.code() == absl::StatusCode::kResourceExhausted) {
      metrics_->RecordDropped(refused.code());
    }
    req.done(refused, 0);
    return;
  }
  if (ready != nullptr) Dispatch(std::move(ready));
}

std::unique_ptr<Batcher::Batch> Batcher::TakeBatch(const std::shared_ptr<Queue>& q,
                                                   const BatchKey& key) {
  auto it = q->pending.find(key);
  Pending& p = it->second;
  auto batch = std::make_unique<Batch>();
  batch->queue = q;
  const int64_t limit = BatchLimit(q->options, p.requests.front());
  int64_t units = 0;
  while (!p.requests.empty() && (units == 0 || units + p.requests.front().units <= limit)) {
    units += p.requests.front().units;
    batch->requests.push_back(std::move(p.requests.front()));
    batch->arrivals.push_back(p.arrivals.front());
    p.requests.pop_front();
    p.arrivals.pop_front();
  }
  p.units -= units;
  if (p.requests.empty()) q->pending.erase(it);
  ++in_flight_;
  ++q->running;
  return batch;
}

void Batcher::Dispatch(std::unique_ptr<Batch> batch) {
  std::shared_ptr<Batch> b = std::move(batch);
  // Run, or Complete where the run finished, counts the batch out of in_flight_.
  if (queue_->Submit([this, b]() mutable { Run(std::move(b)); })) return;
  {
    absl::MutexLock lock(&mu_);
    waiting_ -= static_cast<int64_t>(b->requests.size());
    b->queue->waiting -= static_cast<int64_t>(b->requests.size());
    --b->queue->running;
    SetDepthLocked();
  }
  const absl::Status s = absl::ResourceExhaustedError(absl::StrCat(
      "server overloaded: ", queue_->queued(), " batches already wait for a worker; retry later"));
  std::vector<DoneFn> dones;
  for (BatchRequest& r : b->requests) dones.push_back(std::move(r.done));
  b->requests.clear();  // the targets go before the callers hear back
  for (DoneFn& done : dones) done(s, 0);
  absl::MutexLock lock(&mu_);
  --in_flight_;
}

absl::StatusOr<std::unique_ptr<HostBuffer>> Batcher::TakeBuffer(Queue& q, size_t bytes,
                                                                size_t typical) {
  {
    absl::MutexLock lock(&q.pool_mu);
    auto best = q.pool.end();
    for (auto it = q.pool.begin(); it != q.pool.end(); ++it) {
      if ((*it)->size() >= bytes && (best == q.pool.end() || (*it)->size() < (*best)->size())) {
        best = it;
      }
    }
    if (best != q.pool.end()) {
      std::unique_ptr<HostBuffer> b = std::move(*best);
      q.pool.erase(best);
      return b;
    }
  }
  return backend_->AllocateHostBuffer(std::max(bytes, std::min(typical, kMaxPooledBufferBytes)));
}

void Batcher::ReturnBuffer(Queue& q, std::unique_ptr<HostBuffer> buffer) {
  absl::MutexLock lock(&q.pool_mu);
  if (static_cast<int>(q.pool.size()) < 2 * options_.buffers_per_queue) {
    q.pool.push_back(std::move(buffer));
  }
}

// A batch whose run was started: what Complete needs once it finished.
struct Batcher::Launched {
  std::shared_ptr<Batch> batch;
  std::vector<std::pair<DoneFn, absl::Status>> dropped;
  std::vector<BatchRequest*> live;
  std::unique_ptr<HostBuffer> in, out;
  // The run's outcome, and who got there first: Complete runs once both the
  // run function has returned and the run has finished, on the thread that
  // sees the second of them (never inside the run function, whose request,
  // and so the function itself, Complete lets go of).
  absl::Status status;
  int64_t info = 0;
  std::atomic<int> stage{0};  // kRunning, then kReturned | kFinished
  static constexpr int kReturned = 1, kFinished = 2;
};

void Batcher::Run(std::shared_ptr<Batch> batch) {
  Queue& q = *batch->queue;
  const BatchClock::time_point launch = Now();
  {
    absl::MutexLock lock(&mu_);
    waiting_ -= static_cast<int64_t>(batch->requests.size());
    q.waiting -= static_cast<int64_t>(batch->requests.size());
    SetDepthLocked();
  }
  // One allocation per batch: the run's completion may come on another thread.
  auto l = std::make_shared<Launched>();
  // Drop what is no longer wanted before the backend sees it.
  l->live.reserve(batch->requests.size());
  int64_t units = 0;
  for (size_t i = 0; i < batch->requests.size(); ++i) {
    BatchRequest& r = batch->requests[i];
    absl::Status drop;
    if (r.life.cancelled && r.life.cancelled()) {
      drop = absl::CancelledError("request cancelled before it ran");
    } else if (r.life.deadline <= launch) {
      drop = absl::DeadlineExceededError("deadline passed before the request ran");
    }
    if (!drop.ok()) {
      if (metrics_ != nullptr) metrics_->RecordDropped(drop.code());
      l->dropped.emplace_back(std::move(r.done), std::move(drop));
      continue;
    }
    if (r.metrics != nullptr) r.metrics->RecordQueueWait(Seconds(launch - batch->arrivals[i]));
    units += r.units;
    l->live.push_back(&r);
  }
  l->batch = std::move(batch);
  if (l->live.empty()) return Complete(*l);

  const BatchRequest& first = *l->live.front();
  const size_t in_unit = first.in_unit_bytes, out_unit = first.out_unit_bytes;
  const size_t full = static_cast<size_t>(BatchLimit(q.options, first));
  auto in = TakeBuffer(q, static_cast<size_t>(units) * in_unit, full * in_unit);
  if (!in.ok()) {
    l->status = in.status();
    return Complete(*l);
  }
  l->in = std::move(*in);
  auto out = TakeBuffer(q, static_cast<size_t>(units) * out_unit, full * out_unit);
  if (!out.ok()) {
    l->status = out.status();
    return Complete(*l);
  }
  l->out = std::move(*out);
  // One copy in: each request's input, back to back.
  char* dst = static_cast<char*>(l->in->data());
  for (BatchRequest* r : l->live) {
    const size_t n = static_cast<size_t>(r->units) * in_unit;
    std::memcpy(dst, r->in, n);
    dst += n;
  }
  first.run(l->in->data(), units, l->out->data(), [this, l](const absl::Status& s, int64_t info) {
    l->status = s;
    l->info = info;
    if (l->stage.fetch_or(Launched::kFinished, std::memory_order_acq_rel) == Launched::kReturned) {
      Complete(*l);
    }
  });
  if (l->stage.fetch_or(Launched::kReturned, std::memory_order_acq_rel) == Launched::kFinished) {
    Complete(*l);
  }
}

void Batcher::Complete(Launched& l) {
  const absl::Status& s = l.status;
  std::shared_ptr<Queue> q = l.batch->queue;
  std::vector<DoneFn> dones;
  if (!l.live.empty()) {
    if (s.ok()) {
      // One copy out: straight from the output buffer into each caller's bytes.
      const size_t out_unit = l.live.front()->out_unit_bytes;
      const char* src = static_cast<const char*>(l.out->data());
      for (BatchRequest* r : l.live) {
        const size_t n = static_cast<size_t>(r->units) * out_unit;
        std::memcpy(r->out, src, n);
        src += n;
      }
    }
    if (l.in != nullptr) ReturnBuffer(*q, std::move(l.in));
    if (l.out != nullptr) ReturnBuffer(*q, std::move(l.out));
    dones.reserve(l.live.size());
    for (BatchRequest* r : l.live) dones.push_back(std::move(r->done));
    l.live.clear();
  }
  // Let go of the targets (a deleted matrix's memory returns to the budget)
  // before any caller hears back, and before Finished, which forgets the
  // queue of a target gone.
  l.batch->requests.clear();
  l.batch.reset();
  // What gathered while this batch ran goes before its callers hear back.
  Finished(q);
  q.reset();
  for (auto& [done, why] : l.dropped) done(why, 0);
  for (DoneFn& done : dones) done(s, l.info);
  // Nothing of the batch outlives its count: Flush returns once it is 0.
  l.dropped.clear();
  dones.clear();
  absl::MutexLock lock(&mu_);
  --in_flight_;
}

void Batcher::Finished(const std::shared_ptr<Queue>& q) {
  std::vector<std::unique_ptr<Batch>> ready;
  {
    absl::MutexLock lock(&mu_);
    --q->running;
    if (q->options.policy == BatchPolicy::kAdaptive) {
      while (!q->pending.empty()) ready.push_back(TakeBatch(q, q->pending.begin()->first));
    }
    ForgetIfGoneLocked(q);
  }
  for (auto& b : ready) Dispatch(std::move(b));
}

void Batcher::ForgetIfGoneLocked(const std::shared_ptr<Queue>& q) {
  if (!q->pending.empty() || q->waiting != 0 || q->running != 0 || !q->target.expired()) return;
  auto it = queues_.find(q->key);
  if (it != queues_.end() && it->second == q) queues_.erase(it);
}

BatchClock::time_point Batcher::Poll() {
  const BatchClock::time_point now = Now();
  BatchClock::time_point next = BatchClock::time_point::max();
  std::vector<std::unique_ptr<Batch>> ready;
  {
    absl::MutexLock lock(&mu_);
    timer_wake_ = false;
    for (auto qit = queues_.begin(); qit != queues_.end();) {
      const std::shared_ptr<Queue> q = qit->second;
      for (auto pit = q->pending.begin(); pit != q->pending.end();) {
        const BatchKey key = pit->first;
        ++pit;  // TakeBatch may erase the current entry
        for (;;) {
          auto it = q->pending.find(key);
          if (it == q->pending.end()) break;
          const BatchClock::time_point due = it->second.arrivals.front() + q->options.max_queue_delay;
          if (due > now) {
            next = std::min(next, due);
            break;
          }
          ready.push_back(TakeBatch(q, key));
        }
      }
      // Forget the queues of targets that are gone once nothing waits or
      // runs there (their pooled buffers go with the last batch holding them).
      ++qit;
      ForgetIfGoneLocked(q);
    }
  }
  for (auto& b : ready) Dispatch(std::move(b));
  return next;
}

void Batcher::TimerLoop() {
  for (;;) {
    const BatchClock::time_point next = Poll();
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    if (timer_wake_) continue;
    if (next == BatchClock::time_point::max()) {
      // Nothing is due; while queues exist, look again within kForgetEvery
      // for those whose target was deleted while idle (a batch that ends
      // after its target went forgets its queue itself).
      if (queues_.empty()) {
        timer_cv_.Wait(&mu_);
      } else {
        timer_cv_.WaitWithTimeout(&mu_, absl::FromChrono(kForgetEvery));
      }
    } else {
      const BatchClock::duration wait = next - Now();
      if (wait > BatchClock::duration::zero()) {
        timer_cv_.WaitWithTimeout(&mu_, absl::FromChrono(wait));
      }
    }
  }
}

void Batcher::SetDepthLocked() {
  if (metrics_ != nullptr) metrics_->SetQueueDepth(waiting_);
}

int64_t Batcher::waiting() const {
  absl::MutexLock lock(&mu_);
  return waiting_;
}

int64_t Batcher::batches_in_flight() const {
  absl::MutexLock lock(&mu_);
  return in_flight_;
}

int64_t Batcher::queues() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(queues_.size());
}

}  // namespace plume::core
