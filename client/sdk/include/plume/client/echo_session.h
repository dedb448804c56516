// EchoSession: DiagnosticsService.EchoStream, the streaming form of Echo.
// Push payloads; each comes back (to a callback) when the server returns
// it, matched by request_id. Same backpressure, threading and deadline rules
// as GemvSession (gemv_session.h). `plume bench --echo --mode stream` uses it.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "plume/client/tensor.h"

namespace plume {

struct EchoSessionOptions {
  // Requests sent but not yet answered; Push blocks while this many are.
  int max_in_flight = 64;
  // Deadline for the whole stream; ClientOptions::default_timeout if unset.
  std::optional<std::chrono::milliseconds> timeout;
};

class EchoSession {
 public:
  // `done` gets the payload as the server returned it, or the item's (or the
  // stream's) error.
  using Callback = std::function<void(uint64_t request_id, absl::StatusOr<HostTensor> payload)>;

  ~EchoSession();  // Cancels the stream if Finish was not called, then waits for the reader.
  EchoSession(const EchoSession&) = delete;
  EchoSession& operator=(const EchoSession&) = delete;

  // Sends one payload; `done` runs exactly once, on the session's reader
  // thread (or inline when Push fails at once). Returns the request_id
  // assigned (0 when Push failed at once).
  uint64_t Push(const TensorRef& payload, Callback done);
  // Half-closes the stream, waits for every outstanding reply, and returns
  // the stream's final status. Idempotent.
  absl::Status Finish();
  // Cancels the stream: outstanding items fail with CANCELLED.
  void Cancel();
  int in_flight() const;

 private:
  friend class Client;
  struct Impl;
  explicit EchoSession(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace plume
