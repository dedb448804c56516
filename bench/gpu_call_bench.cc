// What one backend GEMV call costs the host: CudaBackend::Gemv timed end to
// end on the calling thread (the batcher's worker does the same), beside the
// device time the backend measures for the call (GemvArgs::device_seconds:
// copy-in, kernels, copy-out on the device's timeline). Wall less device is
// the host's part, the figure the server exports as
// plume_host_duration_seconds. Random E4M3 codes with ROW scales, F16
// activations and F32 results, in pinned buffers (the batcher's way) or heap
// memory (the staging path), on one stream (as a lone client's calls run).
// Medians of --iters calls. Then one decode step (CudaBackend::Attention,
// q_len 1) on an E4M3 cache of --attention-seq tokens (8 kv heads, 32 heads,
// head dim 128, F16 queries and outputs in pinned buffers), wall time only
// (the backend measures no device time for attention); 0 skips it.
// --direct-results 0 has the results of pinned calls copied out instead of
// stored by the kernel straight into the pinned buffer
// (CudaBackendOptions::kernels_write_pinned_results).
// --async 1 times CudaBackend::GemvAsync instead, as the server calls it:
// from the call to its callback on the lane's completion thread (the wall
// time plume_host_duration_seconds is taken from). --gap-us N sleeps N us
// between calls, as a lone client's requests come apart, and --spin-us N
// is CudaBackendOptions::completion_spin_us (how long that thread polls
// before it sleeps); --lanes N the backend's streams.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "plume/kernels/half.h"
#include "plume/reference/api.h"
#include "bench/backend_bench_io.h"
#include "server/backends/cuda/cuda_backend.h"

namespace {

using namespace plume;
using namespace plume::core;
using plume::bench::Check;
using plume::bench::Die;
using plume::bench::Io;
using plume::bench::MakeIo;

struct Options {
  int64_t rows = 8192, cols = 8192;
  std::vector<int64_t> batches = {1, 16};
  int iters = 2000;
  bool direct_results = true;
  int64_t attention_seq = 8192;
  std::string json;
  bool async = false;
  int64_t gap_us = 0;
  int64_t spin_us = 500;
  int64_t lanes = 1;
};

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Die(a + " needs a value");
      return argv[++i];
    };
    auto number = [&]() {
      int64_t v = 0;
      if (!absl::SimpleAtoi(value(), &v) || v <= 0) Die(a + ": a positive number");
      return v;
    };
    if (a == "--rows") o.rows = number();
    else if (a == "--cols") o.cols = number();
    else if (a == "--iters") o.iters = static_cast<int>(number());
    else if (a == "--json") o.json = value();
    else if (a == "--attention-seq") {
      if (!absl::SimpleAtoi(value(), &o.attention_seq) || o.attention_seq < 0) {
        Die("--attention-seq: a number of tokens, 0 to skip");
      }
    } else if (a == "--async" || a == "--gap-us" || a == "--spin-us") {
      int64_t v = 0;
      if (!absl::SimpleAtoi(value(), &v) || v < 0 || (a == "--async" && v > 1)) {
        Die(a + ": " + (a == "--async" ? "0 or 1" : "a number of microseconds, 0 or more"));
      }
      if (a == "--async") o.async = v == 1;
      else if (a == "--gap-us") o.gap_us = v;
      else o.spin_us = v;
    } else if (a == "--lanes") {
      o.lanes = number();
    } else if (a == "--direct-results") {
      const std::string v = value();
      if (v != "0" && v != "1") Die("--direct-results: 0 or 1");
      o.direct_results = v == "1";
    }
    else if (a == "--batches") {
      o.batches.clear();
      for (absl::string_view b : absl::StrSplit(value(), ',')) {
        int64_t v = 0;
        if (!absl::SimpleAtoi(b, &v) || v <= 0) Die("--batches: a list of positive numbers");
        o.batches.push_back(v);
      }
    } else {
      Die(absl::StrCat("unknown flag ", a,
                     "; flags: --rows --cols --batches 1,16 --iters --attention-seq 8192 "
                     "--direct-results 0|1 --async 0|1 --gap-us 0 --spin-us 500 --lanes 1 --json PATH"));
    }
  }
  return o;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  plume::bench::g_bench_name = "gpu_call_bench";
  setvbuf(stdout, nullptr, _IOLBF, 0);
  const Options o = Parse(argc, argv);
  MatrixShape shape{o.rows, o.cols, Fp8Format::kE4M3, ScaleMode::kRow, true};
  std::vector<uint32_t> words(static_cast<size_t>(shape.layout().total_words()), 0);
  std::vector<float> scales(static_cast<size_t>(o.rows));
  std::mt19937_64 rng(7);
  auto* bytes = reinterpret_cast<uint8_t*>(words.data());
  for (int64_t r = 0; r < o.rows; ++r) {
    for (int64_t c = 0; c < o.cols; ++c) {
      uint8_t code = static_cast<uint8_t>(rng());
      if ((code & 0x7f) == 0x7f) code ^= 0x01;  // not NaN
      bytes[r * shape.layout().padded_cols() + c] = code;
    }
    scales[static_cast<size_t>(r)] = 1.0f / 256;
  }
  CudaBackendOptions co;
  co.lanes = static_cast<int>(o.lanes);
  co.completion_spin_us = static_cast<int>(o.spin_us);
  co.kernels_write_pinned_results = o.direct_results;
  auto backend = Check(CudaBackend::Create(co), "creating a CUDA backend");
  auto matrix = Check(backend->FromPacked(shape, words.data(), scales.data()), "uploading");
  std::printf("gpu_call_bench: %s; %lldx%lld E4M3 ROW, F16 activations, F32 results; medians of %d "
              "calls; pinned results %s; %s, %lld us apart, completion spin %lld us\n",
              backend->description().c_str(), static_cast<long long>(o.rows),
              static_cast<long long>(o.cols), o.iters,
              o.direct_results ? "stored by the kernel" : "copied out",
              o.async ? "GemvAsync to its callback" : "Gemv", static_cast<long long>(o.gap_us),
              static_cast<long long>(o.spin_us));
  // One timed call: Gemv on this thread, or GemvAsync to its callback.
  auto call = [&](const BackendMatrix& m, const GemvArgs& a, double* device) {
    const auto t0 = std::chrono::steady_clock::now();
    if (!o.async) {
      Check(backend->Gemv(m, a), "GEMV");
      return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    }
    std::atomic<bool> done{false};
    double wall = 0;
    absl::Status status;
    backend->GemvAsync(m, a, [&](const absl::Status& s, double dev) {
      wall = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
      status = s;
      *device = dev;
      done.store(true, std::memory_order_release);
    });
    while (!done.load(std::memory_order_acquire)) std::this_thread::yield();
    Check(status, "GEMV");
    return wall;
  };
  auto gap = [&] {
    if (o.gap_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(o.gap_us));
  };
  std::string json = "{\"results\": [";
  bool first = true;
  for (int64_t batch : o.batches) {
    for (bool heap : {false, true}) {
      Io io = MakeIo(*backend, o.rows, o.cols, batch, heap);
      std::vector<double> wall, device, host;
      double dev = 0;
      GemvArgs a = io.args;
      a.device_seconds = &dev;
      for (int i = 0; i < 20; ++i) call(*matrix, a, &dev);  // warm-up
      for (int i = 0; i < o.iters; ++i) {
        gap();
        const double w = call(*matrix, a, &dev);
        wall.push_back(w);
        device.push_back(dev * 1e6);
        host.push_back(w - std::min(w, dev * 1e6));
      }
      std::printf("batch %3lld  %-6s  wall %8.2f us  device %8.2f us  host part %6.2f us\n",
                  static_cast<long long>(batch), heap ? "heap" : "pinned", Median(wall),
                  Median(device), Median(host));
      json += absl::StrCat(first ? "" : ", ", "{\"batch\": ", batch, ", \"io\": \"",
                           heap ? "heap" : "pinned", "\", \"async\": ", o.async ? "true" : "false",
                           ", \"gap_us\": ", o.gap_us, ", \"spin_us\": ", o.spin_us,
                           ", \"direct_results\": ",
                           o.direct_results ? "true" : "false", ", \"wall_us\": ", Median(wall),
                           ", \"device_us\": ", Median(device), ", \"host_us\": ", Median(host), "}");
      first = false;
    }
  }
  if (o.attention_seq > 0) {
    const KvShape kv{8, 128, Fp8Format::kE4M3, KvScaleMode::kTokenBlock, true};
    auto cache = Check(backend->CreateKv(kv), "creating a K/V cache");
    std::vector<float> k(static_cast<size_t>(8 * o.attention_seq * 128));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& f : k) f = normal(rng);
    Check(backend->AppendKv(*cache, {k.data(), k.data(), DType::kF32, o.attention_seq}), "appending K/V");
    for (int64_t batch : o.batches) {
      const int64_t n = batch * 32 * 128;
      auto q = Check(backend->AllocateHostBuffer(static_cast<size_t>(n * 2)), "pinned queries");
      auto out = Check(backend->AllocateHostBuffer(static_cast<size_t>(n * 2)), "pinned outputs");
      auto* qh = static_cast<uint16_t*>(q->data());
      for (int64_t i = 0; i < n; ++i) qh[i] = FloatToHalfBits(normal(rng) * 0.1f);
      const AttentionArgs a{q->data(), DType::kF16, batch, 32, 1, 0.088f, true, out->data(), DType::kF16};
      std::vector<double> wall;
      for (int i = 0; i < 20; ++i) Check(backend->Attention(*cache, a), "attention");  // warm-up
      for (int i = 0; i < o.iters; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        Check(backend->Attention(*cache, a), "attention");
        wall.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
      }
      std::printf("attention seq %lld batch %3lld  pinned  wall %8.2f us\n",
                  static_cast<long long>(o.attention_seq), static_cast<long long>(batch), Median(wall));
      json += absl::StrCat(first ? "" : ", ", "{\"attention_seq\": ", o.attention_seq, ", \"batch\": ", batch,
                           ", \"io\": \"pinned\", \"direct_results\": ", o.direct_results ? "true" : "false",
                           ", \"wall_us\": ", Median(wall), "}");
      first = false;
    }
  }
  json += "]}\n";
  if (!o.json.empty()) std::ofstream(o.json) << json;
  return 0;
}
