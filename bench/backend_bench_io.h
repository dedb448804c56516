// What the benches that drive a Backend directly (gpu_multi_bench,
// gpu_call_bench) share: dying with a message on a failed status, and one
// call's F16 activations and F32 results, pinned (the batcher's way) or in
// heap memory (the staging path).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "plume/reference/api.h"
#include "server/core/backend.h"

namespace plume::bench {

// The program's name in its error messages; set by main.
inline const char* g_bench_name = "bench";

[[noreturn]] inline void Die(const std::string& what) {
  std::fprintf(stderr, "%s: %s\n", g_bench_name, what.c_str());
  std::exit(1);
}

template <class T>
T Check(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) Die(absl::StrCat(what, ": ", v.status().ToString()));
  return std::move(*v);
}
inline void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) Die(absl::StrCat(what, ": ", s.ToString()));
}

// Activations (F16, uniform in [-1, 1), a fixed seed) and results (F32) for
// one call of `batch` vectors.
struct Io {
  std::unique_ptr<core::HostBuffer> x_pinned, y_pinned;
  std::vector<char> x_heap, y_heap;
  core::GemvArgs args;
};

inline Io MakeIo(core::Backend& b, int64_t rows, int64_t cols, int64_t batch, bool heap) {
  Io io;
  const size_t xb = static_cast<size_t>(batch * cols * 2), yb = static_cast<size_t>(batch * rows * 4);
  void *x, *y;
  if (heap) {
    io.x_heap.resize(xb);
    io.y_heap.resize(yb);
    x = io.x_heap.data();
    y = io.y_heap.data();
  } else {
    io.x_pinned = Check(b.AllocateHostBuffer(xb), "pinned activations");
    io.y_pinned = Check(b.AllocateHostBuffer(yb), "pinned results");
    x = io.x_pinned->data();
    y = io.y_pinned->data();
  }
  std::vector<float> xf(static_cast<size_t>(batch * cols));
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  for (auto& v : xf) v = d(rng);
  ref::FromFloat(xf.data(), batch * cols, DType::kF16, x);
  io.args = core::GemvArgs{x, DType::kF16, 1.0f, batch, y, DType::kF32};
  return io;
}

}  // namespace plume::bench
