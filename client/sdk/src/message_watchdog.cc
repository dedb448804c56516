#include "message_watchdog.h"

#include <grpcpp/client_context.h>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace plume {

namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

MessageWatchdog::MessageWatchdog(grpc::ClientContext* ctx, std::optional<std::chrono::milliseconds> timeout)
    : ctx_(ctx), timeout_(timeout.value_or(std::chrono::milliseconds(0))) {
  if (!timeout.has_value()) return;
  deadline_ns_.store(NowNs() + std::chrono::nanoseconds(timeout_).count(), std::memory_order_release);
  thread_ = std::thread([this] { Loop(); });
}

MessageWatchdog::~MessageWatchdog() { Stop(); }

void MessageWatchdog::Progress(bool awaiting_answer) {
  if (!thread_.joinable()) return;
  if (awaiting_answer) {
    awaiting_answer_.store(true, std::memory_order_release);
  } else {
    messages_.fetch_add(1, std::memory_order_relaxed);
  }
  deadline_ns_.store(NowNs() + std::chrono::nanoseconds(timeout_).count(), std::memory_order_release);
}

void MessageWatchdog::Stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void MessageWatchdog::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    // Progress() moves the deadline without waking this thread: it wakes at
    // the deadline it saw, and sleeps again if that has moved.
    const int64_t deadline = deadline_ns_.load(std::memory_order_acquire);
    if (NowNs() >= deadline) {
      fired_awaiting_answer_.store(awaiting_answer_.load(std::memory_order_acquire), std::memory_order_relaxed);
      fired_.store(true, std::memory_order_release);
      ctx_->TryCancel();
      return;
    }
    cv_.wait_until(lock, std::chrono::steady_clock::time_point(std::chrono::nanoseconds(deadline)));
  }
}

absl::Status MessageWatchdog::Explain(const absl::Status& s) const {
  if (!fired()) return s;
  const std::string t = absl::FormatDuration(absl::FromChrono(timeout_));
  if (fired_awaiting_answer_.load(std::memory_order_relaxed)) {
    return absl::DeadlineExceededError(absl::StrCat(
        "no answer from the server within the per-message timeout (", t, ") after the upload's last message"));
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "upload stalled: message ", messages_.load(std::memory_order_relaxed) + 1,
      " was not accepted within the per-message timeout (", t,
      "); the server did not read it (overloaded, stopped, or the network is down)"));
}

}  // namespace plume
