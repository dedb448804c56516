#include "server/backends/cuda/cuda_gemv_graphs.h"

#include <algorithm>
#include <cstring>
#include <limits>

namespace plume::core::cuda_internal {
namespace {

uint64_t U(const void* p) { return reinterpret_cast<uintptr_t>(p); }
uint64_t U(int64_t v) { return static_cast<uint64_t>(v); }

}  // namespace

GemvGraphs::Key GemvGraphs::KeyOf(const cuda::GemvProblem& p, const Copies& c) {
  uint32_t scale_bits = 0;
  std::memcpy(&scale_bits, &p.x_scale, sizeof scale_bits);
  const uint64_t kinds = uint64_t{static_cast<uint8_t>(p.format)} |
                         uint64_t{static_cast<uint8_t>(p.scale_mode)} << 8 |
                         uint64_t{static_cast<uint8_t>(p.x_dtype)} << 16 |
                         uint64_t{static_cast<uint8_t>(p.y_dtype)} << 24 |
                         uint64_t{static_cast<uint8_t>(p.path)} << 32 |
                         uint64_t{static_cast<uint8_t>(p.kernel)} << 40;
  return {U(p.words),       U(p.scales),   U(p.nan_rows), U(p.rows),         U(p.cols),
          kinds,            U(p.x),        scale_bits,    U(p.batch),        U(p.y),
          U(c.x_src),       U(c.x_bytes),  U(c.y_dst),    U(c.y_row_bytes),  U(c.y_stride_bytes),
          U(c.workspace)};
}

GemvGraphs::~GemvGraphs() {
  for (Entry& e : entries_) {
    if (e.exec != nullptr) cudaGraphExecDestroy(e.exec);
  }
}

void GemvGraphs::EvictOne() {
  auto oldest = entries_.end();
  uint64_t t = std::numeric_limits<uint64_t>::max();
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if (it->last_use < t) {
      t = it->last_use;
      oldest = it;
    }
  }
  if (oldest == entries_.end()) return;
  // A graph still running is freed when it completes (cudaGraphExecDestroy).
  if (oldest->exec != nullptr) cudaGraphExecDestroy(oldest->exec);
  entries_.erase(oldest);
}

cudaError_t GemvGraphs::Capture(const std::function<cudaError_t(cudaStream_t)>& enqueue,
                                cudaStream_t stream, cudaGraphExec_t* exec) {
  // Thread-local mode: another thread's allocations (an upload's) do not
  // invalidate this capture; this thread makes none while capturing.
  cudaError_t e = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal);
  if (e != cudaSuccess) return e;
  const cudaError_t inner = enqueue(stream);
  cudaGraph_t graph = nullptr;
  e = cudaStreamEndCapture(stream, &graph);  // ends the capture whatever happened in it
  if (inner != cudaSuccess || e != cudaSuccess) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    return inner != cudaSuccess ? inner : e;
  }
  e = cudaGraphInstantiate(exec, graph, 0);
  cudaGraphDestroy(graph);
  if (e != cudaSuccess) *exec = nullptr;
  return e;
}

cudaError_t GemvGraphs::Run(const Key& key, const std::function<cudaError_t(cudaStream_t)>& enqueue,
                            cudaStream_t stream, bool* replayed) {
  *replayed = false;
  ++clock_;
  auto it = std::find_if(entries_.begin(), entries_.end(),
                         [&](const Entry& e) { return e.key == key; });
  if (it == entries_.end()) {
    if (static_cast<int>(entries_.size()) >= kCapacity) EvictOne();
    entries_.push_back(Entry{key, nullptr, false, clock_});
    return enqueue(stream);
  }
  Entry& e = *it;
  e.last_use = clock_;
  if (e.exec == nullptr && !e.uncapturable) {
    if (Capture(enqueue, stream, &e.exec) != cudaSuccess) {
      // Not capturable (or it failed): direct calls from now on. Clear the
      // error so that it does not surface at the next call.
      cudaGetLastError();
      e.exec = nullptr;
      e.uncapturable = true;
    }
  }
  if (e.exec == nullptr) return enqueue(stream);
  *replayed = true;
  return cudaGraphLaunch(e.exec, stream);
}

}  // namespace plume::core::cuda_internal
