// The dispatcher's table of measured choices (gemv_tuner.h): open addressing
// over a fixed array; readers check a slot's published flag and compare its
// key, writers take a mutex.
#include "gemv_tuner.h"

#include <atomic>
#include <functional>
#include <mutex>

namespace plume::cuda::gemv_tuner {
namespace {

constexpr int kSlots = 4096;  // a power of two

struct Slot {
  std::atomic<bool> ready{false};
  Key key;
  GemvKernel kernel = GemvKernel::kAuto;
};

Slot g_slots[kSlots];
std::mutex g_write;

size_t Hash(const Key& k) {
  size_t h = std::hash<int64_t>{}(k.rows * 1000003 + k.cols);
  for (int64_t v : {int64_t{k.device}, int64_t{k.batch_bucket}, int64_t(k.x_dtype),
                    int64_t(k.mode), int64_t(k.format), int64_t(k.path)}) {
    h = h * 31 + std::hash<int64_t>{}(v);
  }
  return h;
}

}  // namespace

int BatchBucket(int64_t batch) {
  int b = 1;
  while (b < batch && b < 256) b *= 2;
  return b;
}

Key KeyOf(const GemvProblem& p, int device) {
  Key k;
  k.device = device;
  k.rows = p.rows;
  k.cols = p.cols;
  k.batch_bucket = BatchBucket(p.batch);
  k.x_dtype = p.x_dtype;
  k.mode = p.scale_mode;
  k.format = p.format;
  k.path = p.path;
  return k;
}

GemvKernel Lookup(const Key& key) {
  const size_t h = Hash(key);
  for (size_t i = 0; i < kSlots; ++i) {
    const Slot& s = g_slots[(h + i) & (kSlots - 1)];
    if (!s.ready.load(std::memory_order_acquire)) return GemvKernel::kAuto;  // end of the chain
    if (s.key == key) return s.kernel;
  }
  return GemvKernel::kAuto;
}

void Store(const Key& key, GemvKernel kernel) {
  std::lock_guard<std::mutex> lock(g_write);
  const size_t h = Hash(key);
  for (size_t i = 0; i < kSlots; ++i) {
    Slot& s = g_slots[(h + i) & (kSlots - 1)];
    if (!s.ready.load(std::memory_order_relaxed)) {
      // Leave the last slots empty, so every chain ends.
      static int used = 0;
      if (used >= kSlots - 64) return;
      ++used;
      s.key = key;
      s.kernel = kernel;
      s.ready.store(true, std::memory_order_release);
      return;
    }
    if (s.key == key) return;  // measured by another caller meanwhile
  }
}

}  // namespace plume::cuda::gemv_tuner
