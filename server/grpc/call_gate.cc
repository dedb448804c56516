#include "server/grpc/call_gate.h"

#include <grpc/grpc.h>

#include <vector>

#include "absl/time/time.h"

namespace plume::server {

absl::Status CallGate::Admit(grpc::CallbackServerContext* ctx) {
  // Only admitted calls are registered: a refused one is finishing with its
  // own status already, which an abort must not race.
  absl::Status s = auth_ == nullptr ? absl::OkStatus() : auth_->Check(*ctx);
  absl::MutexLock lock(&mu_);
  if (draining_) return absl::UnavailableError("server is shutting down; retry on another replica");
  if (s.ok()) {
    calls_.emplace(ctx, false);
    SetGaugeLocked();
  }
  return s;
}

void CallGate::CallDone(grpc::CallbackServerContext* ctx) {
  absl::MutexLock lock(&mu_);
  if (calls_.erase(ctx) != 0) SetGaugeLocked();
}

void CallGate::SetGaugeLocked() {
  if (metrics_ != nullptr) metrics_->SetCallsInFlight(static_cast<int64_t>(calls_.size()));
}

void CallGate::StartDraining() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
}

bool CallGate::WaitIdle(std::chrono::system_clock::time_point deadline) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return calls_.empty(); };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), absl::FromChrono(deadline));
}

int CallGate::AbortOpenCalls() {
  // Cancelling runs the call's reactions (OnCancel, even OnDone and so
  // CallDone) on this thread, so the calls are cancelled outside the lock,
  // each held by a reference taken while it was still registered.
  std::vector<grpc_call*> calls;
  {
    absl::MutexLock lock(&mu_);
    calls.reserve(calls_.size());
    for (auto& [ctx, aborted] : calls_) {
      aborted = true;
      grpc_call* call = ctx->c_call();
      grpc_call_ref(call);
      calls.push_back(call);
    }
  }
  for (grpc_call* call : calls) {
    grpc_call_cancel_with_status(call, GRPC_STATUS_UNAVAILABLE, kAbortedAtDrainTimeout, nullptr);
    grpc_call_unref(call);
  }
  return static_cast<int>(calls.size());
}

bool CallGate::Aborted(grpc::CallbackServerContext* ctx) const {
  absl::MutexLock lock(&mu_);
  const auto it = calls_.find(ctx);
  return it != calls_.end() && it->second;
}

int64_t CallGate::open_calls() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(calls_.size());
}

}  // namespace plume::server
