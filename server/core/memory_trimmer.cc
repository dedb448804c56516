#include "server/core/memory_trimmer.h"

#include <utility>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace plume::core {
namespace {

void TrimHeap() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

}  // namespace

void KeepFreedHeapMemory(int max_arenas) {
#if defined(__GLIBC__)
  // Fixed values also stop glibc adjusting them as blocks are freed.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest on 64-bit
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  if (max_arenas > 0) mallopt(M_ARENA_MAX, max_arenas);
#else
  (void)max_arenas;
#endif
}

MemoryTrimmer::MemoryTrimmer(std::chrono::milliseconds interval, std::function<void()> trim)
    : interval_(interval),
      trim_(trim != nullptr ? std::move(trim) : std::function<void()>(TrimHeap)),
      thread_([this] { Run(); }) {}

MemoryTrimmer::~MemoryTrimmer() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

int64_t MemoryTrimmer::trims() const {
  std::lock_guard<std::mutex> l(mu_);
  return trims_;
}

void MemoryTrimmer::Run() {
  std::unique_lock<std::mutex> l(mu_);
  while (!cv_.wait_for(l, interval_, [this] { return stop_; })) {
    l.unlock();
    trim_();
    l.lock();
    ++trims_;
  }
}

}  // namespace plume::core
