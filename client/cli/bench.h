// `plume bench`: a load generator in the manner of Triton's perf_analyzer,
// built on the SDK. It sweeps concurrency (closed loop) or request rates
// (open loop) against GemvStream/Gemv on one matrix, or against Echo for the
// ceiling of the gRPC path, and reports per step throughput, latency
// percentiles, errors, and the server's queue/kernel split and mean batch
// size from /metrics. docs/benchmarks.md, "Serving benchmark: plume bench".
#pragma once

#include <cstdint>
#include <string>

#include "commands.h"

namespace plume::cli {

struct BenchFlags {
  std::string matrix;                       // GEMV target; with --echo, only its cols are used
  std::string mode = "stream";              // stream | unary
  std::string concurrency = "1,8,64,256";   // closed-loop sweep
  std::string rate;                         // open-loop sweep (requests/s); overrides concurrency
  std::string dtype = "f32";                // f32 | f16 | bf16 vectors
  std::string output_dtype;                 // GEMV result dtype; empty: the same as dtype
  int64_t batch = 1;                        // vectors per request
  bool echo = false;                        // measure Echo instead of GEMV
  int64_t cols = 0;                         // --echo without a matrix: vector length
  int window_ms = 1000;
  int max_windows = 10;                     // measured windows per step (warm-up not counted)
  double max_seconds = 30;                  // per step, warm-up included
  double stability = 0.10;                  // last 3 windows within this fraction
  int connections = 4;                      // gRPC connections (one client each)
  int streams = 0;                          // stream mode: streams per step; 0: auto
  int64_t max_outstanding = 4096;           // open loop: requests in flight at most
  uint32_t seed = 1;
  std::string metrics_url;                  // http://host:port/metrics; empty: no server split
  std::string metrics_user;
  std::string metrics_password_file;
  std::string json;                         // write every number here
  bool progress = false;                    // live line even when stderr is not a terminal
};

int RunBench(const GlobalFlags& g, const BenchFlags& f);

}  // namespace plume::cli
