// Callback-API pieces shared by plume's gRPC services: unary finishing,
// a client-streaming upload reactor and a bidirectional per-item stream
// reactor (GemvStream, AttentionStream), each recording request metrics.
#pragma once

#include <algorithm>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "plume/grpc_status.h"
#include "server/core/batcher.h"
#include "server/core/limits.h"
#include "server/core/metrics.h"
#include "server/core/validation.h"
#include "server/core/work_queue.h"

namespace plume::server {

using Clock = std::chrono::steady_clock;

inline double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

inline absl::Status Overloaded(const core::WorkQueue& q) {
  return absl::ResourceExhaustedError(
      absl::StrCat("server overloaded: ", q.queued(), " requests already queued; retry later"));
}

// Admission of calls, shared by the services of one server: the bearer
// token and the graceful drain (MatrixServiceImpl implements it). Every call
// is admitted once and ends with one CallDone(), whatever Admit returned.
class CallGate {
 public:
  virtual ~CallGate() = default;
  virtual absl::Status Admit(const grpc::CallbackServerContext* ctx) = 0;
  virtual void CallDone() = 0;
};

// A request whose deadline passed or whose caller left is never computed;
// plume_requests_dropped_total counts it.
inline absl::Status CheckStillWanted(grpc::CallbackServerContext* ctx, core::Metrics* metrics) {
  absl::Status s;
  if (ctx->IsCancelled()) {
    s = absl::CancelledError("request cancelled before it ran");
  } else if (ctx->deadline() < std::chrono::system_clock::now()) {
    s = absl::DeadlineExceededError("deadline passed before the request ran");
  }
  if (!s.ok()) metrics->RecordDropped(s.code());
  return s;
}

// A response built in full (lookups, lists) must still fit in one message:
// otherwise it is cleared and the call fails with RESOURCE_EXHAUSTED naming
// its size and the limit, rather than being refused by gRPC at send.
inline absl::Status CheckResponseSize(google::protobuf::Message* resp, const core::Limits& limits,
                                      std::string_view what) {
  // The whole message against the limit: its payload is all of it but the
  // framing allowance.
  const size_t bytes = resp->ByteSizeLong();
  const int64_t payload =
      bytes > static_cast<size_t>(INT64_MAX)
          ? -1
          : std::max<int64_t>(0, static_cast<int64_t>(bytes) - core::kResponseOverheadBytes);
  absl::Status s = core::ValidateResponseBytes(payload, limits, what);
  if (!s.ok()) resp->Clear();
  return s;
}

// What the batcher needs to know of a call: its deadline (on the batcher's
// steady clock) and whether its caller has left.
inline core::RequestLife LifeOf(grpc::CallbackServerContext* ctx) {
  core::RequestLife life;
  const auto deadline = ctx->deadline();
  const auto sys_now = std::chrono::system_clock::now();
  // gRPC's "no deadline" is system_clock's max; anything a year out is as good.
  if (deadline < sys_now + std::chrono::hours(24 * 365)) {
    life.deadline = core::BatchClock::now() +
                    std::chrono::duration_cast<core::BatchClock::duration>(deadline - sys_now);
  }
  life.cancelled = [ctx] { return ctx->IsCancelled(); };
  return life;
}

// A request handed to the batcher: `submit` queues it with its life and the
// callback that completes it (called exactly once, from any thread).
using DoneFn = std::function<void(const absl::Status&)>;
using SubmitFn = std::function<void(core::RequestLife, DoneFn)>;

// A unary reactor that ends its call's admission once gRPC is done with it.
class GatedUnaryReactor final : public grpc::ServerUnaryReactor {
 public:
  explicit GatedUnaryReactor(CallGate* gate) : gate_(gate) {}
  void OnDone() override {
    CallGate* gate = gate_;
    delete this;
    gate->CallDone();
  }

 private:
  CallGate* gate_;
};

// Finishes a unary call and records its metrics.
inline void FinishUnary(grpc::ServerUnaryReactor* reactor, core::Metrics* metrics, core::Method m,
                        Clock::time_point t0, const absl::Status& s) {
  metrics->RecordRequest(m, s.code(), SecondsSince(t0));
  reactor->Finish(ToGrpcStatus(s));
}

// Runs `fn` inline on the gRPC thread (for quick calls) once admitted.
inline grpc::ServerUnaryReactor* RunUnaryInline(grpc::CallbackServerContext* ctx, CallGate* gate,
                                                core::Metrics* metrics, core::Method m,
                                                const std::function<absl::Status()>& fn) {
  const auto t0 = Clock::now();
  auto* reactor = new GatedUnaryReactor(gate);
  absl::Status s = gate->Admit(ctx);
  if (s.ok()) s = fn();
  FinishUnary(reactor, metrics, m, t0, s);
  return reactor;
}

// Runs `fn` on the work queue (never on a gRPC thread) unless the caller has
// left or its deadline passed, and finishes the unary call with its status.
inline grpc::ServerUnaryReactor* RunUnaryOnQueue(grpc::CallbackServerContext* ctx, CallGate* gate,
                                                 core::WorkQueue* queue, core::Metrics* metrics,
                                                 core::Method m, std::function<absl::Status()> fn) {
  const auto t0 = Clock::now();
  auto* reactor = new GatedUnaryReactor(gate);
  if (absl::Status s = gate->Admit(ctx); !s.ok()) {
    FinishUnary(reactor, metrics, m, t0, s);
    return reactor;
  }
  const bool queued = queue->Submit([ctx, metrics, m, reactor, t0, fn = std::move(fn)] {
    absl::Status s = CheckStillWanted(ctx, metrics);
    if (s.ok()) s = fn();
    FinishUnary(reactor, metrics, m, t0, s);
  });
  if (!queued) FinishUnary(reactor, metrics, m, t0, Overloaded(*queue));
  return reactor;
}

// Queues the call on the batcher once admitted; it finishes when its batch
// has run (or at once when it is refused).
inline grpc::ServerUnaryReactor* RunUnaryBatched(grpc::CallbackServerContext* ctx, CallGate* gate,
                                                 core::Metrics* metrics, core::Method m,
                                                 const SubmitFn& submit) {
  const auto t0 = Clock::now();
  auto* reactor = new GatedUnaryReactor(gate);
  if (absl::Status s = gate->Admit(ctx); !s.ok()) {
    FinishUnary(reactor, metrics, m, t0, s);
    return reactor;
  }
  submit(LifeOf(ctx), [reactor, metrics, m, t0](const absl::Status& s) {
    FinishUnary(reactor, metrics, m, t0, s);
  });
  return reactor;
}

// A client-streaming upload: `consume` takes each message (creating the
// upload from the header), and once the client half-closes, `finish` runs on
// the work queue and fills the response. Dropping the upload on error frees
// its name and budget at once.
template <class Req, class Resp, class Upload>
class UploadReactor final : public grpc::ServerReadReactor<Req> {
 public:
  // The upload is null until the header arrives.
  using ConsumeFn = std::function<absl::Status(const Req&, std::unique_ptr<Upload>*)>;
  using FinishFn = std::function<absl::Status(Upload&, Resp*)>;

  UploadReactor(grpc::CallbackServerContext* ctx, CallGate* gate, core::WorkQueue* queue,
                core::Metrics* metrics, core::Method method, Resp* resp, ConsumeFn consume,
                FinishFn finish)
      : gate_(gate),
        queue_(queue),
        metrics_(metrics),
        method_(method),
        resp_(resp),
        consume_(std::move(consume)),
        finish_(std::move(finish)),
        t0_(Clock::now()) {
    if (absl::Status s = gate_->Admit(ctx); !s.ok()) {
      Done(s);
      return;
    }
    this->StartRead(&req_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client half-closed (or left): finish off-thread
      if (upload_ == nullptr) {
        Done(absl::InvalidArgumentError(
            absl::StrCat(std::string(core::MethodName(method_)), " stream ended before its header")));
        return;
      }
      if (!queue_->Submit([this] {
            absl::Status s = finish_(*upload_, resp_);
            Done(s);
          })) {
        Done(Overloaded(*queue_));
      }
      return;
    }
    absl::Status s = consume_(req_, &upload_);
    if (!s.ok()) {
      Done(s);
      return;
    }
    this->StartRead(&req_);
  }

  void OnDone() override {
    CallGate* gate = gate_;
    delete this;
    gate->CallDone();
  }

 private:
  void Done(const absl::Status& s) {
    upload_.reset();  // an abandoned upload frees its name and budget now
    metrics_->RecordRequest(method_, s.code(), SecondsSince(t0_));
    this->Finish(ToGrpcStatus(s));
  }

  CallGate* gate_;
  core::WorkQueue* queue_;
  core::Metrics* metrics_;
  core::Method method_;
  Resp* resp_;
  ConsumeFn consume_;
  FinishFn finish_;
  Clock::time_point t0_;
  Req req_;
  std::unique_ptr<Upload> upload_;
};

// A bidirectional stream of independent items: each request is handed to
// `run`, which queues it on the batcher (with the items of other streams and
// unary calls); its response (or its own error status, with the request_id
// echoed) is written as soon as its batch is done, so results may go out of
// order.
// At most `max_in_flight` items are read and not yet written (computing or
// waiting for their write); beyond that the stream stops reading, which
// applies HTTP/2 flow control to the client.
// A cancelled call (client cancel, deadline, a failed write, server
// shutdown) drops its unwritten results and finishes as soon as its
// outstanding read, write and items are done, whatever it was doing.
template <class Req, class Resp>
class ItemStreamReactor final : public grpc::ServerBidiReactor<Req, Resp> {
 public:
  // Queues one item; calls `done` exactly once. Req and Resp stay alive
  // until then.
  using RunFn = std::function<void(const Req&, Resp*, core::RequestLife, DoneFn)>;

  ItemStreamReactor(grpc::CallbackServerContext* ctx, CallGate* gate, core::Metrics* metrics,
                    core::Method method, int max_in_flight, RunFn run)
      : gate_(gate),
        ctx_(ctx),
        metrics_(metrics),
        method_(method),
        max_in_flight_(max_in_flight),
        run_(std::move(run)) {
    if (absl::Status s = gate_->Admit(ctx); !s.ok()) {
      {
        absl::MutexLock lock(&mu_);
        finished_ = true;  // a later OnCancel must not finish it again
      }
      metrics_->RecordRequest(method_, s.code(), 0.0);
      this->Finish(ToGrpcStatus(s));
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      reading_ = true;
    }
    this->StartRead(&req_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // half-close, or the call is cancelled or broken
      {
        absl::MutexLock lock(&mu_);
        reading_ = false;
        reads_done_ = true;
      }
      Advance();
      return;
    }
    auto req = std::make_shared<Req>();
    req->Swap(&req_);
    const Clock::time_point t0 = Clock::now();
    bool read_more = false;
    bool run = false;
    {
      absl::MutexLock lock(&mu_);
      reading_ = false;
      if (!cancelled_) {  // a cancelled call runs nothing more
        run = true;
        ++running_;
        read_more = UnwrittenLocked() < max_in_flight_;
        reading_ = read_more;
      }
    }
    if (!run) {
      Advance();
      return;
    }
    Resp* resp = new Resp;
    run_(*req, resp, LifeOf(ctx_), [this, req, resp, t0](const absl::Status& s) {
      Complete(req->request_id(), s, std::unique_ptr<Resp>(resp), t0);
    });
    if (read_more) this->StartRead(&req_);
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      writing_.reset();
      if (!ok) cancelled_ = true;  // the client is gone: drop what is left
    }
    Advance();
  }

  // The client cancelled, the deadline passed or the server is shutting
  // down: queued results are dropped, nothing more is read, and the stream
  // finishes as soon as its outstanding read, write and items are done.
  void OnCancel() override {
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
    }
    Advance();
  }

  void OnDone() override {
    // gRPC runs OnDone after every other reaction has returned; taking the
    // lock once makes that order visible to ThreadSanitizer too, which cannot
    // see inside Debian's gRPC.
    { absl::MutexLock lock(&mu_); }
    CallGate* gate = gate_;
    delete this;
    gate->CallDone();
  }

 private:
  // Items read and not yet written: running, waiting to be written, or being
  // written. Their results are held in memory, so they count against
  // max_in_flight: a client that stops reading stops the stream reading too.
  int UnwrittenLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return running_ + static_cast<int>(pending_writes_.size()) + (writing_ ? 1 : 0);
  }

  // Queues an item's result (or its own error status) for writing.
  void Complete(uint64_t request_id, const absl::Status& s, std::unique_ptr<Resp> resp,
                Clock::time_point t0) {
    metrics_->RecordRequest(method_, s.code(), SecondsSince(t0));
    if (!s.ok()) {
      resp->Clear();
      resp->set_request_id(request_id);
      resp->mutable_status()->set_code(static_cast<int>(s.code()));
      resp->mutable_status()->set_message(std::string(s.message()));
    }
    {
      absl::MutexLock lock(&mu_);
      --running_;
      if (!cancelled_) pending_writes_.push_back(std::move(resp));
    }
    Advance();
  }

  // Starts the next write, resumes reading, or finishes: decided under the
  // lock, done outside it (a reaction may run on this thread). The stream
  // finishes once no read, write or item is outstanding and either the
  // client half-closed with every result written, or the call was cancelled
  // (or a write failed), whatever the read side's state.
  void Advance() {
    const Resp* to_write = nullptr;
    bool resume_read = false;
    bool finish = false;
    bool cancelled = false;
    {
      absl::MutexLock lock(&mu_);
      cancelled = cancelled_;
      if (cancelled_) pending_writes_.clear();
      if (!writing_ && !pending_writes_.empty()) {
        writing_ = std::move(pending_writes_.front());
        pending_writes_.pop_front();
        to_write = writing_.get();
      }
      if (!reading_ && !reads_done_ && !cancelled_ && UnwrittenLocked() < max_in_flight_) {
        reading_ = resume_read = true;
      }
      const bool quiet = !reading_ && running_ == 0 && !writing_ && pending_writes_.empty();
      if (quiet && (reads_done_ || cancelled_) && !finished_) finished_ = finish = true;
    }
    if (to_write != nullptr) this->StartWrite(to_write);
    if (resume_read) this->StartRead(&req_);
    if (finish) {
      this->Finish(cancelled || ctx_->IsCancelled() ? grpc::Status::CANCELLED
                                                    : grpc::Status::OK);
    }
  }

  CallGate* gate_;
  grpc::CallbackServerContext* ctx_;
  core::Metrics* metrics_;
  core::Method method_;
  int max_in_flight_;
  RunFn run_;
  Req req_;  // the one outstanding read
  absl::Mutex mu_;
  int running_ ABSL_GUARDED_BY(mu_) = 0;  // items handed to `run_`, not yet done
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;  // OnCancel or a failed write
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::unique_ptr<Resp> writing_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<Resp>> pending_writes_ ABSL_GUARDED_BY(mu_);
};

}  // namespace plume::server
