// The order in which the GEMV dispatcher's first-use timing (gemv_tuner.cc)
// launches its candidates, apart from CUDA so that tests/kernels checks it on
// the CPU.
//
// Each round runs every candidate twice in a row and times only the second
// run, so a timed launch always follows a launch of the same kernel on the
// same matrix: the state of L2 it meets is the one it leaves itself, as when
// a server runs it call after call. Timed straight after another candidate,
// a kernel may find in L2 the bytes that one read last and will read soon;
// at 16384^2 batch 1 (256 MiB, five times L2) an interleaved order kept the
// mma.sync kernel, 103.6-104.0 us in the bench, over the Hopper kernel's
// 98.8-99.0 (bench/RESULTS-gpu.md).
#pragma once

#include <vector>

namespace plume::cuda::gemv_tuner {

struct TuneLaunch {
  int candidate = 0;
  int round = -1;  // the round whose events bracket this launch; -1: untimed
};

inline std::vector<TuneLaunch> TuneOrder(int candidates, int rounds) {
  std::vector<TuneLaunch> order;
  if (candidates < 1 || rounds < 1) return order;
  order.reserve(static_cast<size_t>(2 * candidates * rounds));
  for (int r = 0; r < rounds; ++r) {
    for (int i = 0; i < candidates; ++i) {
      order.push_back({i, -1});
      order.push_back({i, r});
    }
  }
  return order;
}

}  // namespace plume::cuda::gemv_tuner
