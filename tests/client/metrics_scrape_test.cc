// `plume bench`'s /metrics reader: URL parsing, the text-format parser, and
// HttpGet against a real prometheus-cpp Exposer on 127.0.0.1:0 (with and
// without basic auth), reading the histograms the server exports.
#include <gtest/gtest.h>
#include <prometheus/exposer.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "metrics_scrape.h"

namespace plume::cli {
namespace {

TEST(ParseHttpUrl, Forms) {
  auto u = ParseHttpUrl("http://127.0.0.1:9464/metrics");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, "9464");
  EXPECT_EQ(u->path, "/metrics");
  EXPECT_EQ(u->userinfo, "");
  u = ParseHttpUrl("http://prom:s3cret@localhost:80");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->host, "localhost");
  EXPECT_EQ(u->path, "/");
  EXPECT_EQ(u->userinfo, "prom:s3cret");
  u = ParseHttpUrl("http://[::1]:9000/m");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->port, "9000");
  u = ParseHttpUrl("http://example.org/x");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->port, "80");
  for (const char* bad : {"https://h:1/metrics", "h:1/metrics", "http://:80/", "http://h:0/", "http://h:99999/",
                          "http://h:x/", "http://[::1/"}) {
    EXPECT_EQ(ParseHttpUrl(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(ParsePrometheusText, SumsSeriesAndSkipsTheRest) {
  const std::string text =
      "# HELP plume_batch_size Vectors per call.\n"
      "# TYPE plume_batch_size histogram\n"
      "plume_batch_size_count 12\n"
      "plume_batch_size_sum 96.5\n"
      "plume_batch_size_bucket{le=\"1\"} 3\n"
      "plume_queue_duration_seconds_sum{matrix=\"a } b\",x=\"q\\\"uote\"} 0.25 1700000000000\n"
      "plume_queue_duration_seconds_sum{matrix=\"c\"} 0.5\n"
      "plume_queue_duration_seconds_count{matrix=\"c\"} NaN\n"
      "plume_queue_duration_seconds_count{matrix=\"c\"} 4\n"
      "plume_queue_duration_seconds_count{broken=\"no close\" 9\n"
      "plume_batch_size_sum_extra 1000\n"
      "   \n"
      "plume_kernel_duration_seconds_sum garbage\n";
  const auto v = ParsePrometheusText(
      text, {"plume_batch_size_count", "plume_batch_size_sum", "plume_queue_duration_seconds_sum",
             "plume_queue_duration_seconds_count", "plume_kernel_duration_seconds_sum"});
  EXPECT_EQ(v.at("plume_batch_size_count"), 12);
  EXPECT_EQ(v.at("plume_batch_size_sum"), 96.5);
  EXPECT_EQ(v.at("plume_queue_duration_seconds_sum"), 0.75);
  EXPECT_EQ(v.at("plume_queue_duration_seconds_count"), 4);
  EXPECT_EQ(v.count("plume_kernel_duration_seconds_sum"), 0u);
  EXPECT_EQ(v.count("plume_batch_size_bucket"), 0u);  // not asked for
}

class ExposerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    exposer_ = std::make_unique<prometheus::Exposer>("127.0.0.1:0");
    registry_ = std::make_shared<prometheus::Registry>();
    auto& h = prometheus::BuildHistogram().Name("plume_kernel_duration_seconds").Help("k").Register(*registry_);
    auto& series = h.Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.01});
    series.Observe(0.002);
    series.Observe(0.004);
    exposer_->RegisterCollectable(registry_);
    url_ = "http://127.0.0.1:" + std::to_string(exposer_->GetListeningPorts().at(0)) + "/metrics";
  }

  std::unique_ptr<prometheus::Exposer> exposer_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::string url_;
};

TEST_F(ExposerTest, ReadsTheHistogram) {
  auto u = ParseHttpUrl(url_);
  ASSERT_TRUE(u.ok());
  auto body = HttpGet(*u, "", absl::Seconds(5));
  ASSERT_TRUE(body.ok()) << body.status();
  const auto v = ParsePrometheusText(*body, {"plume_kernel_duration_seconds_sum", "plume_kernel_duration_seconds_count"});
  EXPECT_EQ(v.at("plume_kernel_duration_seconds_count"), 2);
  EXPECT_NEAR(v.at("plume_kernel_duration_seconds_sum"), 0.006, 1e-12);
}

TEST_F(ExposerTest, BasicAuth) {
  exposer_->RegisterAuth([](const std::string& u, const std::string& p) { return u == "prom" && p == "pw"; },
                         "test");
  auto u = ParseHttpUrl(url_);
  ASSERT_TRUE(u.ok());
  auto none = HttpGet(*u, "", absl::Seconds(5));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(none.status().message().find("401"), std::string::npos) << none.status();
  EXPECT_FALSE(HttpGet(*u, "prom:wrong", absl::Seconds(5)).ok());
  auto ok = HttpGet(*u, "prom:pw", absl::Seconds(5));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_NE(ok->find("plume_kernel_duration_seconds_count 2"), std::string::npos);
}

TEST(HttpGet, NothingListening) {
  // A port that was just listened on and is closed again.
  int port = 0;
  {
    prometheus::Exposer e("127.0.0.1:0");
    port = e.GetListeningPorts().at(0);
  }
  auto u = ParseHttpUrl("http://127.0.0.1:" + std::to_string(port) + "/metrics");
  ASSERT_TRUE(u.ok());
  auto r = HttpGet(*u, "", absl::Seconds(2));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
}

}  // namespace
}  // namespace plume::cli
