#include "server/main/hardening.h"

#include <prometheus/exposer.h>
#include <spdlog/spdlog.h>

#include <fstream>
#include <sstream>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "server/grpc/auth.h"

ABSL_FLAG(std::string, store_dir, "./plume-store",
          "Directory of the durable matrix store; empty: memory only.");
ABSL_FLAG(std::string, tls_cert, "", "PEM server certificate (chain); enables TLS.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS).");
ABSL_FLAG(std::string, auth_token_file, "",
          "File holding the bearer token MatrixService calls must carry "
          "(`authorization: Bearer <token>`); health stays open.");
ABSL_FLAG(std::string, metrics_user, "", "User name of basic auth on /metrics.");
ABSL_FLAG(std::string, metrics_password_file, "",
          "File holding the /metrics basic-auth password (needs --metrics_user).");
ABSL_FLAG(int32_t, max_concurrent_streams, 256,
          "Calls one client connection may have open at once (HTTP/2 streams).");

namespace plume::server_main {
namespace {

absl::Status ReadFile(const std::string& flag, const std::string& path, std::string* out) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  if (!f.good() && !f.eof()) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": cannot read ", path));
  }
  *out = ss.str();
  if (out->empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", path, " is empty"));
  return absl::OkStatus();
}

// A secret from a file, without surrounding whitespace (a trailing newline).
absl::Status ReadSecret(const std::string& flag, const std::string& path, std::string* out) {
  if (absl::Status s = ReadFile(flag, path, out); !s.ok()) return s;
  *out = std::string(absl::StripAsciiWhitespace(*out));
  if (out->empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", path, " holds only whitespace"));
  return absl::OkStatus();
}

}  // namespace

std::string StoreDirFlag() { return absl::GetFlag(FLAGS_store_dir); }

absl::Status ApplySecurityFlags(server::ServerOptions* options) {
  const std::string cert = absl::GetFlag(FLAGS_tls_cert), key = absl::GetFlag(FLAGS_tls_key),
                    ca = absl::GetFlag(FLAGS_tls_client_ca);
  if (cert.empty() != key.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  if (!ca.empty() && cert.empty()) {
    return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
  }
  if (!cert.empty()) {
    if (auto s = ReadFile("tls_cert", cert, &options->tls_cert_pem); !s.ok()) return s;
    if (auto s = ReadFile("tls_key", key, &options->tls_key_pem); !s.ok()) return s;
  }
  if (!ca.empty()) {
    if (auto s = ReadFile("tls_client_ca", ca, &options->tls_client_ca_pem); !s.ok()) return s;
  }
  if (const std::string f = absl::GetFlag(FLAGS_auth_token_file); !f.empty()) {
    if (auto s = ReadSecret("auth_token_file", f, &options->auth_token); !s.ok()) return s;
  }
  options->max_concurrent_streams = absl::GetFlag(FLAGS_max_concurrent_streams);
  spdlog::info("gRPC: {}{}, bearer token {}, at most {} streams per connection",
               cert.empty() ? "plaintext" : "TLS", ca.empty() ? "" : " with client certificates",
               options->auth_token.empty() ? "off" : "required", options->max_concurrent_streams);
  if (cert.empty() && !options->auth_token.empty()) {
    spdlog::warn("a bearer token over plaintext gRPC can be read off the network; add --tls_cert");
  }
  return absl::OkStatus();
}

absl::Status ProtectMetrics(prometheus::Exposer* exposer) {
  const std::string user = absl::GetFlag(FLAGS_metrics_user);
  const std::string pw_file = absl::GetFlag(FLAGS_metrics_password_file);
  if (user.empty() && pw_file.empty()) return absl::OkStatus();
  if (user.empty() || pw_file.empty()) {
    return absl::InvalidArgumentError("--metrics_user and --metrics_password_file go together");
  }
  std::string password;
  if (auto s = ReadSecret("metrics_password_file", pw_file, &password); !s.ok()) return s;
  exposer->RegisterAuth(
      [user, password](const std::string& u, const std::string& p) {
        // Both compared in full, in constant time.
        const bool user_ok = server::ConstantTimeEquals(u, user);
        const bool pass_ok = server::ConstantTimeEquals(p, password);
        return user_ok && pass_ok;
      },
      "plume metrics");
  spdlog::info("/metrics requires basic auth (user {})", user);
  return absl::OkStatus();
}

}  // namespace plume::server_main
