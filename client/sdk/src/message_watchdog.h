// A per-message timeout for the SDK's streamed uploads. gRPC deadlines cover
// a whole call, so a deadline long enough for a large upload cannot also
// catch a stalled one early. The watchdog cancels the call's context
// (ClientContext::TryCancel, which may be called from any thread and ends a
// Write blocked on flow control) when no progress was reported for
// `timeout`: the upload reports progress after each message gRPC accepted,
// and once more before waiting for the server's answer.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/status.h"

namespace grpc {
class ClientContext;
}  // namespace grpc

namespace plume {

class MessageWatchdog {
 public:
  // Starts watching `ctx` (nullopt: does nothing). The first message's time
  // starts now.
  MessageWatchdog(grpc::ClientContext* ctx, std::optional<std::chrono::milliseconds> timeout);
  ~MessageWatchdog();  // Stop()
  MessageWatchdog(const MessageWatchdog&) = delete;
  MessageWatchdog& operator=(const MessageWatchdog&) = delete;

  // A message was accepted (or the last one was, and the answer is awaited:
  // `awaiting_answer`): the next one has `timeout` from now. Cheap: an
  // atomic store, no lock and no wake-up.
  void Progress(bool awaiting_answer = false);
  // Stops watching; the context is never cancelled after it returns.
  void Stop();
  // Whether the watchdog cancelled the call.
  bool fired() const { return fired_.load(std::memory_order_acquire); }
  // `s` (the call's status), or, when the watchdog cancelled the call,
  // DEADLINE_EXCEEDED saying which message did not go through in time.
  absl::Status Explain(const absl::Status& s) const;

 private:
  void Loop();

  grpc::ClientContext* const ctx_;
  const std::chrono::milliseconds timeout_;
  std::atomic<int64_t> deadline_ns_{0};  // steady_clock, since its epoch
  std::atomic<int64_t> messages_{0};     // accepted so far
  std::atomic<bool> awaiting_answer_{false};
  std::atomic<bool> fired_{false};
  std::atomic<bool> fired_awaiting_answer_{false};  // the phase it fired in
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace plume
