// ThreadPool: `threads` participants in every ParallelFor: threads - 1
// persistent workers plus the calling thread. Several callers may run loops
// at once; each loop is a Job whose chunks are claimed with an atomic counter
// by the caller and by whichever workers pick it up.
#include "plume/reference/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace plume {

namespace {
struct Job {
  const std::function<void(int64_t, int64_t)>* fn = nullptr;
  int64_t n = 0;
  int64_t chunk = 0;
  int64_t nchunks = 0;
  std::atomic<int64_t> next{0};
  int64_t done = 0;  // chunks finished; guarded by the pool mutex
  int refs = 0;      // workers currently holding the job; guarded by the pool mutex
};
}  // namespace

struct ThreadPool::Impl {
  int size = 1;
  std::mutex mu;
  std::condition_variable work_cv;
  std::condition_variable done_cv;
  std::deque<Job*> queue;
  bool stop = false;
  std::vector<std::thread> workers;

  // Runs chunks of `job` until none is left; returns how many it ran.
  static int64_t RunChunks(Job* job) {
    int64_t ran = 0;
    for (;;) {
      const int64_t i = job->next.fetch_add(1, std::memory_order_relaxed);
      if (i >= job->nchunks) break;
      const int64_t b = i * job->chunk;
      const int64_t e = std::min(job->n, b + job->chunk);
      (*job->fn)(b, e);
      ++ran;
    }
    return ran;
  }

  void WorkerLoop() {
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      work_cv.wait(lock, [&] { return stop || !queue.empty(); });
      if (stop && queue.empty()) return;
      Job* job = queue.front();
      if (job->next.load(std::memory_order_relaxed) >= job->nchunks) {
        queue.pop_front();  // fully claimed: nothing left for workers
        continue;
      }
      ++job->refs;
      lock.unlock();
      const int64_t ran = RunChunks(job);
      lock.lock();
      job->done += ran;
      --job->refs;
      if (job->done == job->nchunks || job->refs == 0) done_cv.notify_all();
    }
  }
};

ThreadPool::ThreadPool(int threads) : impl_(new Impl) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  impl_->size = threads;
  impl_->workers.reserve(threads - 1);
  for (int i = 0; i < threads - 1; ++i) impl_->workers.emplace_back([this] { impl_->WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stop = true;
  }
  impl_->work_cv.notify_all();
  for (auto& t : impl_->workers) t.join();
  delete impl_;
}

int ThreadPool::size() const { return impl_->size; }

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t max_chunks = static_cast<int64_t>(impl_->size) * 4;
  int64_t nchunks = std::min<int64_t>((n + grain - 1) / grain, max_chunks);
  if (impl_->size <= 1 || nchunks <= 1) {
    fn(0, n);
    return;
  }
  Job job;
  job.fn = &fn;
  job.n = n;
  job.chunk = (n + nchunks - 1) / nchunks;
  job.nchunks = (n + job.chunk - 1) / job.chunk;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->queue.push_back(&job);
  }
  impl_->work_cv.notify_all();
  const int64_t ran = Impl::RunChunks(&job);
  std::unique_lock<std::mutex> lock(impl_->mu);
  job.done += ran;
  // No worker can pick the job up after this: it leaves the queue now.
  auto it = std::find(impl_->queue.begin(), impl_->queue.end(), &job);
  if (it != impl_->queue.end()) impl_->queue.erase(it);
  impl_->done_cv.wait(lock, [&] { return job.done == job.nchunks && job.refs == 0; });
}

ThreadPool& ThreadPool::Default() {
  static ThreadPool pool(0);
  return pool;
}

}  // namespace plume
