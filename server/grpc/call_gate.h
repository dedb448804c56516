// Admission of calls, shared by the services of one server: the bearer
// token, the graceful drain, and the end of the calls still open when the
// drain runs out.
#pragma once

#include <chrono>
#include <cstdint>
#include <unordered_map>

#include <grpcpp/server_context.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "server/core/metrics.h"
#include "server/grpc/auth.h"

namespace plume::server {

// Every call is admitted once and ends with one CallDone(), whatever Admit
// returned; the gate knows each admitted call until then, and counts them in
// plume_calls_in_flight.
class CallGate {
 public:
  // `auth` (not owned; may be null) checks each call's bearer token;
  // `metrics` (not owned; may be null) gets the number of open calls.
  CallGate(const TokenAuth* auth, core::Metrics* metrics) : auth_(auth), metrics_(metrics) {}

  // OK, UNAVAILABLE while draining, or UNAUTHENTICATED without the token.
  absl::Status Admit(grpc::CallbackServerContext* ctx);
  // The call's reactor is done (from its OnDone; `ctx` is still alive).
  void CallDone(grpc::CallbackServerContext* ctx);

  // Graceful drain: from now on new calls get UNAVAILABLE.
  void StartDraining();
  // Returns once no admitted call is open (true), or at `deadline` (false).
  bool WaitIdle(std::chrono::system_clock::time_point deadline);
  // Ends every call still open with UNAVAILABLE, which its client sees at
  // once, whatever its flow-control state (the status goes out in a HEADERS
  // frame, which flow control does not hold), and may retry elsewhere. The
  // reactors see a cancel and finish. Returns how many calls it ended.
  int AbortOpenCalls();
  // True when AbortOpenCalls ended `ctx`: its client got UNAVAILABLE.
  bool Aborted(grpc::CallbackServerContext* ctx) const;
  int64_t open_calls() const;

 private:
  void SetGaugeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const TokenAuth* auth_;
  core::Metrics* const metrics_;
  mutable absl::Mutex mu_;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  // Each open call and whether AbortOpenCalls ended it.
  std::unordered_map<grpc::CallbackServerContext*, bool> calls_ ABSL_GUARDED_BY(mu_);
};

// The message of the UNAVAILABLE that AbortOpenCalls sends.
inline constexpr char kAbortedAtDrainTimeout[] =
    "server shut down before the call finished (drain timeout); retry on another replica";

}  // namespace plume::server
