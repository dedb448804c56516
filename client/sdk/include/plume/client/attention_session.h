// AttentionSession: attention over one AttentionStream, on one K/V cache.
// Push query tensors; each result arrives (as a future or a callback) when
// the server sends it, matched by request_id, so out-of-order replies are
// fine. At most `max_in_flight` requests are outstanding: Push blocks while
// that many are (backpressure). Thread safety as GemvSession.
//
//   auto s = client->StartAttentionSession("kv0", {.causal = true});
//   auto f = (*s)->Push(plume::TensorRef::F32(q, {1, heads, 1, head_dim}));
//   absl::StatusOr<plume::AttentionResult> out = f.get();
//   absl::Status st = (*s)->Finish();
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "plume/client/tensor.h"
#include "plume/v1/attention.pb.h"

namespace plume {

// Options of one attention request.
struct AttentionOptions {
  float softmax_scale = 0.0f;  // 0: 1/sqrt(head_dim)
  bool causal = false;         // the queries are the last q_len positions
  v1::DType output_dtype = v1::DTYPE_F32;
};

struct AttentionSessionOptions {
  int max_in_flight = 64;
  // Deadline for the whole stream; ClientOptions::default_timeout if unset.
  std::optional<std::chrono::milliseconds> timeout;
  AttentionOptions attention;  // applied to every request of the session
};

struct AttentionResult {
  uint64_t request_id = 0;
  HostTensor output;  // [batch, heads, q_len, head_dim]
};

class AttentionSession {
 public:
  using Callback = std::function<void(uint64_t request_id, absl::StatusOr<AttentionResult> result)>;

  ~AttentionSession();  // Cancels the stream if Finish was not called, then waits for the reader.
  AttentionSession(const AttentionSession&) = delete;
  AttentionSession& operator=(const AttentionSession&) = delete;

  // Sends one request (query [batch, heads, q_len, head_dim]). The future
  // fails with the item's own status, or the stream's if it ends first.
  std::future<absl::StatusOr<AttentionResult>> Push(const TensorRef& query);
  // The callback form (runs once, on the reader thread or inline when Push
  // fails at once). Returns the request_id (0 when Push failed at once).
  uint64_t Push(const TensorRef& query, Callback done);

  // Half-closes, waits for every outstanding result, returns the stream's status.
  absl::Status Finish();
  void Cancel();
  int in_flight() const;

 private:
  friend class Client;
  struct Impl;
  explicit AttentionSession(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace plume
