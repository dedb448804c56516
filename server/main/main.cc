// plume-server: serves MatrixService over gRPC and metrics over HTTP.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <prometheus/exposer.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "plume/build_info.h"
#include "server/backends/cpu/cpu_backend.h"
#if PLUME_HAVE_CUDA_BACKEND
#include "server/backends/cuda/cuda_backend.h"
#endif
#include "server/core/engine.h"
#include "server/core/gpu_utilization.h"
#include "server/core/memory_trimmer.h"
#include "server/core/metrics.h"
#include "server/core/process_metrics.h"
#include "server/backends/sharded/sharded_backend.h"
#include "server/grpc/server.h"
#include "server/main/hardening.h"  // store, TLS, auth, stream limits

ABSL_FLAG(std::string, grpc_address, "0.0.0.0:50051", "Address the gRPC API listens on (port 0: any free port).");
ABSL_FLAG(std::string, metrics_address, "0.0.0.0:9464", "Address of the Prometheus /metrics endpoint (port 0: any free port).");
ABSL_FLAG(std::string, backend, "auto", "Compute backend: auto, cpu or cuda. auto picks CUDA when a GPU is present.");
ABSL_FLAG(int64_t, memory_budget_bytes, 0, "Bytes the matrix store may hold; 0: half of host memory (cpu backend), free device memory less --device_reserve_bytes (cuda backend).");
ABSL_FLAG(int32_t, max_message_bytes, 64 << 20, "Largest gRPC message accepted or sent, in bytes.");
ABSL_FLAG(int64_t, max_upload_bytes, int64_t{16} << 30, "Largest source matrix one upload may send, in bytes.");
ABSL_FLAG(int64_t, max_rows, int64_t{1} << 20, "Most rows a matrix may have.");
ABSL_FLAG(int64_t, max_cols, int64_t{1} << 20, "Most columns a matrix may have.");
ABSL_FLAG(int64_t, max_vectors_per_request, 4096, "Most vectors in one Gemv request.");
ABSL_FLAG(std::string, batching, "adaptive",
          "Batcher policy: adaptive launches a batch at once when its matrix or K/V cache has "
          "nothing running and gathers arrivals while it runs (--max_queue_delay_us only bounds "
          "that wait); fixed makes every batch that is not full wait --max_queue_delay_us.");
ABSL_FLAG(int64_t, max_batch, 64, "Batcher: a batch closes once it holds this many vectors (GEMV) or batch elements (attention).");
ABSL_FLAG(int64_t, max_queue_delay_us, 200, "Batcher: ... or at most this many microseconds after its first request arrived (0: never wait).");
ABSL_FLAG(int64_t, max_queue_size, 1024, "Batcher: requests that may wait per matrix or K/V cache before RESOURCE_EXHAUSTED.");
ABSL_FLAG(int64_t, max_kv_tokens, int64_t{1} << 24, "Most tokens one K/V cache may hold.");
ABSL_FLAG(int64_t, max_head_dim, 1024, "Largest head_dim of a K/V cache.");
ABSL_FLAG(int64_t, max_attention_rows, int64_t{1} << 16, "Most query rows (batch x heads x q_len) in one Attention request.");
ABSL_FLAG(int32_t, worker_threads, 4, "Threads that run GEMV requests.");
ABSL_FLAG(int32_t, device, -1, "CUDA device of the cuda backend; same as --devices=N (-1: use --devices).");
ABSL_FLAG(std::string, devices, "all",
          "cuda backend: the GPUs to use, \"all\" or a list such as 0,1. With several, matrices are "
          "placed per upload (MatrixHeader.placement): on one GPU, row-sharded across all, or replicated.");
ABSL_FLAG(int32_t, cpu_shards, 0,
          "cpu backend: >= 2 runs that many CPU backends as the devices of a multi-device server "
          "(placement tests without GPUs); 0 or 1: one.");
ABSL_FLAG(int64_t, device_budget_bytes, 0,
          "Multi-device servers: bytes each device may hold; 0: its free memory less --device_reserve_bytes "
          "(cuda) or host memory / --cpu_shards (cpu).");
ABSL_FLAG(int64_t, device_reserve_bytes, int64_t{1} << 30,
          "cuda backend: device memory kept out of the budget (workspaces, staging, the CUDA context).");
ABSL_FLAG(int32_t, cuda_streams, 4, "cuda backend: GEMVs that run at once, each on its own stream.");
ABSL_FLAG(int32_t, completion_spin_us, 500,
          "cuda backend: how long a stream's completion thread keeps polling for the next GEMV before it sleeps; "
          "0 sleeps at once (less CPU, a wake-up on a lone client's path).");
ABSL_FLAG(std::string, cuda_sync, "auto",
          "cuda backend: how a thread waiting for the GPU waits: auto (the driver's choice), spin, yield or block.");
ABSL_FLAG(std::string, decode_path, "",
          "cuda backend: FP8 decode, native (sm_89+) or software; empty picks native where the GPU has it.");
ABSL_FLAG(std::string, gemv_kernel, "auto",
          "cuda backend: GEMV kernel family, auto (the fastest measured per shape, batch bucket and "
          "activation dtype on first use), mma (every GPU), wgmma (sm_90 only) or cublaslt "
          "(cuBLASLt's FP8 GEMM, FP8 activations only, sm_89+); for tests and benchmarks.");
ABSL_FLAG(int32_t, cpu_threads, 0, "Threads of the CPU backend's GEMV; 0: one per hardware thread.");
ABSL_FLAG(int64_t, max_queued_requests, 4096, "Requests that may wait for a worker before RESOURCE_EXHAUSTED.");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(10), "On SIGTERM/SIGINT, how long in-flight calls may take to finish.");
ABSL_FLAG(std::string, ready_file, "", "If set, written as JSON {\"grpc_port\":N,\"metrics_port\":M} once serving.");
ABSL_FLAG(std::string, nvml_library, plume::core::GpuUtilizationCollector::kDefaultLibrary,
          "NVML library for plume_gpu_utilization_ratio; not loadable (or empty): the metric is absent.");
ABSL_FLAG(int64_t, metrics_max_targets, 100,
          "Distinct `matrix` label values (and, separately, `cache` ones) of the per-target metrics; "
          "matrices and K/V caches beyond it share the value \"_other\" (0: all of them do).");
ABSL_FLAG(int64_t, max_echo_bytes, 4 << 20, "Largest DiagnosticsService Echo payload, in bytes (RESOURCE_EXHAUSTED beyond it).");
ABSL_FLAG(std::string, log_level, "info", "Log level: trace, debug, info, warn, error.");
ABSL_FLAG(absl::Duration, memory_trim_interval, absl::Seconds(2),
          "How often freed heap memory is given back to the OS (malloc_trim), so RSS follows what is live; glibc's own "
          "trim at each free is then off. 0: only glibc's own.");

ABSL_FLAG(int32_t, malloc_arenas, 0,
          "With the memory trimmer on: the most malloc arenas glibc may use (M_ARENA_MAX); fewer keep less "
          "of a streamed upload's freed buffers, at a cost in allocation contention. 0: glibc's default.");

namespace {

int Fail(const std::string& what) {
  spdlog::critical("{}", what);
  return 1;
}

// "host:port" with the port replaced by the one actually bound.
std::string BoundAddress(const std::string& address, int port) {
  const size_t colon = address.rfind(':');
  return absl::StrCat(colon == std::string::npos ? address : address.substr(0, colon), ":", port);
}

bool WriteReadyFile(const std::string& path, int grpc_port, int metrics_port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << "{\"grpc_port\": " << grpc_port << ", \"metrics_port\": " << metrics_port << "}\n";
    if (!f.good()) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

// plume's own flags are defined in server/main/ (this file and
// hardening.cc). By default abseil's --help and --helpshort list only the
// flags of a file named after the program (plume-server.cc), which none is,
// and said "No flags matched"; --helpfull lists abseil's own flags too.
bool IsPlumeFlagFile(absl::string_view file) {
  return absl::StrContains(file, "server/main/");
}

// Flag locations as repository paths ("server/main/main.cc"), not the build
// machine's absolute paths.
std::string RepositoryPath(absl::string_view file) {
  const size_t at = file.rfind("server/main/");
  return std::string(at == absl::string_view::npos ? file : file.substr(at));
}

std::string ServerVersionText() {
#if PLUME_HAVE_CUDA_BACKEND
  return plume::VersionText("plume-server", plume::core::CudaRuntimeVersion()) + "\n";
#else
  return plume::VersionText("plume-server") + "\n";
#endif
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "FP8 GEMV and attention over gRPC, metrics over HTTP.\n"
      "--help lists plume's flags, --helpfull abseil's too; --version the build.");
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = IsPlumeFlagFile;
  usage.contains_helpshort_flags = IsPlumeFlagFile;
  usage.normalize_filename = RepositoryPath;
  usage.version_string = ServerVersionText;
  absl::SetFlagsUsageConfig(usage);
  absl::ParseCommandLine(argc, argv);
  spdlog::set_level(spdlog::level::from_str(absl::GetFlag(FLAGS_log_level)));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  // Debian's abseil is built without NDEBUG, so every absl::Mutex lock also
  // records lock order in a process-wide graph under a global spin lock
  // (GraphCycles). The tests keep that check; the server does not pay for it
  // on every request.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // The trimmer below gives freed memory back; glibc's trim at each free
  // would cost a page fault per 4 KiB of every message streamed in.
  if (absl::GetFlag(FLAGS_memory_trim_interval) > absl::ZeroDuration()) {
    plume::core::KeepFreedHeapMemory(absl::GetFlag(FLAGS_malloc_arenas));
  }

  // SIGINT/SIGTERM are taken by sigwait below; block them before any thread
  // starts so that every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const std::string backend_flag = absl::GetFlag(FLAGS_backend);
  if (backend_flag != "auto" && backend_flag != "cpu" && backend_flag != "cuda") {
    return Fail(absl::StrCat("--backend must be auto, cpu or cuda, not \"", backend_flag, "\""));
  }
  std::unique_ptr<plume::core::Backend> backend;
  std::string backend_description = "cpu";
  // Several devices: one child backend each, under a ShardedBackend.
  std::vector<std::unique_ptr<plume::core::Backend>> devices;
  std::vector<int> device_ids;
  bool cpu_devices = false;  // --cpu_shards: they share the host's memory
#if PLUME_HAVE_CUDA_BACKEND
  const int visible = plume::core::CudaDeviceCount();
  const bool want_cuda = backend_flag == "cuda" || (backend_flag == "auto" && visible > 0);
  if (want_cuda) {
    auto ids = absl::GetFlag(FLAGS_device) >= 0
                   ? plume::core::ParseDeviceList(absl::StrCat(absl::GetFlag(FLAGS_device)), visible)
                   : plume::core::ParseDeviceList(absl::GetFlag(FLAGS_devices), visible);
    if (!ids.ok()) return Fail(absl::StrCat("--devices: ", ids.status().message()));
    std::vector<std::string> described;
    for (int id : *ids) {
      plume::core::CudaBackendOptions cuda;
      cuda.device = id;
      cuda.reserve_bytes = absl::GetFlag(FLAGS_device_reserve_bytes);
      cuda.lanes = absl::GetFlag(FLAGS_cuda_streams);
      cuda.completion_spin_us = absl::GetFlag(FLAGS_completion_spin_us);
      cuda.sync = absl::GetFlag(FLAGS_cuda_sync);
      cuda.decode_path = absl::GetFlag(FLAGS_decode_path);
      cuda.gemv_kernel = absl::GetFlag(FLAGS_gemv_kernel);
      auto cb = plume::core::CudaBackend::Create(cuda);
      if (!cb.ok()) return Fail(std::string(cb.status().message()));
      described.push_back((*cb)->description());
      devices.push_back(std::move(*cb));
    }
    device_ids = *ids;
    backend_description = absl::StrJoin(described, "; ");
    if (devices.size() == 1) backend = std::move(devices.front());
  }
#else
  if (backend_flag == "cuda") {
    return Fail("--backend=cuda: this build has no CUDA backend (built without nvcc); use cpu or auto");
  }
#endif
  if (backend == nullptr && devices.empty()) {
    const int shards = absl::GetFlag(FLAGS_cpu_shards);
    if (shards < 0 || shards > 64) return Fail("--cpu_shards must be 0..64");
    if (shards <= 1) {
      backend = std::make_unique<plume::core::CpuBackend>(absl::GetFlag(FLAGS_cpu_threads));
    } else {
      for (int i = 0; i < shards; ++i) {
        devices.push_back(std::make_unique<plume::core::CpuBackend>(absl::GetFlag(FLAGS_cpu_threads)));
        device_ids.push_back(i);
      }
      backend_description = absl::StrCat(shards, " cpu devices");
      cpu_devices = true;
    }
  }
  if (backend == nullptr) {
    plume::core::ShardedBackendOptions sharded;
    sharded.device_ids = device_ids;
    sharded.device_budget_bytes = absl::GetFlag(FLAGS_device_budget_bytes);
    if (sharded.device_budget_bytes <= 0 && cpu_devices) {
      sharded.device_budget_bytes = devices.front()->memory_capacity_bytes() / static_cast<int64_t>(devices.size());
    }
    auto sb = plume::core::ShardedBackend::Create(std::move(devices), sharded);
    if (!sb.ok()) return Fail(std::string(sb.status().message()));
    // Starts as the single-device text does ("cuda device 0 (...); cuda
    // device 1 (...)"): scripts/gpu-e2e.sh looks for "backend cuda device".
    backend_description = absl::StrCat(backend_description, ", placed across them as ",
                                       std::string((*sb)->name()));
    backend = std::move(*sb);
  }

  plume::core::EngineOptions engine_options;
  plume::core::Limits& limits = engine_options.limits;
  limits.max_rows = absl::GetFlag(FLAGS_max_rows);
  limits.max_cols = absl::GetFlag(FLAGS_max_cols);
  limits.max_vectors_per_request = absl::GetFlag(FLAGS_max_vectors_per_request);
  limits.max_upload_bytes = absl::GetFlag(FLAGS_max_upload_bytes);
  limits.max_kv_seq = absl::GetFlag(FLAGS_max_kv_tokens);
  limits.max_head_dim = absl::GetFlag(FLAGS_max_head_dim);
  limits.max_attention_rows = absl::GetFlag(FLAGS_max_attention_rows);
  limits.max_response_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  engine_options.store.budget_bytes = absl::GetFlag(FLAGS_memory_budget_bytes);
  engine_options.store.dir = plume::server_main::StoreDirFlag();
  engine_options.work.worker_threads = absl::GetFlag(FLAGS_worker_threads);
  engine_options.work.max_queued = absl::GetFlag(FLAGS_max_queued_requests);
  engine_options.device_ids = device_ids;
  engine_options.metrics.max_targets = absl::GetFlag(FLAGS_metrics_max_targets);
  plume::core::BatchingOptions& batching = engine_options.batching;
  batching.max_batch = absl::GetFlag(FLAGS_max_batch);
  batching.max_queue_delay = std::chrono::microseconds(absl::GetFlag(FLAGS_max_queue_delay_us));
  batching.max_queue_size = absl::GetFlag(FLAGS_max_queue_size);
  if (const std::string policy = absl::GetFlag(FLAGS_batching); policy == "adaptive") {
    batching.policy = plume::core::BatchPolicy::kAdaptive;
  } else if (policy == "fixed") {
    batching.policy = plume::core::BatchPolicy::kFixed;
  } else {
    return Fail(absl::StrCat("--batching must be adaptive or fixed, not \"", policy, "\""));
  }
  // Verifies and loads the durable store (--store_dir) before serving.
  auto engine = plume::core::Engine::Create(
      engine_options, std::move(backend),
      [](plume::core::EngineLogLevel level, const std::string& text) {
        switch (level) {
          case plume::core::EngineLogLevel::kInfo: spdlog::info("{}", text); break;
          case plume::core::EngineLogLevel::kWarning: spdlog::warn("{}", text); break;
          case plume::core::EngineLogLevel::kError: spdlog::error("{}", text); break;
        }
      });
  if (!engine.ok()) return Fail(std::string(engine.status().message()));
  plume::core::Metrics& metrics = *(*engine)->metrics();

  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    exposer = std::make_unique<prometheus::Exposer>(absl::GetFlag(FLAGS_metrics_address));
  } catch (const std::exception& e) {
    return Fail(absl::StrCat("cannot serve metrics on ", absl::GetFlag(FLAGS_metrics_address),
                             ": ", e.what()));
  }
  if (auto s = plume::server_main::ProtectMetrics(exposer.get()); !s.ok()) {
    return Fail(std::string(s.message()));
  }
  exposer->RegisterCollectable(metrics.registry());
  // process_* from /proc/self, read at scrape time. The exposer holds
  // collectables by weak_ptr: this one lives as long as main.
  const auto process_metrics = std::make_shared<plume::core::ProcessMetricsCollector>();
  exposer->RegisterCollectable(process_metrics);
  // NVML is looked for when the server runs on GPUs, or when --nvml_library
  // names a library: a CPU box has none, and its absence is no news.
  std::string nvml_why;
  const std::string nvml_library = absl::GetFlag(FLAGS_nvml_library);
  const bool want_nvml = (!device_ids.empty() && !cpu_devices) ||
                         nvml_library != plume::core::GpuUtilizationCollector::kDefaultLibrary;
  const auto gpu_utilization =
      want_nvml ? plume::core::GpuUtilizationCollector::Create(nvml_library, &nvml_why) : nullptr;
  if (!want_nvml) {
    spdlog::debug("no GPU utilization metric: the server runs on the CPU");
  } else if (gpu_utilization != nullptr) {
    exposer->RegisterCollectable(gpu_utilization);
    spdlog::info("NVML: exporting plume_gpu_utilization_ratio for {} GPU(s)", gpu_utilization->num_devices());
  } else {
    spdlog::info("no GPU utilization metric: {}", nvml_why);
  }
  const std::vector<int> metrics_ports = exposer->GetListeningPorts();
  const int metrics_port = metrics_ports.empty() ? 0 : metrics_ports.front();

  plume::server::ServerOptions options;
  options.grpc_address = absl::GetFlag(FLAGS_grpc_address);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.max_echo_bytes = absl::GetFlag(FLAGS_max_echo_bytes);
  if (auto s = plume::server_main::ApplySecurityFlags(&options); !s.ok()) {
    return Fail(std::string(s.message()));
  }
  auto server = plume::server::Server::Start(options, **engine);
  if (!server.ok()) return Fail(std::string(server.status().message()));

  spdlog::info("plume-server ready: gRPC on {}, metrics on http://{}/metrics",
               BoundAddress(options.grpc_address, (*server)->port()),
               BoundAddress(absl::GetFlag(FLAGS_metrics_address), metrics_port));
  spdlog::info("backend {}, memory budget {} bytes, max message {} bytes", backend_description,
               (*engine)->budget_bytes(), options.max_message_bytes);
  spdlog::info("batching {}: max_batch {}, max_queue_delay {} us, max_queue_size {}",
               absl::GetFlag(FLAGS_batching), batching.max_batch, batching.max_queue_delay.count(),
               batching.max_queue_size);
  const std::string ready_file = absl::GetFlag(FLAGS_ready_file);
  if (!ready_file.empty() && !WriteReadyFile(ready_file, (*server)->port(), metrics_port)) {
    return Fail(absl::StrCat("cannot write --ready_file ", ready_file));
  }

  std::unique_ptr<plume::core::MemoryTrimmer> trimmer;
  if (const absl::Duration every = absl::GetFlag(FLAGS_memory_trim_interval);
      every > absl::ZeroDuration()) {
    trimmer = std::make_unique<plume::core::MemoryTrimmer>(
        std::chrono::milliseconds(std::max<int64_t>(1, absl::ToInt64Milliseconds(every))));
  }

  int sig = 0;
  sigwait(&signals, &sig);
  const absl::Duration drain = absl::GetFlag(FLAGS_drain_timeout);
  spdlog::info("received {}, draining for up to {}", sig == SIGTERM ? "SIGTERM" : "SIGINT",
               absl::FormatDuration(drain));
  // A hard bound on the drain: Shutdown cancels whatever is still open at
  // the drain timeout, and every call finishes on cancel; should one still
  // hold teardown a few seconds past that, the process exits anyway (the
  // store is crash-safe, so this is no worse than a kill -9).
  absl::Notification stopped;
  std::thread watchdog([&stopped, drain] {
    if (stopped.WaitForNotificationWithTimeout(drain + absl::Seconds(5))) return;
    spdlog::error("teardown still blocked {} after the drain timeout; exiting now",
                  absl::FormatDuration(absl::Seconds(5)));
    spdlog::default_logger()->flush();
    std::_Exit(3);
  });
  (*server)->Shutdown(absl::ToChronoMilliseconds(drain));
  server->reset();
  engine->reset();
  stopped.Notify();
  watchdog.join();
  spdlog::info("plume-server stopped");
  return 0;
}
