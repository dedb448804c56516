#include "plume/client/attention_session.h"

#include "attention_session_impl.h"

namespace plume {

v1::AttentionRequest MakeAttentionRequest(const std::string& cache, const TensorRef& query,
                                          const AttentionOptions& options) {
  v1::AttentionRequest req;
  req.set_cache(cache);
  ToProto(query, req.mutable_query());
  req.set_softmax_scale(options.softmax_scale);
  req.set_causal(options.causal);
  req.set_output_dtype(options.output_dtype);
  return req;
}

AttentionSession::AttentionSession(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

AttentionSession::~AttentionSession() { impl_->Shutdown(); }

std::future<absl::StatusOr<AttentionResult>> AttentionSession::Push(const TensorRef& query) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<AttentionResult>>>();
  auto future = promise->get_future();
  Push(query, [promise](uint64_t, absl::StatusOr<AttentionResult> r) { promise->set_value(std::move(r)); });
  return future;
}

uint64_t AttentionSession::Push(const TensorRef& query, Callback done) {
  if (auto s = ValidateTensor(query); !s.ok()) {
    done(0, s);
    return 0;
  }
  v1::AttentionRequest req = MakeAttentionRequest(impl_->cache, query, impl_->options.attention);
  return impl_->Push(std::move(req), [done = std::move(done)](uint64_t id, absl::StatusOr<HostTensor> out) {
    if (!out.ok()) {
      done(id, out.status());
    } else {
      done(id, AttentionResult{id, std::move(*out)});
    }
  });
}

absl::Status AttentionSession::Finish() { return impl_->Finish(); }

void AttentionSession::Cancel() { impl_->Cancel(); }

int AttentionSession::in_flight() const { return impl_->InFlight(); }

}  // namespace plume
