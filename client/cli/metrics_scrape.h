// `plume bench` reads the server's Prometheus endpoint before and after each
// measured window: a minimal HTTP/1.0 GET (plain HTTP, optional basic auth)
// and a parser of the text exposition format that adds up the samples of
// the metrics it is asked for.
#pragma once

#include <map>
#include <set>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace plume::cli {

struct HttpUrl {
  std::string host;
  std::string port = "80";
  std::string path = "/";
  std::string userinfo;  // "user:password" from http://user:password@host/, or empty
};

// http://[user:password@]host[:port][/path]; https is not supported.
absl::StatusOr<HttpUrl> ParseHttpUrl(absl::string_view url);

// GETs `url` and returns the body of a 200 response. `basic_auth` is
// "user:password" or empty. Every socket operation is bounded by `timeout`.
absl::StatusOr<std::string> HttpGet(const HttpUrl& url, const std::string& basic_auth,
                                    absl::Duration timeout);

// For each name in `names`, the sum of its samples over all label sets
// (e.g. "plume_batch_size_sum"). Names with no sample are absent. Comments,
// malformed lines and non-finite values are skipped.
std::map<std::string, double> ParsePrometheusText(absl::string_view text,
                                                  const std::set<std::string>& names);

}  // namespace plume::cli
