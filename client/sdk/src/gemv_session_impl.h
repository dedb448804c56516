// Private: the state behind plume::GemvSession.
#pragma once

#include <string>

#include "plume/client/gemv_session.h"
#include "plume/v1/plume.grpc.pb.h"
#include "stream_session_core.h"

namespace plume {

struct GemvSession::Impl : StreamSessionCore<v1::GemvRequest, v1::GemvResponse> {
  std::string matrix;
  GemvSessionOptions options;
};

}  // namespace plume
