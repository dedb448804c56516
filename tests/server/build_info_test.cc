// What an operator asks a running or installed plume: `plume-server
// --version` and `plume --version` (version, commit, build type, backends),
// `plume-server --help` (plume's own flags), and /metrics' plume_build_info
// and process_* series. The binaries run as processes (PLUME_SERVER_BIN,
// PLUME_CLI_BIN); the collector and the registry are also read in process.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <ctime>
#include <time.h>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <prometheus/client_metric.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include "metrics_scrape.h"
#include "plume/build_info.h"
#include "server/core/metrics.h"
#include "server/core/process_metrics.h"
#include "tests/common/process.h"
#include "tests/common/server_process_test.h"

namespace plume {
namespace {

using namespace std::chrono_literals;
using testing::SlurpFile;

class BuildInfoTest : public testing::ServerProcessTest {
 protected:
  struct Run {
    int exit_code = -1;
    std::string out, err;
  };
  Run RunBinary(const std::vector<std::string>& args) {
    Run r;
    const pid_t pid = testing::Spawn(args, File("run.out"), File("run.err"));
    if (pid <= 0) return r;
    r.exit_code = testing::WaitFor(pid, 60s);
    r.out = SlurpFile(File("run.out"));
    r.err = SlurpFile(File("run.err"));
    return r;
  }
};

// The lines every --version prints, whichever binary.
void ExpectVersionText(const std::string& text, const std::string& program) {
  const BuildInfo& b = GetBuildInfo();
  EXPECT_EQ(b.version, PLUME_EXPECTED_VERSION);
  EXPECT_NE(text.find(program + " " PLUME_EXPECTED_VERSION "\n"), std::string::npos) << text;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(text, m, std::regex("commit: +(\\S+)\n"))) << text;
  EXPECT_TRUE(std::regex_match(m[1].str(), std::regex("[0-9a-f]{7,40}(-dirty)?|unknown"))) << m[1];
  EXPECT_EQ(m[1].str(), std::string(b.commit));
  ASSERT_TRUE(std::regex_search(text, m, std::regex("build type: +(.+)\n"))) << text;
  EXPECT_EQ(m[1].str(), std::string(b.build_type));
  EXPECT_NE(m[1].str(), "unspecified");
  ASSERT_TRUE(std::regex_search(text, m, std::regex("backends: +(\\S+)\n"))) << text;
  EXPECT_TRUE(m[1].str() == "cpu" || m[1].str() == "cpu,cuda") << m[1];
  EXPECT_EQ(m[1].str(), std::string(b.backends));
  ASSERT_TRUE(std::regex_search(text, m, std::regex("cuda: +(.+)"))) << text;
  if (b.cuda.empty()) {
    EXPECT_EQ(m[1].str(), "none");
  } else {
    EXPECT_NE(m[1].str().find("built with " + std::string(b.cuda)), std::string::npos) << m[1];
  }
}

TEST_F(BuildInfoTest, ServerVersionSaysVersionCommitBuildTypeAndBackends) {
  const Run r = RunBinary({PLUME_SERVER_BIN, "--version"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  ExpectVersionText(r.out, "plume-server");
  EXPECT_EQ(r.out.find("NDEBUG"), std::string::npos) << r.out;  // abseil's default text
#if PLUME_EXPECT_CUDA
  EXPECT_TRUE(std::regex_search(r.out, std::regex("runtime [0-9]+\\.[0-9]+"))) << r.out;
#endif
}

TEST_F(BuildInfoTest, CliVersionSaysVersionCommitBuildTypeAndBackends) {
  const Run r = RunBinary({PLUME_CLI_BIN, "--version"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  ExpectVersionText(r.out, "plume");
  // Global options before it change nothing, and no server is needed.
  const Run r2 = RunBinary({PLUME_CLI_BIN, "--server", "127.0.0.1:1", "--version"});
  EXPECT_EQ(r2.exit_code, 0) << r2.err;
  EXPECT_EQ(r2.out, r.out);
}

TEST_F(BuildInfoTest, ServerHelpListsPlumesFlags) {
  for (const char* help : {"--help", "--helpshort"}) {
    const Run r = RunBinary({PLUME_SERVER_BIN, help});
    EXPECT_EQ(r.exit_code, 1) << help;  // abseil's usage exit code
    const std::string text = r.out + r.err;
    EXPECT_EQ(text.find("No flags matched"), std::string::npos) << help << ": " << text;
    // Flags of server/main/main.cc and of server/main/hardening.cc, with
    // their help text, and where they are defined as a repository path.
    for (const char* flag : {"--grpc_address", "--metrics_address", "--backend", "--max_batch",
                             "--store_dir", "--tls_cert", "--auth_token_file"}) {
      EXPECT_NE(text.find(flag), std::string::npos) << help << " lacks " << flag << ":\n" << text;
    }
    EXPECT_NE(text.find("Address of the Prometheus /metrics endpoint"), std::string::npos) << text;
    EXPECT_NE(text.find("server/main/main.cc"), std::string::npos) << text;
    EXPECT_EQ(text.find(PLUME_SOURCE_DIR "/server"), std::string::npos) << "absolute path:\n" << text;
    // abseil's own flags only under --helpfull.
    EXPECT_EQ(text.find("--flagfile"), std::string::npos) << help << ": " << text;
  }
  const Run full = RunBinary({PLUME_SERVER_BIN, "--helpfull"});
  EXPECT_NE((full.out + full.err).find("--flagfile"), std::string::npos);
  EXPECT_NE((full.out + full.err).find("--grpc_address"), std::string::npos);
}

// The labels of a text-format sample line `name{a="x",b="y"} v`.
std::map<std::string, std::string> LabelsOf(const std::string& line) {
  std::map<std::string, std::string> labels;
  static const std::regex kLabel("([a-z_]+)=\"([^\"]*)\"");
  const size_t open = line.find('{'), close = line.find('}');
  if (open == std::string::npos || close == std::string::npos) return labels;
  const std::string inner = line.substr(open + 1, close - open - 1);
  for (std::sregex_iterator it(inner.begin(), inner.end(), kLabel), end; it != end; ++it) {
    labels[(*it)[1]] = (*it)[2];
  }
  return labels;
}

TEST_F(BuildInfoTest, MetricsExportBuildInfoAndProcessMetrics) {
  ASSERT_NO_FATAL_FAILURE(StartServer({"--store_dir=" + File("store")}));
  auto url = cli::ParseHttpUrl("http://127.0.0.1:" + std::to_string(metrics_port_) + "/metrics");
  ASSERT_TRUE(url.ok());
  auto body = cli::HttpGet(*url, "", absl::Seconds(10));
  ASSERT_TRUE(body.ok()) << body.status();
  const std::string& text = *body;

  // plume_build_info{version,commit,backend,cuda} 1, the same as --version.
  const BuildInfo& b = GetBuildInfo();
  std::smatch m;
  ASSERT_TRUE(std::regex_search(text, m, std::regex("\nplume_build_info(\\{[^}]*\\}) ([^\n]+)\n"))) << text;
  EXPECT_EQ(std::stod(m[2]), 1.0);
  const auto labels = LabelsOf(m[1]);
  EXPECT_EQ(labels.size(), 4u) << m[1];
  EXPECT_EQ(labels.count("version") ? labels.at("version") : "", PLUME_EXPECTED_VERSION);
  EXPECT_EQ(labels.count("commit") ? labels.at("commit") : "", std::string(b.commit));
  EXPECT_EQ(labels.count("backend") ? labels.at("backend") : "", std::string(b.backends));
  EXPECT_EQ(labels.count("cuda") ? labels.at("cuda") : "", b.cuda.empty() ? "none" : std::string(b.cuda));
  EXPECT_NE(text.find("# TYPE plume_build_info gauge"), std::string::npos);

  const auto v = cli::ParsePrometheusText(
      text, {"process_resident_memory_bytes", "process_virtual_memory_bytes", "process_cpu_seconds_total",
             "process_open_fds", "process_max_fds", "process_start_time_seconds"});
  ASSERT_EQ(v.size(), 6u) << text;
  // A serving plume-server holds at least its code and gRPC's threads.
  EXPECT_GT(v.at("process_resident_memory_bytes"), 1 << 20);
  EXPECT_GE(v.at("process_virtual_memory_bytes"), v.at("process_resident_memory_bytes"));
  EXPECT_GE(v.at("process_cpu_seconds_total"), 0.0);
  EXPECT_LT(v.at("process_cpu_seconds_total"), 3600.0);
  // stdin/out/err, two listening sockets, the store directory's lock...
  EXPECT_GE(v.at("process_open_fds"), 5.0);
  EXPECT_GE(v.at("process_max_fds"), v.at("process_open_fds"));
  // Started in this test: within a minute of now (and certainly a day).
  const double now = static_cast<double>(std::time(nullptr));
  EXPECT_LE(v.at("process_start_time_seconds"), now + 2) << std::fixed << v.at("process_start_time_seconds");
  EXPECT_GT(v.at("process_start_time_seconds"), now - 120) << std::fixed << v.at("process_start_time_seconds");
  EXPECT_NE(text.find("# TYPE process_cpu_seconds_total counter"), std::string::npos);
  EXPECT_NE(text.find("# TYPE process_resident_memory_bytes gauge"), std::string::npos);
}

// In process: the collector reads this test's own /proc/self.
double ValueOf(const std::vector<prometheus::MetricFamily>& families, const std::string& name) {
  for (const auto& f : families) {
    if (f.name != name) continue;
    EXPECT_EQ(f.metric.size(), 1u);
    if (f.metric.empty()) return NAN;
    return f.type == prometheus::MetricType::Counter ? f.metric[0].counter.value : f.metric[0].gauge.value;
  }
  ADD_FAILURE() << name << " not collected";
  return NAN;
}

TEST(ProcessMetricsCollector, ReadsThisProcess) {
  core::ProcessMetricsCollector collector;
  const auto before = collector.Collect();
  EXPECT_EQ(before.size(), 6u);
  EXPECT_GT(ValueOf(before, "process_resident_memory_bytes"), 0);
  const double now = static_cast<double>(std::time(nullptr));
  const double start = ValueOf(before, "process_start_time_seconds");
  EXPECT_LE(start, now + 2);
  EXPECT_GT(start, now - 86400);

  // A descriptor opened shows up; CPU time is spent and counted.
  const int fd = open("/dev/null", O_RDONLY);
  ASSERT_GE(fd, 0);
  // Spin until this process has used 300 ms more CPU (by its own clock,
  // however busy the machine), at most 30 s of wall time.
  auto cpu_seconds = [] {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  };
  volatile double sink = 0;
  const double cpu_end = cpu_seconds() + 0.3;
  const auto wall_end = std::chrono::steady_clock::now() + 30s;
  while (cpu_seconds() < cpu_end && std::chrono::steady_clock::now() < wall_end) {
    for (int i = 0; i < 1000; ++i) sink = sink + std::sqrt(sink + 1.0);
  }
  const auto after = collector.Collect();
  close(fd);
  EXPECT_EQ(ValueOf(after, "process_open_fds"), ValueOf(before, "process_open_fds") + 1);
  EXPECT_GE(ValueOf(after, "process_cpu_seconds_total"), ValueOf(before, "process_cpu_seconds_total") + 0.1);
  EXPECT_EQ(ValueOf(after, "process_start_time_seconds"), start);
}

TEST(BuildInfoMetric, IsInEveryServersRegistry) {
  core::Metrics metrics;
  const BuildInfo& b = GetBuildInfo();
  int found = 0;
  for (const auto& f : metrics.registry()->Collect()) {
    if (f.name != "plume_build_info") continue;
    EXPECT_EQ(f.type, prometheus::MetricType::Gauge);
    for (const auto& s : f.metric) {
      ++found;
      EXPECT_EQ(s.gauge.value, 1.0);
      std::map<std::string, std::string> labels;
      for (const auto& l : s.label) labels[l.name] = l.value;
      EXPECT_EQ(labels, (std::map<std::string, std::string>{
                            {"version", std::string(b.version)},
                            {"commit", std::string(b.commit)},
                            {"backend", std::string(b.backends)},
                            {"cuda", b.cuda.empty() ? std::string("none") : std::string(b.cuda)}}));
    }
  }
  EXPECT_EQ(found, 1);
}

}  // namespace
}  // namespace plume
