#include "echo_session_impl.h"

namespace plume {

EchoSession::EchoSession(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

EchoSession::~EchoSession() { impl_->Shutdown(); }

uint64_t EchoSession::Push(const TensorRef& payload, Callback done) {
  if (auto s = ValidateTensor(payload); !s.ok()) {
    done(0, s);
    return 0;
  }
  v1::EchoRequest req;
  ToProto(payload, req.mutable_input());
  return impl_->Push(std::move(req), std::move(done));
}

absl::Status EchoSession::Finish() { return impl_->Finish(); }

void EchoSession::Cancel() { impl_->Cancel(); }

int EchoSession::in_flight() const { return impl_->InFlight(); }

}  // namespace plume
