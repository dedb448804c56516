#include "server/grpc/auth.h"

#include <grpcpp/server_context.h>

namespace plume::server {

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  unsigned diff = a.size() == b.size() ? 0u : 1u;
  for (size_t i = 0; i < b.size(); ++i) {
    const unsigned char ca = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    diff |= ca ^ static_cast<unsigned char>(b[i]);
  }
  // Keep the compiler from turning the loop into an early exit.
  __asm__ volatile("" : "+r"(diff));
  return diff == 0;
}

absl::Status TokenAuth::Check(const grpc::ServerContextBase& ctx) const {
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return absl::UnauthenticatedError("missing `authorization: Bearer <token>` metadata");
  }
  if (md.count("authorization") != 1) {
    return absl::UnauthenticatedError("more than one authorization header");
  }
  const std::string_view got(it->second.data(), it->second.size());
  if (!ConstantTimeEquals(got, expected_)) {
    return absl::UnauthenticatedError("invalid bearer token");
  }
  return absl::OkStatus();
}

}  // namespace plume::server
