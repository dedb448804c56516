// Private: the state behind plume::GemvSession.
#pragma once

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "plume/client/gemv_session.h"
#include "plume/v1/plume.grpc.pb.h"

namespace plume {

struct GemvSession::Impl {
  // Called once with the item's request_id (0 if none was assigned) and result.
  using Deliver = std::function<void(uint64_t, absl::StatusOr<GemvResult>)>;

  // Set before Start(), read-only afterwards.
  std::string matrix;
  GemvSessionOptions options;
  std::unique_ptr<grpc::ClientContext> ctx;
  std::unique_ptr<grpc::ClientReaderWriter<v1::GemvRequest, v1::GemvResponse>> stream;

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

  void Start();
  void ReadLoop();
  uint64_t Push(const TensorRef& input, float input_scale, Deliver deliver);
  absl::Status Finish();
  void Cancel();
  void Join();
};

}  // namespace plume
