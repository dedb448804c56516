// Private: the state behind plume::AttentionSession.
#pragma once

#include <string>

#include "plume/client/attention_session.h"
#include "plume/v1/attention.grpc.pb.h"
#include "stream_session_core.h"

namespace plume {

struct AttentionSession::Impl : StreamSessionCore<v1::AttentionRequest, v1::AttentionResponse> {
  std::string cache;
  AttentionSessionOptions options;
};

// An AttentionRequest for `cache` (request_id left 0).
v1::AttentionRequest MakeAttentionRequest(const std::string& cache, const TensorRef& query,
                                          const AttentionOptions& options);

}  // namespace plume
