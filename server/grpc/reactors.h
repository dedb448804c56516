// Callback-API pieces shared by plume's gRPC services: unary calls (their
// request and response held by the reactor, parsed and serialized by plume),
// a client-streaming upload reactor and a bidirectional per-item stream
// reactor (GemvStream, AttentionStream), each recording request metrics.
#pragma once

#include <algorithm>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>

#include <grpc/support/time.h>
#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/core/batcher.h"
#include "server/core/limits.h"
#include "server/core/metrics.h"
#include "server/core/validation.h"
#include "server/core/work_queue.h"
#include "server/grpc/call_gate.h"
#include "server/grpc/grpc_status.h"

namespace plume::server {

using Clock = std::chrono::steady_clock;

inline double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

inline absl::Status Overloaded(const core::WorkQueue& q) {
  return absl::ResourceExhaustedError(
      absl::StrCat("server overloaded: ", q.queued(), " requests already queued; retry later"));
}

// Deadlines reach the server rounded to the millisecond (gRPC's
// resolution): a call with less than this left is treated as expired.
// The server can only keep the deadline it is sent: gRPC's client rounds
// its deadline up to the millisecond and computes the time left from a
// cached clock, so under load a 1 us deadline can arrive with a few
// milliseconds left, and is then run (and its client told OK).
inline constexpr std::chrono::milliseconds kDeadlineResolution{1};

// A call's deadline on the system clock; nullopt for none. gRPC's own
// conversion (ServerContext::deadline()) overflows for deadlines past year
// 2262 and yields a time in the past, so the raw timespec is read here and
// anything more than ten years out saturates to "no deadline".
inline std::optional<std::chrono::system_clock::time_point> DeadlineOf(
    const grpc::ServerContextBase* ctx) {
  const gpr_timespec raw = gpr_convert_clock_type(ctx->raw_deadline(), GPR_CLOCK_REALTIME);
  const int64_t now_s = gpr_now(GPR_CLOCK_REALTIME).tv_sec;
  constexpr int64_t kFarSeconds = int64_t{10} * 366 * 24 * 3600;
  if (raw.tv_sec > now_s + kFarSeconds) return std::nullopt;
  if (raw.tv_sec < now_s - kFarSeconds) return std::chrono::system_clock::time_point{};
  return std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(
          std::chrono::seconds(raw.tv_sec) + std::chrono::nanoseconds(raw.tv_nsec)));
}

// True once the call's deadline has passed (within kDeadlineResolution).
inline bool DeadlinePassed(const grpc::ServerContextBase* ctx) {
  const auto deadline = DeadlineOf(ctx);
  return deadline && *deadline - kDeadlineResolution <= std::chrono::system_clock::now();
}

// A request whose deadline passed or whose caller left is never computed
// (nor committed); plume_requests_dropped_total counts it. Checked
// immediately before a request runs.
inline absl::Status CheckStillWanted(grpc::CallbackServerContext* ctx, core::Metrics* metrics) {
  absl::Status s;
  if (DeadlinePassed(ctx)) {
    s = absl::DeadlineExceededError("deadline passed before the request ran");
  } else if (ctx->IsCancelled()) {
    s = absl::CancelledError("request cancelled before it ran");
  }
  if (!s.ok()) metrics->RecordDropped(s.code());
  return s;
}

// What the batcher needs to know of a call: its deadline (on the batcher's
// steady clock, less kDeadlineResolution) and whether its caller has left.
inline core::RequestLife LifeOf(grpc::CallbackServerContext* ctx) {
  core::RequestLife life;
  if (const auto deadline = DeadlineOf(ctx)) {  // within ten years: no overflow below
    life.deadline = core::BatchClock::now() - kDeadlineResolution +
                    std::chrono::duration_cast<core::BatchClock::duration>(
                        *deadline - std::chrono::system_clock::now());
  }
  life.cancelled = [ctx] { return ctx->IsCancelled(); };
  return life;
}

// The status the client will see for a call finished with `s`: a call
// ended at the drain timeout got UNAVAILABLE; one cancelled otherwise (by
// its client, its deadline or the server) gets DEADLINE_EXCEEDED or
// CANCELLED whatever the server sends. That is what the metrics record.
inline absl::Status AsSent(grpc::CallbackServerContext* ctx, const CallGate& gate,
                           const absl::Status& s) {
  if (gate.Aborted(ctx)) return absl::UnavailableError(kAbortedAtDrainTimeout);
  if (!ctx->IsCancelled()) return s;
  const auto deadline = DeadlineOf(ctx);
  if (deadline && *deadline <= std::chrono::system_clock::now()) {
    return absl::DeadlineExceededError("deadline passed before the response was sent");
  }
  return absl::CancelledError("call cancelled before its response was sent");
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

// A request handed to the batcher: `submit` queues it with its life and the
// callback that completes it (called exactly once, from any thread).
using DoneFn = std::function<void(const absl::Status&)>;
using SubmitFn = std::function<void(core::RequestLife, DoneFn)>;

// A unary reactor that ends its call's admission once gRPC is done with it.
class GatedUnaryReactor : public grpc::ServerUnaryReactor {
 public:
  GatedUnaryReactor(grpc::CallbackServerContext* ctx, CallGate* gate) : ctx_(ctx), gate_(gate) {}
  ~GatedUnaryReactor() override = default;
  // Writes the response for the client, just before a successful Finish.
  virtual grpc::Status SerializeResponse() { return grpc::Status::OK; }
  grpc::CallbackServerContext* ctx() const { return ctx_; }
  CallGate* gate() const { return gate_; }

  void OnDone() override {
    CallGate* gate = gate_;
    grpc::CallbackServerContext* ctx = ctx_;
    delete this;
    gate->CallDone(ctx);
  }

 private:
  grpc::CallbackServerContext* ctx_;
  CallGate* gate_;
};

// A unary call: the reactor holds the request and the response. Its method
// is registered raw (bytes in, bytes out) and the request parsed here,
// because gRPC's own handler answers a request that does not parse with
// UNIMPLEMENTED and no message; plume answers INVALID_ARGUMENT naming the
// method (the services' handlers, RejectUnparsed).
template <class Req, class Resp>
class UnaryCall final : public GatedUnaryReactor {
 public:
  UnaryCall(grpc::CallbackServerContext* ctx, CallGate* gate, grpc::ByteBuffer* out)
      : GatedUnaryReactor(ctx, gate), out_(out) {}
  bool Parse(const grpc::ByteBuffer* in) {
    grpc::ByteBuffer copy(*in);  // shares the slices: Deserialize consumes its buffer
    return grpc::SerializationTraits<Req>::Deserialize(&copy, &req).ok();
  }
  grpc::Status SerializeResponse() override {
    bool own = false;
    return grpc::SerializationTraits<Resp>::Serialize(resp, out_, &own);
  }

  Req req;
  Resp resp;

 private:
  grpc::ByteBuffer* out_;
};

// Finishes a unary call and records its metrics, with the status the client
// will see.
inline void FinishUnary(GatedUnaryReactor* reactor, core::Metrics* metrics, core::Method m,
                        Clock::time_point t0, const absl::Status& status) {
  absl::Status s = AsSent(reactor->ctx(), *reactor->gate(), status);
  grpc::Status sent = ToGrpcStatus(s);
  if (s.ok()) {
    sent = reactor->SerializeResponse();
    if (!sent.ok()) s = absl::InternalError("the response could not be serialized");
  }
  metrics->RecordRequest(m, s.code(), SecondsSince(t0));
  reactor->Finish(sent.ok() ? sent : ToGrpcStatus(s));
}

// Runs `fn` inline on the gRPC thread (for quick calls that never touch the
// disk: lookups, lists) once admitted, unless the caller left or its
// deadline passed (checked immediately before).
inline grpc::ServerUnaryReactor* RunUnaryInline(GatedUnaryReactor* reactor, core::Metrics* metrics,
                                                core::Method m,
                                                const std::function<absl::Status()>& fn) {
  const auto t0 = Clock::now();
  grpc::CallbackServerContext* ctx = reactor->ctx();
  CallGate* gate = reactor->gate();
  absl::Status s = gate->Admit(ctx);
  if (s.ok()) s = CheckStillWanted(ctx, metrics);
  if (s.ok()) s = fn();
  FinishUnary(reactor, metrics, m, t0, s);
  return reactor;
}

// A unary call whose request did not parse: INVALID_ARGUMENT naming the
// method and its message type, once admitted (a caller without a token
// still gets UNAUTHENTICATED).
inline grpc::ServerUnaryReactor* RejectUnparsed(GatedUnaryReactor* reactor, core::Metrics* metrics,
                                                core::Method m, const std::string& message_type) {
  return RunUnaryInline(reactor, metrics, m, [m, &message_type] {
    return absl::InvalidArgumentError(absl::StrCat(std::string(core::MethodName(m)),
                                                   " request does not parse as ", message_type,
                                                   "; nothing was run"));
  });
}

// A unary method registered raw: parses the request into a UnaryCall and
// hands it to `serve` (which runs it through RunUnaryInline, RunUnaryOnQueue
// or RunUnaryBatched and returns the reactor), or rejects it.
template <class Req, class Resp, class Serve>
grpc::ServerUnaryReactor* ServeUnary(grpc::CallbackServerContext* ctx, CallGate* gate,
                                     const grpc::ByteBuffer* in, grpc::ByteBuffer* out,
                                     core::Metrics* metrics, core::Method m, Serve serve) {
  auto* call = new UnaryCall<Req, Resp>(ctx, gate, out);
  if (!call->Parse(in)) return RejectUnparsed(call, metrics, m, Req::descriptor()->full_name());
  return serve(call);
}

// Runs `fn` on the work queue (never on a gRPC thread) unless the caller has
// left or its deadline passed (checked on the worker immediately before: a
// DeleteMatrix whose deadline passed while it was queued does not happen),
// and finishes the unary call with its status. Priority::kFirst queues it
// ahead of the batches already waiting (deletes).
inline grpc::ServerUnaryReactor* RunUnaryOnQueue(
    GatedUnaryReactor* reactor, core::WorkQueue* queue, core::Metrics* metrics, core::Method m,
    std::function<absl::Status()> fn,
    core::WorkQueue::Priority priority = core::WorkQueue::Priority::kNormal) {
  const auto t0 = Clock::now();
  if (absl::Status s = reactor->gate()->Admit(reactor->ctx()); !s.ok()) {
    FinishUnary(reactor, metrics, m, t0, s);
    return reactor;
  }
  const bool queued = queue->Submit([metrics, m, reactor, t0, fn = std::move(fn)] {
    absl::Status s = CheckStillWanted(reactor->ctx(), metrics);
    if (s.ok()) s = fn();
    FinishUnary(reactor, metrics, m, t0, s);
  }, priority);
  if (!queued) FinishUnary(reactor, metrics, m, t0, Overloaded(*queue));
  return reactor;
}

// Queues the call on the batcher once admitted; it finishes when its batch
// has run (or at once when it is refused).
inline grpc::ServerUnaryReactor* RunUnaryBatched(GatedUnaryReactor* reactor, core::Metrics* metrics,
                                                 core::Method m, const SubmitFn& submit) {
  const auto t0 = Clock::now();
  if (absl::Status s = reactor->gate()->Admit(reactor->ctx()); !s.ok()) {
    FinishUnary(reactor, metrics, m, t0, s);
    return reactor;
  }
  submit(LifeOf(reactor->ctx()), [reactor, metrics, m, t0](const absl::Status& s) {
    FinishUnary(reactor, metrics, m, t0, s);
  });
  return reactor;
}

// A client-streaming upload: `consume` takes each message (creating the
// upload from the header), and once the client half-closes, `finish` runs on
// the work queue, commits the upload and fills the response. Only a clean
// half-close after well-formed messages commits: a cancel, a message that
// does not parse or a deadline that passed aborts it. Dropping the upload
// frees its name and budget at once. Req may be grpc::ByteBuffer (a raw
// method): `consume` then parses each message itself.
template <class Req, class Resp, class Upload>
class UploadReactor final : public grpc::ServerReadReactor<Req> {
 public:
  // The upload is null until the header arrives.
  using ConsumeFn = std::function<absl::Status(const Req&, std::unique_ptr<Upload>*)>;
  using FinishFn = std::function<absl::Status(Upload&, Resp*)>;

  UploadReactor(grpc::CallbackServerContext* ctx, CallGate* gate, core::WorkQueue* queue,
                core::Metrics* metrics, core::Method method, Resp* resp, ConsumeFn consume,
                FinishFn finish)
      : ctx_(ctx),
        gate_(gate),
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
    Read();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      // No message: a half-close, a cancel, or a message that did not parse
      // (gRPC reports all three alike; only the last one clears req_).
      if (ctx_->IsCancelled()) {
        Done(absl::CancelledError("upload cancelled; nothing was stored"));
        return;
      }
      if (!ReadBufferMarked()) {
        Done(absl::InvalidArgumentError(absl::StrCat(
            std::string(core::MethodName(method_)),
            " sent a message that does not parse; nothing was stored")));
        return;
      }
      if (upload_ == nullptr) {
        Done(absl::InvalidArgumentError(
            absl::StrCat(std::string(core::MethodName(method_)), " stream ended before its header")));
        return;
      }
      if (!queue_->Submit([this] {
            // Checked immediately before the commit: an upload whose caller
            // left or whose deadline passed is not stored.
            absl::Status s = CheckStillWanted(ctx_, metrics_);
            if (s.ok()) s = finish_(*upload_, resp_);
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
    Read();
  }

  void OnDone() override {
    CallGate* gate = gate_;
    grpc::CallbackServerContext* ctx = ctx_;
    delete this;
    gate->CallDone(ctx);
  }

 private:
  // A field number no plume message uses: set as an unknown field in the read
  // buffer before each read. A half-close leaves the buffer as it was; a
  // message that fails to parse clears it first (protobuf's Parse* clear).
  static constexpr int kReadMarkerField = 536870911;  // 2^29 - 1, the largest

  static constexpr bool kRaw = std::is_same_v<Req, grpc::ByteBuffer>;

  void Read() {
    req_.Clear();
    if constexpr (!kRaw) req_.GetReflection()->MutableUnknownFields(&req_)->AddVarint(kReadMarkerField, 1);
    this->StartRead(&req_);
  }
  bool ReadBufferMarked() const {
    if constexpr (kRaw) {
      return true;  // raw bytes always arrive: no message is a half-close or a cancel
    } else {
      const auto& unknown = req_.GetReflection()->GetUnknownFields(req_);
      return unknown.field_count() == 1 && unknown.field(0).number() == kReadMarkerField;
    }
  }

  void Done(const absl::Status& status) {
    upload_.reset();  // an abandoned upload frees its name and budget now
    const absl::Status s = AsSent(ctx_, *gate_, status);
    metrics_->RecordRequest(method_, s.code(), SecondsSince(t0_));
    this->Finish(ToGrpcStatus(s));
  }

  grpc::CallbackServerContext* ctx_;
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
    StartMarkedRead();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // half-close, a message that does not parse, or the call is cancelled or broken
      const bool unparsed = !ctx_->IsCancelled() && req_.request_id() != kReadMarker;
      if (unparsed) metrics_->RecordRequest(method_, absl::StatusCode::kInvalidArgument, 0.0);
      {
        absl::MutexLock lock(&mu_);
        reading_ = false;
        reads_done_ = true;
        unparsed_ = unparsed;
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
    if (read_more) StartMarkedRead();
  }

  void OnWriteDone(bool ok) override {
    Result written;
    {
      absl::MutexLock lock(&mu_);
      written = std::move(*writing_);
      writing_.reset();
      if (!ok) cancelled_ = true;  // the client is gone: drop what is left
    }
    Record(written, ok ? written.code : DroppedCode());
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
    grpc::CallbackServerContext* ctx = ctx_;
    delete this;
    gate->CallDone(ctx);
  }

 private:
  // The read buffer's request_id before each read. A half-close leaves the
  // buffer as it was; a message, parsed or not, clears it first (protobuf's
  // parse clears), so a failed read that is no cancel and finds the marker
  // gone was a message that does not parse. gRPC reports all three alike.
  static constexpr uint64_t kReadMarker = ~uint64_t{0};
  void StartMarkedRead() {
    req_.set_request_id(kReadMarker);
    this->StartRead(&req_);
  }

  // Items read and not yet written: running, waiting to be written, or being
  // written. Their results are held in memory, so they count against
  // max_in_flight: a client that stops reading stops the stream reading too.
  int UnwrittenLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return running_ + static_cast<int>(pending_writes_.size()) + (writing_ ? 1 : 0);
  }

  // One item's result on its way to the client, with its own status.
  struct Result {
    std::unique_ptr<Resp> resp;
    absl::StatusCode code = absl::StatusCode::kOk;
    Clock::time_point t0;
  };

  // The metrics record what the client gets, once it is known: the item's
  // status once its result is written; for a result dropped unwritten,
  // UNAVAILABLE when the server ended the call at the drain timeout,
  // CANCELLED otherwise.
  absl::StatusCode DroppedCode() const {
    return gate_->Aborted(ctx_) ? absl::StatusCode::kUnavailable : absl::StatusCode::kCancelled;
  }
  void Record(const Result& r, absl::StatusCode code) {
    metrics_->RecordRequest(method_, code, SecondsSince(r.t0));
  }

  // Queues an item's result (or its own error status) for writing.
  void Complete(uint64_t request_id, const absl::Status& s, std::unique_ptr<Resp> resp,
                Clock::time_point t0) {
    if (!s.ok()) {
      resp->Clear();
      resp->set_request_id(request_id);
      resp->mutable_status()->set_code(static_cast<int>(s.code()));
      resp->mutable_status()->set_message(std::string(s.message()));
    }
    Result r{std::move(resp), s.code(), t0};
    Advance(&r);
  }

  // Starts the next write, resumes reading, or finishes: decided under the
  // lock, done outside it (a reaction may run on this thread). The stream
  // finishes once no read, write or item is outstanding and either the
  // client half-closed with every result written, or the call was cancelled
  // (or a write failed), whatever the read side's state.
  // `done` is an item just computed (Complete, on a worker thread, which
  // gRPC does not wait for before OnDone): it is counted out and its result
  // queued or dropped in the same critical section that may decide to
  // finish, and a thread that does not finish touches nothing of the
  // reactor after it, since another one may finish and free it at once.
  // Dropped results are recorded under the lock for the same reason.
  void Advance(Result* done = nullptr) {
    const Resp* to_write = nullptr;
    bool resume_read = false;
    bool finish = false;
    bool cancelled = false;
    bool unparsed = false;
    {
      absl::MutexLock lock(&mu_);
      unparsed = unparsed_;
      if (done != nullptr) {
        --running_;
        if (cancelled_) {
          Record(*done, DroppedCode());
        } else {
          pending_writes_.push_back(std::move(*done));
        }
      }
      cancelled = cancelled_;
      if (cancelled_) {
        for (const Result& r : pending_writes_) Record(r, DroppedCode());
        pending_writes_.clear();
      }
      if (!writing_ && !pending_writes_.empty()) {
        writing_ = std::move(pending_writes_.front());
        pending_writes_.pop_front();
        to_write = writing_->resp.get();
      }
      if (!reading_ && !reads_done_ && !cancelled_ && UnwrittenLocked() < max_in_flight_) {
        reading_ = resume_read = true;
      }
      const bool quiet = !reading_ && running_ == 0 && !writing_ && pending_writes_.empty();
      if (quiet && (reads_done_ || cancelled_) && !finished_) finished_ = finish = true;
    }
    if (to_write != nullptr) this->StartWrite(to_write);
    if (resume_read) StartMarkedRead();
    if (finish) {
      absl::Status end = AsSent(ctx_, *gate_, absl::OkStatus());
      if (end.ok() && cancelled) end = absl::CancelledError("a response could not be written");
      if (end.ok() && unparsed) {
        end = absl::InvalidArgumentError(absl::StrCat(
            std::string(core::MethodName(method_)),
            " sent a message that does not parse; the results before it were written"));
      }
      this->Finish(ToGrpcStatus(end));
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
  bool unparsed_ ABSL_GUARDED_BY(mu_) = false;   // the last read did not parse
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<Result> writing_ ABSL_GUARDED_BY(mu_);
  std::deque<Result> pending_writes_ ABSL_GUARDED_BY(mu_);
};

}  // namespace plume::server
