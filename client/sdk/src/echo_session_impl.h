// Private: the state behind plume::EchoSession.
#pragma once

#include "plume/client/echo_session.h"
#include "plume/v1/diagnostics.grpc.pb.h"
#include "stream_session_core.h"

namespace plume {

struct EchoSession::Impl : StreamSessionCore<v1::EchoRequest, v1::EchoResponse> {};

}  // namespace plume
