#include "server/core/gpu_utilization.h"

#include <dlfcn.h>

#include <string>
#include <utility>

#include "prometheus/client_metric.h"
#include "prometheus/metric_family.h"
#include "prometheus/metric_type.h"

namespace plume::core {

namespace {

// The few NVML entry points used, declared from NVML's public C API
// (nvml.h): every call returns nvmlReturn_t, 0 being NVML_SUCCESS.
using NvmlReturn = int;
constexpr NvmlReturn kNvmlSuccess = 0;
struct NvmlUtilization {
  unsigned int gpu;     // percent of time a kernel ran over the sample period
  unsigned int memory;  // percent of time device memory was read or written
};

}  // namespace

struct GpuUtilizationCollector::Api {
  NvmlReturn (*init)() = nullptr;
  NvmlReturn (*shutdown)() = nullptr;
  NvmlReturn (*device_count)(unsigned int*) = nullptr;
  NvmlReturn (*device_by_index)(unsigned int, void**) = nullptr;
  NvmlReturn (*utilization)(void*, NvmlUtilization*) = nullptr;
};

namespace {

template <typename Fn>
bool Resolve(void* handle, const char* name, Fn* fn, std::string* missing) {
  *fn = reinterpret_cast<Fn>(dlsym(handle, name));
  if (*fn == nullptr) *missing = name;
  return *fn != nullptr;
}

}  // namespace

std::shared_ptr<GpuUtilizationCollector> GpuUtilizationCollector::Create(const std::string& library,
                                                                         std::string* why) {
  std::string ignored;
  if (why == nullptr) why = &ignored;
  if (library.empty()) {
    *why = "no NVML library given";
    return nullptr;
  }
  void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* err = dlerror();
    *why = "cannot load " + library + ": " + (err != nullptr ? err : "unknown error");
    return nullptr;
  }
  auto api = std::make_unique<Api>();
  std::string missing;
  if (!Resolve(handle, "nvmlInit_v2", &api->init, &missing) ||
      !Resolve(handle, "nvmlShutdown", &api->shutdown, &missing) ||
      !Resolve(handle, "nvmlDeviceGetCount_v2", &api->device_count, &missing) ||
      !Resolve(handle, "nvmlDeviceGetHandleByIndex_v2", &api->device_by_index, &missing) ||
      !Resolve(handle, "nvmlDeviceGetUtilizationRates", &api->utilization, &missing)) {
    *why = library + " lacks " + missing;
    dlclose(handle);
    return nullptr;
  }
  if (const NvmlReturn rc = api->init(); rc != kNvmlSuccess) {
    *why = "nvmlInit_v2 failed with NVML error " + std::to_string(rc);
    dlclose(handle);
    return nullptr;
  }
  unsigned int count = 0;
  std::vector<void*> devices;
  if (api->device_count(&count) == kNvmlSuccess) {
    for (unsigned int i = 0; i < count; ++i) {
      void* device = nullptr;
      if (api->device_by_index(i, &device) != kNvmlSuccess) {
        devices.clear();
        break;
      }
      devices.push_back(device);
    }
  }
  if (devices.empty()) {
    *why = "NVML reports no usable GPU";
    api->shutdown();
    dlclose(handle);
    return nullptr;
  }
  return std::shared_ptr<GpuUtilizationCollector>(
      new GpuUtilizationCollector(handle, std::move(api), std::move(devices)));
}

GpuUtilizationCollector::GpuUtilizationCollector(void* handle, std::unique_ptr<Api> api,
                                                 std::vector<void*> devices)
    : handle_(handle), api_(std::move(api)), devices_(std::move(devices)) {}

GpuUtilizationCollector::~GpuUtilizationCollector() {
  api_->shutdown();
  dlclose(handle_);
}

std::vector<prometheus::MetricFamily> GpuUtilizationCollector::Collect() const {
  prometheus::MetricFamily family;
  family.name = kMetricName;
  family.help = "Fraction of NVML's last sample period in which a kernel ran on the GPU (0..1).";
  family.type = prometheus::MetricType::Gauge;
  for (size_t i = 0; i < devices_.size(); ++i) {
    NvmlUtilization u{};
    if (api_->utilization(devices_[i], &u) != kNvmlSuccess) continue;
    prometheus::ClientMetric m;
    m.label.push_back({"gpu", std::to_string(i)});
    m.gauge.value = static_cast<double>(u.gpu) / 100.0;
    family.metric.push_back(std::move(m));
  }
  if (family.metric.empty()) return {};
  return {std::move(family)};
}

}  // namespace plume::core
