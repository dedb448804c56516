// Test helper: wait for observable state (a metric, a counter the test
// keeps, a state the API exposes) instead of sleeping a fixed time and
// hoping that something happened meanwhile.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include <gtest/gtest.h>

namespace plume::testing {

// Long enough that a loaded 2-core CI machine never reaches it while the
// awaited state is on its way; a state that never comes fails the test
// after it, saying what was awaited.
inline constexpr std::chrono::seconds kWaitTimeout{30};

// Polls `done` every `poll` until it returns true (success) or `timeout`
// passes (failure naming `what`). Use as
// ASSERT_TRUE(WaitUntil("...", [&] { return ...; })) << more context.
inline ::testing::AssertionResult WaitUntil(
    const std::string& what, const std::function<bool()>& done,
    std::chrono::milliseconds timeout = kWaitTimeout,
    std::chrono::milliseconds poll = std::chrono::milliseconds(1)) {
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    if (done()) return ::testing::AssertionSuccess();
    if (std::chrono::steady_clock::now() - t0 >= timeout) break;
    std::this_thread::sleep_for(poll);
  }
  return ::testing::AssertionFailure()
         << "gave up after " << std::chrono::duration<double>(timeout).count()
         << " s waiting for " << what;
}

}  // namespace plume::testing
