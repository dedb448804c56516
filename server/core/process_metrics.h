// The process metrics of the Prometheus client conventions, read from
// /proc/self at scrape time (no background thread), for Linux:
//   process_resident_memory_bytes   gauge    resident set size
//   process_virtual_memory_bytes    gauge    virtual memory size
//   process_cpu_seconds_total       counter  user + system CPU time
//   process_open_fds                gauge    open file descriptors
//   process_max_fds                 gauge    the soft RLIMIT_NOFILE
//   process_start_time_seconds      gauge    start time, seconds since the Unix epoch
// A value that cannot be read (no /proc) is left out of that scrape.
#pragma once

#include <vector>

#include "prometheus/collectable.h"

namespace plume::core {

class ProcessMetricsCollector final : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override;
};

}  // namespace plume::core
