// Bearer-token authentication of MatrixService calls (--auth_token_file).
// Each call must carry `authorization: Bearer <token>`; the comparison takes
// time that depends only on the configured token's length, never on how much
// of it a caller guessed. Health is not checked (probes); server reflection is
// not offered at all when a token is set (server.cc says why).
// Neither the token nor what a caller sent is ever logged or echoed.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace grpc {
class ServerContextBase;
}

namespace plume::server {

// True when a == b, in time that depends on b's length only.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

class TokenAuth {
 public:
  explicit TokenAuth(std::string token) : expected_("Bearer " + std::move(token)) {}
  // OK, or UNAUTHENTICATED saying whether the metadata was missing or wrong.
  absl::Status Check(const grpc::ServerContextBase& ctx) const;

 private:
  std::string expected_;  // the whole header value, "Bearer <token>"
};

}  // namespace plume::server
