// Test helper: reads a metric family straight from a prometheus-cpp registry.
#pragma once

#include <string>

#include <prometheus/registry.h>

namespace plume::testing {

// The family `name`'s series whose labels include the value `label` (""
// = all), summed: for histograms the samples' sum and count, for gauges and
// counters their value (in `sum`; `count` stays 0).
struct MetricSample {
  double sum = 0, count = 0;
};

inline MetricSample ReadMetric(prometheus::Registry& r, const std::string& name,
                               const std::string& label = "") {
  MetricSample s;
  for (const auto& fam : r.Collect()) {
    if (fam.name != name) continue;
    for (const auto& m : fam.metric) {
      bool match = label.empty();
      for (const auto& l : m.label) match = match || l.value == label;
      if (!match) continue;
      if (fam.type == prometheus::MetricType::Histogram) {
        s.sum += m.histogram.sample_sum;
        s.count += double(m.histogram.sample_count);
      } else {
        s.sum += fam.type == prometheus::MetricType::Gauge ? m.gauge.value : m.counter.value;
      }
    }
  }
  return s;
}

}  // namespace plume::testing
