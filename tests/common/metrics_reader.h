// Test helper: reads a metric family straight from a prometheus-cpp registry.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <prometheus/registry.h>

namespace plume::testing {

// The family `name`'s series whose labels include the value `label` (""
// = all), summed: for histograms the samples' sum and count, for gauges and
// counters their value (in `sum`; `count` stays 0); histograms also their
// cumulative bucket counts.
struct MetricSample {
  double sum = 0, count = 0;
  // Histograms: (upper bound, cumulative count) per bucket, +Inf last.
  std::vector<std::pair<double, double>> buckets;

  // The count at or below `bound` (a bucket's upper bound) in `this`, less
  // that in `earlier`.
  double CountAtMost(double bound, const MetricSample& earlier) const {
    auto at = [bound](const MetricSample& s) {
      for (const auto& [upper, n] : s.buckets) {
        if (upper >= bound * (1 - 1e-9)) return n;
      }
      return s.count;
    };
    return at(*this) - at(earlier);
  }
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
        if (s.buckets.size() < m.histogram.bucket.size()) {
          s.buckets.resize(m.histogram.bucket.size(), {0.0, 0.0});
        }
        for (size_t i = 0; i < m.histogram.bucket.size(); ++i) {
          s.buckets[i].first = m.histogram.bucket[i].upper_bound;
          s.buckets[i].second += double(m.histogram.bucket[i].cumulative_count);
        }
      } else {
        s.sum += fam.type == prometheus::MetricType::Gauge ? m.gauge.value : m.counter.value;
      }
    }
  }
  return s;
}

}  // namespace plume::testing
