// Private: the machinery behind GemvSession and AttentionSession, one
// bidirectional stream of independent items matched by request_id.
// Design: a synchronous ClientReaderWriter plus one reader thread; writes are
// serialized by a mutex, and the stream's deadline bounds every wait, so a
// dead server fails the pending items instead of hanging.
#pragma once

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "plume/client/status.h"
#include "plume/client/tensor.h"

namespace plume {

// Req and Resp carry request_id; Resp also `output` (a Tensor) and `status`.
template <class Req, class Resp>
struct StreamSessionCore {
  // Called once with the item's request_id (0 if none was assigned) and its output.
  using Deliver = std::function<void(uint64_t, absl::StatusOr<HostTensor>)>;

  // Set before Start(), read-only afterwards.
  std::string stream_name;  // "GemvStream", for messages
  int max_in_flight = 64;
  std::unique_ptr<grpc::ClientContext> ctx;
  std::unique_ptr<grpc::ClientReaderWriter<Req, Resp>> stream;

  std::mutex mu;
  std::condition_variable cv;  // slot freed, or the stream is done
  std::map<uint64_t, Deliver> pending ABSL_GUARDED_BY(mu);
  uint64_t next_id ABSL_GUARDED_BY(mu) = 1;
  bool closing ABSL_GUARDED_BY(mu) = false;  // Finish or Cancel called: no more Push
  bool done ABSL_GUARDED_BY(mu) = false;     // the stream has ended
  absl::Status final_status ABSL_GUARDED_BY(mu);

  // Serializes Write/WritesDone with each other and with the reader's Finish.
  std::mutex write_mu;
  bool write_closed ABSL_GUARDED_BY(write_mu) = false;

  std::mutex join_mu;  // serializes joining the reader
  std::thread reader;

  void Start() {
    reader = std::thread([this] { ReadLoop(); });
  }

  void ReadLoop() {
    Resp resp;
    while (stream->Read(&resp)) {
      Deliver deliver;
      {
        std::lock_guard<std::mutex> l(mu);
        auto it = pending.find(resp.request_id());
        if (it == pending.end()) {
          spdlog::warn("plume: {} reply for unknown request_id {} ignored", stream_name, resp.request_id());
          continue;
        }
        deliver = std::move(it->second);
        pending.erase(it);
      }
      cv.notify_all();
      if (resp.has_status() && resp.status().code() != 0) {
        deliver(resp.request_id(), StatusFromCode(resp.status().code(), resp.status().message()));
      } else {
        deliver(resp.request_id(), FromProto(std::move(*resp.mutable_output())));
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
                        absl::StrCat(stream_name, " ended without a result for request_id ", id)));
      } else {
        deliver(id, status);
      }
    }
  }

  // Sends `req` (its request_id is assigned here) once fewer than
  // max_in_flight items are outstanding.
  uint64_t Push(Req req, Deliver deliver) {
    uint64_t id;
    {
      std::unique_lock<std::mutex> l(mu);
      cv.wait(l, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
        return done || closing || static_cast<int>(pending.size()) < max_in_flight;
      });
      if (done || closing) {
        absl::Status s = done && !final_status.ok()
                             ? final_status
                             : absl::FailedPreconditionError(absl::StrCat(stream_name, " session is finished"));
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

  void Join() {
    std::lock_guard<std::mutex> j(join_mu);
    if (reader.joinable()) reader.join();
  }

  absl::Status Finish() {
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

  void Cancel() {
    {
      std::lock_guard<std::mutex> l(mu);
      closing = true;
    }
    cv.notify_all();
    ctx->TryCancel();
    Join();
  }

  // For the session's destructor: cancels unless the stream has ended, then joins.
  void Shutdown() {
    bool finished;
    {
      std::lock_guard<std::mutex> l(mu);
      finished = done;
    }
    if (!finished) Cancel();
    Join();
  }

  int InFlight() {
    std::lock_guard<std::mutex> l(mu);
    return static_cast<int>(pending.size());
  }
};

}  // namespace plume
