#include "server/core/process_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <utility>

#include "prometheus/client_metric.h"
#include "prometheus/metric_family.h"
#include "prometheus/metric_type.h"

namespace plume::core {

namespace {

std::string ReadFile(const char* path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The fields of /proc/self/stat after "(comm)" (which may hold spaces and
// parentheses: the last ')' ends it). fields[0] is field 3 of proc(5),
// "state"; field N is fields[N - 3].
std::vector<std::string> StatFields() {
  const std::string stat = ReadFile("/proc/self/stat");
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return {};
  std::istringstream in(stat.substr(close + 1));
  std::vector<std::string> fields;
  for (std::string f; in >> f;) fields.push_back(std::move(f));
  return fields;
}

std::optional<double> Field(const std::vector<std::string>& fields, int proc5_index) {
  const size_t i = static_cast<size_t>(proc5_index - 3);
  if (i >= fields.size()) return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(fields[i].c_str(), &end);
  if (end == fields[i].c_str()) return std::nullopt;
  return v;
}

// Boot time, seconds since the epoch ("btime" of /proc/stat).
std::optional<double> BootTime() {
  std::istringstream in(ReadFile("/proc/stat"));
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("btime ", 0) == 0) return std::strtod(line.c_str() + 6, nullptr);
  }
  return std::nullopt;
}

std::optional<double> OpenFds() {
  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) return std::nullopt;
  double n = 0;
  while (const dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n - 1;  // less the descriptor of the listing itself
}

void Add(std::vector<prometheus::MetricFamily>* out, const char* name, const char* help,
         prometheus::MetricType type, std::optional<double> value) {
  if (!value.has_value()) return;
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = *value;
  } else {
    m.gauge.value = *value;
  }
  family.metric.push_back(std::move(m));
  out->push_back(std::move(family));
}

}  // namespace

std::vector<prometheus::MetricFamily> ProcessMetricsCollector::Collect() const {
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  const std::vector<std::string> stat = StatFields();
  // proc(5): 14 utime, 15 stime, 22 starttime (clock ticks), 23 vsize
  // (bytes), 24 rss (pages).
  const auto utime = Field(stat, 14), stime = Field(stat, 15), start = Field(stat, 22),
             vsize = Field(stat, 23), rss = Field(stat, 24);
  const auto boot = BootTime();

  std::vector<prometheus::MetricFamily> out;
  using prometheus::MetricType;
  Add(&out, "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
      MetricType::Counter,
      utime && stime && ticks > 0 ? std::optional<double>((*utime + *stime) / ticks) : std::nullopt);
  Add(&out, "process_open_fds", "Number of open file descriptors.", MetricType::Gauge, OpenFds());
  rlimit nofile{};
  Add(&out, "process_max_fds", "Maximum number of open file descriptors.", MetricType::Gauge,
      getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY
          ? std::optional<double>(static_cast<double>(nofile.rlim_cur))
          : std::nullopt);
  Add(&out, "process_virtual_memory_bytes", "Virtual memory size in bytes.", MetricType::Gauge, vsize);
  Add(&out, "process_resident_memory_bytes", "Resident memory size in bytes.", MetricType::Gauge,
      rss && page > 0 ? std::optional<double>(*rss * page) : std::nullopt);
  Add(&out, "process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
      MetricType::Gauge,
      start && boot && ticks > 0 ? std::optional<double>(*boot + *start / ticks) : std::nullopt);
  return out;
}

}  // namespace plume::core
