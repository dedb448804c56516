// GemvSession: GEMV over one GemvStream. Push vectors; each result arrives
// (as a future or a callback) when the server sends it, matched by
// request_id, so out-of-order replies are fine. At most `max_in_flight`
// requests are outstanding: Push blocks while that many are (backpressure).
//
//   auto s = client->StartGemvSession("w", {.max_in_flight = 32});
//   auto f = (*s)->Push(plume::TensorRef::F32(x, {cols}));
//   ...
//   absl::StatusOr<plume::HostTensor> y = f.get();
//   absl::Status st = (*s)->Finish();
//
// Thread safety: Push may be called from several threads at once. Finish and
// Cancel may be called from any thread, but not from a result callback.
// Design: a synchronous ClientReaderWriter plus one reader thread; writes are
// serialized by a mutex, and the stream's deadline bounds every wait, so a
// dead server fails the pending items instead of hanging.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "plume/client/tensor.h"
#include "plume/v1/plume.pb.h"

namespace plume {

struct GemvSessionOptions {
  // Requests sent but not yet answered; Push blocks while this many are.
  int max_in_flight = 64;
  // Deadline for the whole stream; ClientOptions::default_timeout if unset.
  std::optional<std::chrono::milliseconds> timeout;
  v1::DType output_dtype = v1::DTYPE_F32;
};

struct GemvResult {
  uint64_t request_id = 0;
  HostTensor output;
};

class GemvSession {
 public:
  using Callback = std::function<void(uint64_t request_id, absl::StatusOr<GemvResult> result)>;

  ~GemvSession();  // Cancels the stream if Finish was not called, then waits for the reader.
  GemvSession(const GemvSession&) = delete;
  GemvSession& operator=(const GemvSession&) = delete;

  // Sends one request (input [cols] or [batch, cols]). The future fails with
  // the item's own status (GemvResponse.status), or with the stream's status
  // if the stream ends first; Push after Finish/Cancel or a failed stream
  // yields a ready, failed future.
  std::future<absl::StatusOr<GemvResult>> Push(const TensorRef& input, float input_scale = 0.0f);

  // The callback form: `done` runs exactly once, on the session's reader
  // thread (or inline when Push fails at once). It must not block for long
  // and must not call Finish/Cancel/~GemvSession. Returns the request_id
  // assigned (0 when Push failed at once).
  uint64_t Push(const TensorRef& input, Callback done, float input_scale = 0.0f);

  // Half-closes the stream, waits for every outstanding result and returns the
  // stream's final status. Items the server never answered fail with it (or
  // with INTERNAL if the stream ended OK without answering them). Idempotent.
  absl::Status Finish();

  // Cancels the stream: outstanding items fail with CANCELLED.
  void Cancel();

  // Requests pushed and not yet answered.
  int in_flight() const;

 private:
  friend class Client;
  struct Impl;
  explicit GemvSession(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace plume
