// Test helper: reads plume-server's /metrics over HTTP (a server run as a
// process), with the parser `plume bench` uses (client/cli/metrics_scrape.h;
// link plume_metrics_scrape).
#pragma once

#include <map>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "metrics_scrape.h"

namespace plume::testing {

// Each sample name in `names` (e.g. "plume_calls_in_flight",
// "plume_queue_duration_seconds_count") summed over its label sets; 0 for a
// name with no sample.
inline absl::StatusOr<std::map<std::string, double>> ScrapeMetrics(
    int metrics_port, const std::set<std::string>& names) {
  cli::HttpUrl url;
  url.host = "127.0.0.1";
  url.port = std::to_string(metrics_port);
  url.path = "/metrics";
  auto body = cli::HttpGet(url, "", absl::Seconds(10));
  if (!body.ok()) return body.status();
  std::map<std::string, double> got = cli::ParsePrometheusText(*body, names);
  for (const std::string& n : names) got.emplace(n, 0.0);
  return got;
}

}  // namespace plume::testing
