// The dispatcher's table of measured choices (gemv_tuner.h): open addressing
// over a fixed array; readers check a slot's published flag and compare its
// key, writers take a mutex. And the measurement itself.
#include "gemv_tuner.h"
#include "gemv_tuner_order.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "plume/cuda/check.h"

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

namespace {

constexpr int kTuneRounds = 7;

// Runs candidates `best` (cuBLASLt) and `ref` (a plume kernel) on the
// call's data with F32 results and compares them.
cudaError_t RunCheck(int best, int ref, const Check& check, cudaStream_t stream, bool* agree) {
  const size_t count = static_cast<size_t>(check.count);
  std::vector<float> a(count), b(count);
  PLUME_CUDA_TRY(check.launch(ref, check.a));
  PLUME_CUDA_TRY(check.launch(best, check.b));
  PLUME_CUDA_TRY(cudaMemcpyAsync(a.data(), check.a, count * sizeof(float), cudaMemcpyDeviceToHost, stream));
  PLUME_CUDA_TRY(cudaMemcpyAsync(b.data(), check.b, count * sizeof(float), cudaMemcpyDeviceToHost, stream));
  PLUME_CUDA_TRY(cudaStreamSynchronize(stream));
  *agree = Agree(a.data(), b.data(), check.count);
  return cudaSuccess;
}

}  // namespace

bool Agree(const float* a, const float* b, int64_t count) {
  double err = 0, norm = 0;
  for (int64_t i = 0; i < count; ++i) {
    const double x = a[i], y = b[i];
    if (std::isnan(x) || std::isnan(y)) {
      if (std::isnan(x) != std::isnan(y)) return false;
      continue;
    }
    if (std::isinf(x) || std::isinf(y)) {
      if (x != y) return false;
      continue;
    }
    err += (x - y) * (x - y);
    norm += x * x;
  }
  return norm > 0 ? std::sqrt(err / norm) <= kAgreement : err == 0;
}

cudaError_t TuneAndLaunch(const Key& key, const GemvKernel* kernels, int n,
                          const std::function<cudaError_t(int)>& launch, const Check& check,
                          cudaStream_t stream) {
  if (n < 1 || n > kMaxCandidates) return cudaErrorInvalidValue;
  constexpr int kEvents = 2 * kMaxCandidates * kTuneRounds;  // [round][candidate][start, end]
  cudaEvent_t ev[kEvents];
  const int events = 2 * n * kTuneRounds;
  int made = 0;
  cudaError_t err = cudaSuccess;
  for (; made < events && err == cudaSuccess; ++made) err = cudaEventCreate(&ev[made]);
  if (err != cudaSuccess) --made;  // the failed one was not created
  for (const TuneLaunch& l : TuneOrder(n, kTuneRounds)) {
    if (err != cudaSuccess) break;
    cudaEvent_t* e = l.round >= 0 ? ev + 2 * (n * l.round + l.candidate) : nullptr;
    if (e != nullptr) err = cudaEventRecord(e[0], stream);
    if (err == cudaSuccess) err = launch(l.candidate);
    if (err == cudaSuccess && e != nullptr) err = cudaEventRecord(e[1], stream);
  }
  if (err == cudaSuccess) err = cudaEventSynchronize(ev[events - 1]);
  float ms[kMaxCandidates][kTuneRounds];
  for (int r = 0; r < kTuneRounds && err == cudaSuccess; ++r) {
    for (int i = 0; i < n && err == cudaSuccess; ++i) {
      err = cudaEventElapsedTime(&ms[i][r], ev[2 * (n * r + i)], ev[2 * (n * r + i) + 1]);
    }
  }
  for (int i = 0; i < made; ++i) cudaEventDestroy(ev[i]);
  PLUME_CUDA_TRY(err);
  float median[kMaxCandidates];
  for (int i = 0; i < n; ++i) {
    std::sort(ms[i], ms[i] + kTuneRounds);
    median[i] = ms[i][kTuneRounds / 2];
  }
  // The fastest, and the fastest of plume's own kernels.
  int best = 0, best_plume = -1;
  for (int i = 0; i < n; ++i) {
    if (median[i] < median[best]) best = i;
    if (kernels[i] != GemvKernel::kCublasLt && (best_plume < 0 || median[i] < median[best_plume])) {
      best_plume = i;
    }
  }
  int last = n - 1;
  if (kernels[best] == GemvKernel::kCublasLt && best_plume >= 0) {
    bool agree = false;
    PLUME_CUDA_TRY(RunCheck(best, best_plume, check, stream, &agree));
    if (!agree) best = best_plume;
    last = -1;  // the check's launches wrote elsewhere
  }
  Store(key, kernels[best]);
  // PLUME_GEMV_TUNE_LOG=1: one line per measurement on stderr, for benches.
  static const bool log = [] {
    const char* v = std::getenv("PLUME_GEMV_TUNE_LOG");
    return v != nullptr && v[0] != '\0' && v[0] != '0';
  }();
  if (log) {
    std::string line = "plume gemv tuner: " + std::to_string(key.rows) + "x" +
                       std::to_string(key.cols) + " batch bucket " +
                       std::to_string(key.batch_bucket) + ":";
    char buf[64];
    for (int i = 0; i < n; ++i) {
      std::snprintf(buf, sizeof buf, " %s %.2f us", GemvKernelName(kernels[i]), median[i] * 1e3);
      line += buf;
    }
    line += std::string(" -> ") + GemvKernelName(kernels[best]) + "\n";
    std::fputs(line.c_str(), stderr);
  }
  return last == best ? cudaSuccess : launch(best);
}

}  // namespace plume::cuda::gemv_tuner
