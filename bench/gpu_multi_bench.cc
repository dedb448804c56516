// Multi-GPU GEMV benchmark, through the backend layer the server
// uses: one CudaBackend on GPU 0 against a ShardedBackend that row-shards the
// same matrix over every GPU (--devices), and, for throughput, a replicated
// copy driven by one thread per GPU.
//
// Each timed call is Backend::Gemv end to end on the calling thread: the
// activations' copy to the device, the kernel(s) and the results' copy back,
// with the activations and results in pinned buffers from
// Backend::AllocateHostBuffer (the batcher's way) or, with --heap, plain heap
// memory (the staging path). The matrix is random E4M3 codes with ROW scales
// (FromPacked); its resident bytes over the median call time is the weight
// bandwidth. bench/run_multi_gpu_bench.sh runs it on a GPU machine.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "plume/reference/api.h"
#include "bench/backend_bench_io.h"
#include "server/backends/cuda/cuda_backend.h"
#include "server/backends/sharded/sharded_backend.h"

namespace {

using namespace plume;
using namespace plume::core;
using plume::bench::Check;
using plume::bench::Die;
using plume::bench::Io;
using plume::bench::MakeIo;

struct Options {
  int64_t rows = 32768, cols = 16384;
  std::vector<int64_t> batches = {1, 16};
  int iters = 300;
  int warmup = 30;
  std::string devices = "all";
  bool heap = false;  // also time the staging path (heap activations/results)
  std::string json;
};

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Die(absl::StrCat(a, " needs a value"));
      return argv[++i];
    };
    auto number = [&]() {
      int64_t v = 0;
      if (!absl::SimpleAtoi(value(), &v) || v <= 0) Die(absl::StrCat(a, " needs a positive number"));
      return v;
    };
    if (a == "--rows") o.rows = number();
    else if (a == "--cols") o.cols = number();
    else if (a == "--iters") o.iters = static_cast<int>(number());
    else if (a == "--warmup") o.warmup = static_cast<int>(number());
    else if (a == "--devices") o.devices = value();
    else if (a == "--json") o.json = value();
    else if (a == "--heap") o.heap = true;
    else if (a == "--batches") {
      o.batches.clear();
      for (absl::string_view b : absl::StrSplit(value(), ',')) {
        int64_t v = 0;
        if (!absl::SimpleAtoi(b, &v) || v <= 0) Die("--batches: a list of positive numbers");
        o.batches.push_back(v);
      }
    } else {
      Die(absl::StrCat("unknown argument ", a,
                       "; flags: --rows --cols --batches 1,16 --iters --warmup --devices all|0,1 "
                       "--heap --json PATH"));
    }
  }
  return o;
}

// Random E4M3 codes (no NaN codes; padding zero) and ROW scales.
void RandomPacked(const PackedLayout& l, std::vector<uint32_t>* words, std::vector<float>* scales) {
  words->assign(static_cast<size_t>(l.total_words()), 0);
  scales->assign(static_cast<size_t>(l.rows), 0.0f);
  std::mt19937_64 rng(7);
  auto* bytes = reinterpret_cast<uint8_t*>(words->data());
  for (int64_t r = 0; r < l.rows; ++r) {
    uint8_t* row = bytes + r * l.padded_cols();
    for (int64_t c = 0; c < l.cols; c += 8) {
      uint64_t v = rng();
      for (int k = 0; k < 8 && c + k < l.cols; ++k, v >>= 8) {
        uint8_t code = static_cast<uint8_t>(v);
        if ((code & 0x7f) == 0x7f) code ^= 0x01;  // not NaN
        row[c + k] = code;
      }
    }
    (*scales)[static_cast<size_t>(r)] = 1.0f / 256 + static_cast<float>(r % 7) / 1024;
  }
}

struct Result {
  std::string config;
  int64_t batch = 0;
  int devices = 0;
  int threads = 1;
  double median_us = 0, p10_us = 0, p90_us = 0;
  double weight_gbps = 0;  // resident bytes per call (x calls per second) / 1e9
};

// Times fn() `iters` times after `warmup` calls: median and percentiles in us.
template <class Fn>
void Time(const Options& o, Fn fn, Result* r) {
  for (int i = 0; i < o.warmup; ++i) fn();
  std::vector<double> us(static_cast<size_t>(o.iters));
  for (auto& t : us) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    t = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  }
  std::sort(us.begin(), us.end());
  r->median_us = us[us.size() / 2];
  r->p10_us = us[us.size() / 10];
  r->p90_us = us[us.size() * 9 / 10];
}

}  // namespace

int main(int argc, char** argv) {
  plume::bench::g_bench_name = "gpu_multi_bench";
  const Options o = Parse(argc, argv);
  const int visible = CudaDeviceCount();
  const std::vector<int> ids = Check(ParseDeviceList(o.devices, visible), "--devices");
  std::printf("gpu_multi_bench: %lldx%lld E4M3 ROW, F16 activations, F32 results, %d iterations "
              "(median), devices %s of %d visible\n",
              static_cast<long long>(o.rows), static_cast<long long>(o.cols), o.iters,
              absl::StrJoin(ids, ",").c_str(), visible);
  std::vector<std::string> names;
  std::vector<std::unique_ptr<Backend>> kids;
  for (int id : ids) {
    CudaBackendOptions co;
    co.device = id;
    auto cb = Check(CudaBackend::Create(co), "creating a CUDA backend");
    std::printf("  %s\n", cb->description().c_str());
    kids.push_back(std::move(cb));
  }
  CudaBackendOptions co0;
  co0.device = ids[0];
  auto single = Check(CudaBackend::Create(co0), "creating a CUDA backend");
  ShardedBackendOptions so;
  so.device_ids = ids;
  auto multi = Check(ShardedBackend::Create(std::move(kids), so), "creating the sharded backend");

  MatrixShape shape{o.rows, o.cols, Fp8Format::kE4M3, ScaleMode::kRow, true};
  std::vector<uint32_t> words;
  std::vector<float> scales;
  RandomPacked(shape.layout(), &words, &scales);
  const double resident = static_cast<double>(shape.resident_bytes());
  std::printf("resident bytes %.0f (%.1f MiB)\n", resident, resident / 1048576.0);

  shape.placement = Placement::kSingle;
  auto w_single = Check(single->FromPacked(shape, words.data(), scales.data()), "single-GPU matrix");
  shape.placement = Placement::kSharded;
  auto w_sharded = Check(multi->FromPacked(shape, words.data(), scales.data()), "sharded matrix");
  const MatrixPlacement where = multi->PlacementOf(*w_sharded);
  std::printf("sharded: %zu shards, rows %s on devices %s\n", where.shard_rows.size(),
              absl::StrJoin(where.shard_rows, "+").c_str(), absl::StrJoin(where.devices, ",").c_str());
  std::unique_ptr<BackendMatrix> w_replicated;
  if (ids.size() > 1) {
    shape.placement = Placement::kReplicated;
    auto r = multi->FromPacked(shape, words.data(), scales.data());
    if (r.ok()) {
      w_replicated = std::move(*r);
    } else {
      std::printf("replicated: skipped (%s)\n", r.status().ToString().c_str());
    }
  }

  std::vector<Result> results;
  auto report = [&](Result r) {
    r.weight_gbps = resident * r.threads / (r.median_us * 1e-6) / 1e9;
    std::printf("%-26s batch %3lld  devices %d  threads %d  median %9.1f us  p10 %9.1f  p90 %9.1f  "
                "weights %8.1f GB/s\n",
                r.config.c_str(), static_cast<long long>(r.batch), r.devices, r.threads, r.median_us,
                r.p10_us, r.p90_us, r.weight_gbps);
    std::fflush(stdout);
    results.push_back(r);
    return r;
  };

  // Sharded results agree with the single GPU's (both are checked against
  // the CPU backend by gpu_multi_test; here a guard against timing garbage).
  {
    // The same activations (MakeIo's fixed seed).
    Io a = MakeIo(*single, o.rows, o.cols, 1, false), b = MakeIo(*multi, o.rows, o.cols, 1, false);
    Check(single->Gemv(*w_single, a.args), "single-GPU GEMV");
    Check(multi->Gemv(*w_sharded, b.args), "sharded GEMV");
    const auto* ya = static_cast<const float*>(a.args.y);
    const auto* yb = static_cast<const float*>(b.args.y);
    double diff = 0, norm = 0;
    for (int64_t r = 0; r < o.rows; ++r) {
      diff = std::max(diff, std::abs(double(ya[r]) - double(yb[r])));
      norm = std::max(norm, std::abs(double(ya[r])));
    }
    std::printf("check: sharded vs single GPU, max |diff| / max |y| = %.3g\n", diff / norm);
    if (!(diff <= 1e-3 * norm)) Die("sharded and single-GPU results differ");
  }

  std::vector<std::pair<double, int64_t>> ratios;
  for (int64_t batch : o.batches) {
    for (bool heap : o.heap ? std::vector<bool>{false, true} : std::vector<bool>{false}) {
      const char* io_name = heap ? "heap" : "pinned";
      Io s_io = MakeIo(*single, o.rows, o.cols, batch, heap);
      Result r1;
      r1.config = absl::StrCat("single GPU, ", io_name);
      r1.batch = batch;
      r1.devices = 1;
      Time(o, [&] { Check(single->Gemv(*w_single, s_io.args), "single-GPU GEMV"); }, &r1);
      r1 = report(r1);

      Io m_io = MakeIo(*multi, o.rows, o.cols, batch, heap);
      Result r2;
      r2.config = absl::StrCat("row-sharded, ", io_name);
      r2.batch = batch;
      r2.devices = static_cast<int>(where.devices.size());
      Time(o, [&] { Check(multi->Gemv(*w_sharded, m_io.args), "sharded GEMV"); }, &r2);
      r2 = report(r2);
      std::printf("  -> sharded / single weight bandwidth: %.2fx (target >= 1.8x on 2 H200s)\n",
                  r2.weight_gbps / r1.weight_gbps);
      if (!heap) ratios.push_back({r2.weight_gbps / r1.weight_gbps, batch});
    }
    if (w_replicated != nullptr) {
      // Throughput: one thread per device, each with its own buffers.
      const int nt = static_cast<int>(ids.size());
      std::vector<Io> ios;
      for (int t = 0; t < nt; ++t) ios.push_back(MakeIo(*multi, o.rows, o.cols, batch, false));
      Result r3;
      r3.config = "replicated, pinned";
      r3.batch = batch;
      r3.devices = nt;
      r3.threads = nt;
      // nt threads, each making warmup + iters calls; the replicas share
      // them out (fewest in flight). Time per round of nt calls.
      std::atomic<int> ready{0};
      std::atomic<bool> go{false};
      std::chrono::steady_clock::time_point t0;
      std::vector<std::thread> th;
      for (int t = 0; t < nt; ++t) {
        th.emplace_back([&, t] {
          for (int i = 0; i < o.warmup; ++i) Check(multi->Gemv(*w_replicated, ios[t].args), "replicated GEMV");
          ready.fetch_add(1);
          while (!go.load()) std::this_thread::yield();
          for (int i = 0; i < o.iters; ++i) Check(multi->Gemv(*w_replicated, ios[t].args), "replicated GEMV");
        });
      }
      while (ready.load() < nt) std::this_thread::yield();
      t0 = std::chrono::steady_clock::now();
      go.store(true);
      for (auto& x : th) x.join();
      const double round_us =
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / o.iters;
      r3.median_us = r3.p10_us = r3.p90_us = round_us;  // mean time per round of nt calls
      report(r3);
    }
  }

  if (!o.json.empty()) {
    std::ofstream f(o.json);
    f << "{\n  \"rows\": " << o.rows << ", \"cols\": " << o.cols
      << ", \"format\": \"e4m3\", \"scale_mode\": \"row\", \"x_dtype\": \"f16\", \"y_dtype\": \"f32\",\n"
      << "  \"resident_bytes\": " << static_cast<int64_t>(resident) << ", \"iters\": " << o.iters
      << ", \"devices\": [" << absl::StrJoin(ids, ", ") << "],\n  \"results\": [\n";
    for (size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      f << "    {\"config\": \"" << r.config << "\", \"batch\": " << r.batch << ", \"devices\": " << r.devices
        << ", \"threads\": " << r.threads << ", \"median_us\": " << r.median_us << ", \"p10_us\": " << r.p10_us
        << ", \"p90_us\": " << r.p90_us << ", \"weight_gbps\": " << r.weight_gbps << "}"
        << (i + 1 < results.size() ? "," : "") << "\n";
    }
    f << "  ],\n  \"sharded_over_single\": {";
    for (size_t i = 0; i < ratios.size(); ++i) {
      f << (i ? ", " : "") << "\"batch_" << ratios[i].second << "\": " << ratios[i].first;
    }
    f << "}\n}\n";
    if (!f.good()) Die(absl::StrCat("cannot write ", o.json));
    std::printf("wrote %s\n", o.json.c_str());
  }
  return 0;
}
