// GPU utilization from NVML, exported as plume_gpu_utilization_ratio{gpu="N"}.
//
// NVML (libnvidia-ml.so.1, shipped with the NVIDIA driver) is loaded with
// dlopen at run time, so plume links no NVIDIA library and runs where there
// is none. Without the library, without a driver or without devices,
// Create() returns nullptr and the metric is simply absent: no error.
// The value is read from NVML at scrape time (no background thread).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "prometheus/collectable.h"

namespace plume::core {

class GpuUtilizationCollector final : public prometheus::Collectable {
 public:
  static constexpr const char* kDefaultLibrary = "libnvidia-ml.so.1";
  static constexpr const char* kMetricName = "plume_gpu_utilization_ratio";

  // Loads `library` and initializes NVML. nullptr (and `why`, if given,
  // says why) when NVML or a GPU is not there, or `library` is empty.
  static std::shared_ptr<GpuUtilizationCollector> Create(const std::string& library = kDefaultLibrary,
                                                         std::string* why = nullptr);
  ~GpuUtilizationCollector() override;

  GpuUtilizationCollector(const GpuUtilizationCollector&) = delete;
  GpuUtilizationCollector& operator=(const GpuUtilizationCollector&) = delete;

  int num_devices() const { return static_cast<int>(devices_.size()); }

  // One gauge per device: the fraction of the last sample period (as NVML
  // defines it) during which a kernel ran, 0..1. A device whose read fails
  // is left out of that scrape.
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  struct Api;
  GpuUtilizationCollector(void* handle, std::unique_ptr<Api> api, std::vector<void*> devices);

  void* handle_;  // dlopen handle
  std::unique_ptr<Api> api_;
  std::vector<void*> devices_;  // nvmlDevice_t
};

}  // namespace plume::core
