#include "gemv_session_impl.h"

namespace plume {

GemvSession::GemvSession(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

GemvSession::~GemvSession() { impl_->Shutdown(); }

std::future<absl::StatusOr<GemvResult>> GemvSession::Push(const TensorRef& input, float input_scale) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<GemvResult>>>();
  auto future = promise->get_future();
  Push(input, [promise](uint64_t, absl::StatusOr<GemvResult> r) { promise->set_value(std::move(r)); },
       input_scale);
  return future;
}

uint64_t GemvSession::Push(const TensorRef& input, Callback done, float input_scale) {
  if (auto s = ValidateTensor(input); !s.ok()) {
    done(0, s);
    return 0;
  }
  v1::GemvRequest req;
  req.set_matrix(impl_->matrix);
  ToProto(input, req.mutable_input());
  req.set_output_dtype(impl_->options.output_dtype);
  req.set_input_scale(input_scale);
  return impl_->Push(std::move(req), [done = std::move(done)](uint64_t id, absl::StatusOr<HostTensor> out) {
    if (!out.ok()) {
      done(id, out.status());
    } else {
      done(id, GemvResult{id, std::move(*out)});
    }
  });
}

absl::Status GemvSession::Finish() { return impl_->Finish(); }

void GemvSession::Cancel() { impl_->Cancel(); }

int GemvSession::in_flight() const { return impl_->InFlight(); }

}  // namespace plume
