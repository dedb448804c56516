#include "server/grpc/matrix_service_impl.h"

#include <chrono>
#include <deque>
#include <memory>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "plume/grpc_status.h"

namespace plume::server {
namespace {

// Clock, SecondsSince, Overloaded, CheckStillWanted, FinishUnary and
// GatedUnaryReactor come from reactors.h, shared with the AttentionService.

// ---------------------------------------------------------------- UploadMatrix

class MatrixUploadReactor final : public grpc::ServerReadReactor<v1::UploadMatrixRequest> {
 public:
  MatrixUploadReactor(MatrixServiceImpl* svc, grpc::CallbackServerContext* ctx,
                v1::UploadMatrixResponse* resp)
      : svc_(svc), resp_(resp), t0_(Clock::now()) {
    if (absl::Status s = svc_->Admit(ctx); !s.ok()) {
      Done(s);
      return;
    }
    StartRead(&req_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client half-closed (or left): quantize and publish off-thread
      if (upload_ == nullptr) {
        Done(absl::InvalidArgumentError("UploadMatrix stream ended before its header"));
        return;
      }
      if (!svc_->queue()->Submit([this] { Done(FinishUpload()); })) Done(Overloaded(*svc_->queue()));
      return;
    }
    absl::Status s = Consume();
    if (!s.ok()) {
      Done(s);
      return;
    }
    StartRead(&req_);
  }

  void OnDone() override {
    MatrixServiceImpl* svc = svc_;
    delete this;
    svc->CallDone();
  }

 private:
  absl::Status Consume() {
    switch (req_.payload_case()) {
      case v1::UploadMatrixRequest::kHeader: {
        if (upload_ != nullptr) return absl::InvalidArgumentError("UploadMatrix sent a second header");
        auto u = svc_->core()->BeginUpload(req_.header());
        if (!u.ok()) return u.status();
        upload_ = std::move(*u);
        return absl::OkStatus();
      }
      case v1::UploadMatrixRequest::kData:
        if (upload_ == nullptr) return absl::InvalidArgumentError("UploadMatrix sent data before its header");
        return upload_->AddData(req_.data());
      case v1::UploadMatrixRequest::kScales:
        if (upload_ == nullptr) return absl::InvalidArgumentError("UploadMatrix sent scales before its header");
        return upload_->AddScales(req_.scales());
      default:
        return absl::InvalidArgumentError("UploadMatrix message has no payload");
    }
  }

  absl::Status FinishUpload() {
    auto info = upload_->Finish();
    upload_.reset();
    if (!info.ok()) return info.status();
    *resp_->mutable_matrix() = std::move(*info);
    return absl::OkStatus();
  }

  void Done(const absl::Status& s) {
    upload_.reset();  // an abandoned upload frees its name and budget now
    svc_->metrics()->RecordRequest(core::Method::kUploadMatrix, s.code(), SecondsSince(t0_));
    Finish(ToGrpcStatus(s));
  }

  MatrixServiceImpl* svc_;
  v1::UploadMatrixResponse* resp_;
  Clock::time_point t0_;
  v1::UploadMatrixRequest req_;
  std::unique_ptr<core::MatrixService::Upload> upload_;
};

// ---------------------------------------------------------------- GemvStream

class GemvStreamReactor final : public grpc::ServerBidiReactor<v1::GemvRequest, v1::GemvResponse> {
 public:
  GemvStreamReactor(MatrixServiceImpl* svc, grpc::CallbackServerContext* ctx)
      : svc_(svc), ctx_(ctx) {
    if (absl::Status s = svc_->Admit(ctx); !s.ok()) {
      svc_->metrics()->RecordRequest(core::Method::kGemvStream, s.code(), 0.0);
      Finish(ToGrpcStatus(s));
      return;
    }
    reading_ = true;
    StartRead(&req_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      {
        absl::MutexLock lock(&mu_);
        reading_ = false;
        reads_done_ = true;
      }
      Advance();
      return;
    }
    auto req = std::make_shared<v1::GemvRequest>();
    req->Swap(&req_);
    const Clock::time_point t0 = Clock::now();
    bool read_more;
    {
      absl::MutexLock lock(&mu_);
      ++in_flight_;
      read_more = in_flight_ < svc_->options().max_stream_in_flight;
      reading_ = read_more;
    }
    if (!svc_->queue()->Submit([this, req, t0] { Run(*req, t0); })) {
      auto resp = std::make_unique<v1::GemvResponse>();
      Complete(req->request_id(), Overloaded(*svc_->queue()), std::move(resp), t0);
    }
    if (read_more) StartRead(&req_);
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      writing_.reset();
      if (!ok) broken_ = true;  // the client is gone: drop what is left
    }
    Advance();
  }

  void OnDone() override {
    MatrixServiceImpl* svc = svc_;
    delete this;
    svc->CallDone();
  }

 private:
  void Run(const v1::GemvRequest& req, Clock::time_point t0) {
    auto resp = std::make_unique<v1::GemvResponse>();
    absl::Status s = CheckStillWanted(ctx_, svc_->metrics());
    if (s.ok()) s = svc_->core()->Gemv(req, resp.get());
    Complete(req.request_id(), s, std::move(resp), t0);
  }

  // Queues an item's result (or its own error status) for writing.
  void Complete(uint64_t request_id, const absl::Status& s, std::unique_ptr<v1::GemvResponse> resp,
                Clock::time_point t0) {
    svc_->metrics()->RecordRequest(core::Method::kGemvStream, s.code(), SecondsSince(t0));
    if (!s.ok()) {
      resp->Clear();
      resp->set_request_id(request_id);
      resp->mutable_status()->set_code(static_cast<int>(s.code()));
      resp->mutable_status()->set_message(std::string(s.message()));
    }
    {
      absl::MutexLock lock(&mu_);
      --in_flight_;
      if (!broken_) pending_writes_.push_back(std::move(resp));
    }
    Advance();
  }

  // Starts the next write, resumes reading, or finishes: decided under the
  // lock, done outside it (a reaction may run on this thread).
  void Advance() {
    const v1::GemvResponse* to_write = nullptr;
    bool resume_read = false;
    bool finish = false;
    {
      absl::MutexLock lock(&mu_);
      if (broken_) pending_writes_.clear();
      if (!writing_ && !pending_writes_.empty()) {
        writing_ = std::move(pending_writes_.front());
        pending_writes_.pop_front();
        to_write = writing_.get();
      }
      if (!reading_ && !reads_done_ && !broken_ &&
          in_flight_ < svc_->options().max_stream_in_flight) {
        reading_ = resume_read = true;
      }
      if (reads_done_ && in_flight_ == 0 && !writing_ && pending_writes_.empty() && !finished_) {
        finished_ = finish = true;
      }
    }
    if (to_write != nullptr) StartWrite(to_write);
    if (resume_read) StartRead(&req_);
    if (finish) {
      Finish(ctx_->IsCancelled() ? grpc::Status::CANCELLED : grpc::Status::OK);
    }
  }

  MatrixServiceImpl* svc_;
  grpc::CallbackServerContext* ctx_;
  v1::GemvRequest req_;  // the one outstanding read
  absl::Mutex mu_;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::unique_ptr<v1::GemvResponse> writing_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<v1::GemvResponse>> pending_writes_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::Status MatrixServiceImpl::Admit(const grpc::CallbackServerContext* ctx) {
  active_calls_.fetch_add(1, std::memory_order_acq_rel);
  if (draining_.load(std::memory_order_acquire)) {
    return absl::UnavailableError("server is shutting down; retry on another replica");
  }
  return options_.auth == nullptr ? absl::OkStatus() : options_.auth->Check(*ctx);
}

bool MatrixServiceImpl::WaitIdle(std::chrono::system_clock::time_point deadline) const {
  while (active_calls() > 0) {
    if (std::chrono::system_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

MatrixServiceImpl::MatrixServiceImpl(core::MatrixService* core, core::Metrics* metrics,
                                     core::WorkQueue* queue, const Options& options)
    : core_(core), metrics_(metrics), queue_(queue), options_(options) {}

grpc::ServerReadReactor<v1::UploadMatrixRequest>* MatrixServiceImpl::UploadMatrix(
    grpc::CallbackServerContext* ctx, v1::UploadMatrixResponse* resp) {
  return new MatrixUploadReactor(this, ctx, resp);
}

grpc::ServerUnaryReactor* MatrixServiceImpl::GetMatrix(grpc::CallbackServerContext* ctx,
                                                       const v1::GetMatrixRequest* req,
                                                       v1::GetMatrixResponse* resp) {
  const auto t0 = Clock::now();
  if (absl::Status s = Admit(ctx); !s.ok()) {
    auto* reactor = new GatedUnaryReactor(this);
    FinishUnary(reactor, metrics_, core::Method::kGetMatrix, t0, s);
    return reactor;
  }
  auto info = core_->GetMatrix(req->name());
  if (info.ok()) *resp->mutable_matrix() = std::move(*info);
  auto* reactor = new GatedUnaryReactor(this);
  FinishUnary(reactor, metrics_, core::Method::kGetMatrix, t0, info.status());
  return reactor;
}

grpc::ServerUnaryReactor* MatrixServiceImpl::ListMatrices(grpc::CallbackServerContext* ctx,
                                                          const v1::ListMatricesRequest*,
                                                          v1::ListMatricesResponse* resp) {
  const auto t0 = Clock::now();
  auto* reactor = new GatedUnaryReactor(this);
  absl::Status s = Admit(ctx);
  if (s.ok()) core_->ListMatrices(resp);
  FinishUnary(reactor, metrics_, core::Method::kListMatrices, t0, s);
  return reactor;
}

grpc::ServerUnaryReactor* MatrixServiceImpl::DeleteMatrix(grpc::CallbackServerContext* ctx,
                                                          const v1::DeleteMatrixRequest* req,
                                                          v1::DeleteMatrixResponse*) {
  const auto t0 = Clock::now();
  auto* reactor = new GatedUnaryReactor(this);
  absl::Status s = Admit(ctx);
  if (s.ok()) s = core_->DeleteMatrix(req->name());
  FinishUnary(reactor, metrics_, core::Method::kDeleteMatrix, t0, s);
  return reactor;
}

grpc::ServerUnaryReactor* MatrixServiceImpl::Gemv(grpc::CallbackServerContext* ctx,
                                                  const v1::GemvRequest* req,
                                                  v1::GemvResponse* resp) {
  const auto t0 = Clock::now();
  auto* reactor = new GatedUnaryReactor(this);
  if (absl::Status s = Admit(ctx); !s.ok()) {
    FinishUnary(reactor, metrics_, core::Method::kGemv, t0, s);
    return reactor;
  }
  const bool queued = queue_->Submit([this, ctx, req, resp, reactor, t0] {
    absl::Status s = CheckStillWanted(ctx, metrics_);
    if (s.ok()) s = core_->Gemv(*req, resp);
    FinishUnary(reactor, metrics_, core::Method::kGemv, t0, s);
  });
  if (!queued) FinishUnary(reactor, metrics_, core::Method::kGemv, t0, Overloaded(*queue_));
  return reactor;
}

grpc::ServerBidiReactor<v1::GemvRequest, v1::GemvResponse>* MatrixServiceImpl::GemvStream(
    grpc::CallbackServerContext* ctx) {
  return new GemvStreamReactor(this, ctx);
}

}  // namespace plume::server
