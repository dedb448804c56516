#include <spdlog/spdlog.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "gemv_session_impl.h"
#include "plume/client/status.h"

namespace plume {

void GemvSession::Impl::Start() {
  reader = std::thread([this] { ReadLoop(); });
}

void GemvSession::Impl::ReadLoop() {
  v1::GemvResponse resp;
  while (stream->Read(&resp)) {
    Deliver deliver;
    {
      std::lock_guard<std::mutex> l(mu);
      auto it = pending.find(resp.request_id());
      if (it == pending.end()) {
        spdlog::warn("plume: GemvStream reply for unknown request_id {} ignored", resp.request_id());
        continue;
      }
      deliver = std::move(it->second);
      pending.erase(it);
    }
    cv.notify_all();
    if (resp.has_status() && resp.status().code() != 0) {
      deliver(resp.request_id(), StatusFromCode(resp.status().code(), resp.status().message()));
    } else {
      GemvResult r;
      r.request_id = resp.request_id();
      r.output = FromProto(std::move(*resp.mutable_output()));
      deliver(resp.request_id(), std::move(r));
    }
  }
  // The server has closed its side (or the call failed): no Write may be in
  // progress while Finish runs, and none may start afterwards.
  {
    std::lock_guard<std::mutex> w(write_mu);
    write_closed = true;
  }
  const absl::Status status = FromGrpcStatus(stream->Finish());
  std::map<uint64_t, Deliver> orphans;
  {
    std::lock_guard<std::mutex> l(mu);
    done = true;
    final_status = status;
    orphans.swap(pending);
  }
  cv.notify_all();
  for (auto& [id, deliver] : orphans) {
    if (status.ok()) {
      deliver(id, absl::InternalError(
          absl::StrCat("GemvStream ended without a result for request_id ", id)));
    } else {
      deliver(id, status);
    }
  }
}

uint64_t GemvSession::Impl::Push(const TensorRef& input, float input_scale, Deliver deliver) {
  if (auto s = ValidateTensor(input); !s.ok()) {
    deliver(0, s);
    return 0;
  }
  v1::GemvRequest req;
  req.set_matrix(matrix);
  ToProto(input, req.mutable_input());
  req.set_output_dtype(options.output_dtype);
  req.set_input_scale(input_scale);

  uint64_t id;
  {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
      return done || closing || static_cast<int>(pending.size()) < options.max_in_flight;
    });
    if (done || closing) {
      absl::Status s = done && !final_status.ok()
                           ? final_status
                           : absl::FailedPreconditionError("GemvSession is finished");
      l.unlock();
      deliver(0, std::move(s));
      return 0;
    }
    id = next_id++;
    pending.emplace(id, std::move(deliver));
  }
  req.set_request_id(id);
  {
    std::lock_guard<std::mutex> w(write_mu);
    // A failed Write means the call is over; the reader then sees Read fail
    // and fails this item (it is in `pending`) with the stream's status.
    if (!write_closed && !stream->Write(req)) write_closed = true;
  }
  return id;
}

void GemvSession::Impl::Join() {
  std::lock_guard<std::mutex> j(join_mu);
  if (reader.joinable()) reader.join();
}

absl::Status GemvSession::Impl::Finish() {
  {
    std::lock_guard<std::mutex> l(mu);
    closing = true;
  }
  cv.notify_all();
  {
    std::lock_guard<std::mutex> w(write_mu);
    if (!write_closed) {
      stream->WritesDone();
      write_closed = true;
    }
  }
  Join();  // returns once the server ends the stream, or the deadline passes
  std::lock_guard<std::mutex> l(mu);
  return final_status;
}

void GemvSession::Impl::Cancel() {
  {
    std::lock_guard<std::mutex> l(mu);
    closing = true;
  }
  cv.notify_all();
  ctx->TryCancel();
  Join();
}

GemvSession::GemvSession(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

GemvSession::~GemvSession() {
  bool finished;
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    finished = impl_->done;
  }
  if (!finished) impl_->Cancel();
  impl_->Join();
}

std::future<absl::StatusOr<GemvResult>> GemvSession::Push(const TensorRef& input, float input_scale) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<GemvResult>>>();
  auto future = promise->get_future();
  impl_->Push(input, input_scale,
              [promise](uint64_t, absl::StatusOr<GemvResult> r) { promise->set_value(std::move(r)); });
  return future;
}

uint64_t GemvSession::Push(const TensorRef& input, Callback done, float input_scale) {
  return impl_->Push(input, input_scale, std::move(done));
}

absl::Status GemvSession::Finish() { return impl_->Finish(); }

void GemvSession::Cancel() { impl_->Cancel(); }

int GemvSession::in_flight() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  return static_cast<int>(impl_->pending.size());
}

}  // namespace plume
