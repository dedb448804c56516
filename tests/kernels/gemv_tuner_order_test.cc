// The GEMV dispatcher's timing order (kernels/cuda/src/gemv_tuner_order.h):
// every timed launch follows an untimed launch of the same candidate, every
// (candidate, round) is timed exactly once, and the candidates take turns
// within each round.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/cuda/src/gemv_tuner_order.h"

namespace plume::cuda::gemv_tuner {
namespace {

TEST(GemvTunerOrder, EachTimedLaunchFollowsARunOfItself) {
  for (int n = 1; n <= 3; ++n) {
    for (int rounds = 1; rounds <= 7; ++rounds) {
      const std::vector<TuneLaunch> order = TuneOrder(n, rounds);
      ASSERT_EQ(order.size(), static_cast<size_t>(2 * n * rounds)) << n << " " << rounds;
      std::vector<std::vector<int>> timed(static_cast<size_t>(n), std::vector<int>(rounds, 0));
      std::vector<bool> ran(static_cast<size_t>(n), false);
      int last_round = 0;
      for (size_t k = 0; k < order.size(); ++k) {
        const TuneLaunch& l = order[k];
        ASSERT_GE(l.candidate, 0);
        ASSERT_LT(l.candidate, n);
        if (l.round >= 0) {
          ASSERT_LT(l.round, rounds);
          ASSERT_GT(k, 0u);
          // The launch before is the same candidate, untimed.
          EXPECT_EQ(order[k - 1].candidate, l.candidate) << "launch " << k;
          EXPECT_EQ(order[k - 1].round, -1) << "launch " << k;
          EXPECT_TRUE(ran[static_cast<size_t>(l.candidate)]);  // never its first run
          ++timed[static_cast<size_t>(l.candidate)][static_cast<size_t>(l.round)];
          EXPECT_GE(l.round, last_round) << "rounds run in order";
          last_round = l.round;
        }
        ran[static_cast<size_t>(l.candidate)] = true;
      }
      for (int i = 0; i < n; ++i) {
        for (int r = 0; r < rounds; ++r) EXPECT_EQ(timed[i][r], 1) << i << " round " << r;
      }
      // The last launch is the last candidate's (the tuner relies on it: that
      // candidate's results are the call's when it is the one chosen).
      EXPECT_EQ(order.back().candidate, n - 1);
      EXPECT_EQ(order.back().round, rounds - 1);
      // Within a round the candidates take turns: round r's timed launches
      // are candidates 0 .. n-1 in order.
      for (int r = 0; r < rounds; ++r) {
        std::vector<int> seq;
        for (const TuneLaunch& l : order) {
          if (l.round == r) seq.push_back(l.candidate);
        }
        ASSERT_EQ(seq.size(), static_cast<size_t>(n));
        for (int i = 0; i < n; ++i) EXPECT_EQ(seq[i], i);
      }
    }
  }
}

TEST(GemvTunerOrder, NothingToTimeGivesNoLaunches) {
  EXPECT_TRUE(TuneOrder(0, 7).empty());
  EXPECT_TRUE(TuneOrder(3, 0).empty());
}

}  // namespace
}  // namespace plume::cuda::gemv_tuner
