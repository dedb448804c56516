// End to end through the real binaries: starts plume-server (CPU backend, port
// 0, ready file), drives the `plume` CLI, and checks GEMV results against the
// CPU reference's quantization plus an FP64 matvec.
//
// Paths come from CMake: PLUME_SERVER_BIN and PLUME_CLI_BIN.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "plume/io/array.h"
#include "plume/io/npy.h"
#include "plume/kernels/layout.h"
#include "plume/reference/api.h"
#include "plume/reference/attention.h"
#include "plume/reference/naive.h"
#include "tests/client/cli_fixture.h"
#include "tests/common/attention_reference.h"
#include "tests/common/gemv_reference.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

using namespace plume::cli_testing;

TEST_F(E2eTest, UploadListInfoGemvDelete) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  const int64_t rows = 300, cols = 1000, batch = 8;

  auto health = Cli({"health"});
  EXPECT_EQ(health.exit_code, 0) << health.err;
  EXPECT_NE(health.out.find("SERVING"), std::string::npos) << health.out;

  // The matrix, with rows of different magnitudes so per-row scales matter.
  std::vector<float> w = RandomFloats(static_cast<size_t>(rows * cols), 2024, 1.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const float m = std::ldexp(1.0f, static_cast<int>(r % 7) - 3);
    for (int64_t c = 0; c < cols; ++c) w[r * cols + c] *= m;
  }
  ASSERT_TRUE(plume::io::WriteNpy(File("w.npy"), plume::io::FromFloats({rows, cols}, w.data())).ok());

  auto up = Cli({"upload", "w1", File("w.npy"), "--format", "e4m3", "--scale", "row"});
  ASSERT_EQ(up.exit_code, 0) << up.err;
  EXPECT_NE(up.out.find("rows:             300"), std::string::npos) << up.out;
  EXPECT_NE(up.err.find("100.0%"), std::string::npos) << up.err;  // progress reached the end

  auto list = Cli({"list"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  EXPECT_NE(list.out.find("NAME"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("w1"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("e4m3"), std::string::npos) << list.out;

  auto info = Cli({"info", "w1"});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_NE(info.out.find("cols:             1000"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("scale_mode:       row"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("format:           e4m3"), std::string::npos) << info.out;

  std::vector<float> x = RandomFloats(static_cast<size_t>(batch * cols), 77, 0.5f);
  ASSERT_TRUE(plume::io::WriteNpy(File("x.npy"), plume::io::FromFloats({batch, cols}, x.data())).ok());
  auto gemv = Cli({"gemv", "w1", File("x.npy"), "-o", File("y.npy")});
  ASSERT_EQ(gemv.exit_code, 0) << gemv.err;
  auto y = plume::io::ReadNpy(File("y.npy"));
  ASSERT_TRUE(y.ok()) << y.status();
  ASSERT_EQ(y->dtype, plume::io::ElemType::kF32);
  ASSERT_EQ(y->shape, (std::vector<int64_t>{batch, rows}));
  const std::vector<float> yv = plume::io::ToFloats(*y);

  // Reference: the CPU reference's quantization, then FP64 math.
  const plume::testing::ExpectedGemv expected(w, rows, cols, plume::Fp8Format::kE4M3,
                                              plume::ScaleMode::kRow);
  EXPECT_LE(expected.RelErr(x, batch, yv), 1e-5);

  // Printed form: one line per vector.
  auto printed = Cli({"gemv", "w1", File("x.npy")});
  ASSERT_EQ(printed.exit_code, 0) << printed.err;
  EXPECT_EQ(std::count(printed.out.begin(), printed.out.end(), '\n'), batch);
  EXPECT_EQ(printed.out.front(), '[');

  // A 1-D input gives a 1-D result.
  ASSERT_TRUE(plume::io::WriteNpy(File("x1.npy"), plume::io::FromFloats({cols}, x.data())).ok());
  auto gemv1 = Cli({"gemv", "w1", File("x1.npy"), "-o", File("y1.npy")});
  ASSERT_EQ(gemv1.exit_code, 0) << gemv1.err;
  auto y1 = plume::io::ReadNpy(File("y1.npy"));
  ASSERT_TRUE(y1.ok());
  EXPECT_EQ(y1->shape, (std::vector<int64_t>{rows}));
  const std::vector<float> y1v = plume::io::ToFloats(*y1);
  for (int64_t r = 0; r < rows; ++r) EXPECT_NEAR(y1v[r], yv[r], 1e-4f * (1.0f + std::fabs(yv[r])));

  // Errors: an unknown matrix, then the deleted one.
  auto unknown = Cli({"gemv", "no_such_matrix", File("x.npy")});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_NE(unknown.err.find("error: NOT_FOUND"), std::string::npos) << unknown.err;

  auto del = Cli({"delete", "w1"});
  ASSERT_EQ(del.exit_code, 0) << del.err;
  auto gone = Cli({"info", "w1"});
  EXPECT_NE(gone.exit_code, 0);
  EXPECT_NE(gone.err.find("NOT_FOUND"), std::string::npos) << gone.err;

  // A usage error: exit code 2, nothing sent.
  auto usage = Cli({"upload", "w2", File("w.npy"), "--format", "e3m4"});
  EXPECT_EQ(usage.exit_code, 2) << usage.err;
}

TEST_F(E2eTest, KvUploadAppendAttendListDelete) {
  ASSERT_NO_FATAL_FAILURE(StartServer());
  const int64_t kv_heads = 2, heads = 4, dim = 64, seq = 100, extra = 5, q_len = 3;
  auto save = [&](const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v) {
    ASSERT_TRUE(plume::io::WriteNpy(File(name), plume::io::FromFloats(std::move(shape), v.data())).ok());
  };
  const auto k = RandomFloats(kv_heads * seq * dim, 300, 1.0f), v = RandomFloats(k.size(), 301, 1.0f);
  const auto k2 = RandomFloats(kv_heads * extra * dim, 302, 1.0f), v2 = RandomFloats(k2.size(), 303, 1.0f);
  const auto q = RandomFloats(heads * q_len * dim, 304, 1.0f);
  save("k.npy", {kv_heads, seq, dim}, k);
  save("v.npy", {kv_heads, seq, dim}, v);
  save("k2.npy", {kv_heads, extra, dim}, k2);
  save("v2.npy", {kv_heads, extra, dim}, v2);
  save("q.npy", {1, heads, q_len, dim}, q);

  auto up = Cli({"kv", "upload", "c1", File("k.npy"), File("v.npy"), "--format", "e4m3", "--scale", "block"});
  ASSERT_EQ(up.exit_code, 0) << up.err;
  EXPECT_NE(up.out.find("seq:              100"), std::string::npos) << up.out;
  auto app = Cli({"kv", "append", "c1", File("k2.npy"), File("v2.npy")});
  ASSERT_EQ(app.exit_code, 0) << app.err;
  EXPECT_NE(app.out.find("seq:              105"), std::string::npos) << app.out;

  auto list = Cli({"kv", "list"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  EXPECT_NE(list.out.find("KV_HEADS"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("c1"), std::string::npos) << list.out;
  auto info = Cli({"kv", "info", "c1"});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_NE(info.out.find("scale_mode:       block"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("pages:            2"), std::string::npos) << info.out;

  auto att = Cli({"attend", "c1", File("q.npy"), "-o", File("o.npy"), "--causal", "--scale", "0.1"});
  ASSERT_EQ(att.exit_code, 0) << att.err;
  auto o = plume::io::ReadNpy(File("o.npy"));
  ASSERT_TRUE(o.ok()) << o.status();
  ASSERT_EQ(o->shape, (std::vector<int64_t>{1, heads, q_len, dim}));
  // Expected: the same upload and append through the CPU reference, FP64 attention.
  plume::ref::HostKvCache cache({kv_heads, dim, plume::KvScaleMode::kTokenBlock}, plume::Fp8Format::kE4M3);
  ASSERT_TRUE(cache.Append(k.data(), v.data(), seq));
  ASSERT_TRUE(cache.Append(k2.data(), v2.data(), extra));
  std::vector<double> want(q.size());
  plume::naive::Attention(
      {cache.view(), {q.data(), plume::DType::kF32, 1, heads, q_len, 0.1f, true}}, want.data());
  EXPECT_LE(plume::testing::RelL2(plume::io::ToFloats(*o), want), 1e-5);

  // F16 output, printed: one line per query row.
  auto printed = Cli({"attend", "c1", File("q.npy"), "--output-dtype", "f16"});
  ASSERT_EQ(printed.exit_code, 0) << printed.err;
  EXPECT_EQ(std::count(printed.out.begin(), printed.out.end(), '\n'), heads * q_len);

  // Errors: heads not a multiple of kv_heads, a 3-D query, an unknown cache.
  save("q3.npy", {1, 3, 1, dim}, q);
  auto bad_heads = Cli({"attend", "c1", File("q3.npy")});
  EXPECT_EQ(bad_heads.exit_code, 1);
  EXPECT_NE(bad_heads.err.find("error: INVALID_ARGUMENT"), std::string::npos) << bad_heads.err;
  auto bad_rank = Cli({"attend", "c1", File("k.npy")});
  EXPECT_EQ(bad_rank.exit_code, 2) << bad_rank.err;
  auto unknown = Cli({"attend", "nope", File("q.npy")});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_NE(unknown.err.find("error: NOT_FOUND"), std::string::npos) << unknown.err;

  auto del = Cli({"kv", "delete", "c1"});
  ASSERT_EQ(del.exit_code, 0) << del.err;
  auto gone = Cli({"kv", "info", "c1"});
  EXPECT_EQ(gone.exit_code, 1);
  EXPECT_NE(gone.err.find("NOT_FOUND"), std::string::npos) << gone.err;
}

// ---------------------------------------------------------------- plume bench

// The columns `plume bench` prints, every one of which must be there.
const std::vector<std::string> kBenchColumns = {"REQ/S",  "VEC/S",     "P50_MS", "P90_MS",        "P99_MS",
                                                "ERRORS", "QUEUE_MS",  "KERNEL_MS", "BATCH", "KERNEL_US/VEC",
                                                "WINDOWS", "STABLE"};

class BenchTest : public E2eTest {
 protected:
  void SetUp() override {
    E2eTest::SetUp();
    std::ofstream(File("metrics_pw")) << "bench-pw\n";
    ASSERT_NO_FATAL_FAILURE(StartServer({"--metrics_user=prom", "--metrics_password_file=" + File("metrics_pw")}));
    std::vector<float> w = RandomFloats(static_cast<size_t>(kRows * kCols), 77, 1.0f);
    ASSERT_TRUE(plume::io::WriteNpy(File("w.npy"), plume::io::FromFloats({kRows, kCols}, w.data())).ok());
    auto up = Cli({"upload", "w", File("w.npy")});
    ASSERT_EQ(up.exit_code, 0) << up.err;
  }

  std::vector<std::string> MetricsFlags() const {
    return {"--metrics-url", "http://127.0.0.1:" + std::to_string(metrics_port_) + "/metrics", "--metrics-user",
            "prom", "--metrics-password-file", File("metrics_pw")};
  }

  // Runs `plume bench` with short windows and a cap of about 1.5 s per step;
  // checks the table's columns and returns the parsed --json.
  nlohmann::json Run(std::vector<std::string> args, RunResult* out) {
    args.insert(args.begin(), "bench");
    for (const char* a : {"--window-ms", "150", "--max-windows", "4", "--max-seconds", "1.5", "--json"}) {
      args.push_back(a);
    }
    args.push_back(File("bench.json"));
    *out = Cli(args);
    EXPECT_EQ(out->exit_code, 0) << out->err << out->out;
    for (const auto& col : kBenchColumns) EXPECT_NE(out->out.find(col), std::string::npos) << col << "\n" << out->out;
    auto j = nlohmann::json::parse(Slurp(File("bench.json")), nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << "--json did not parse";
    return j;
  }

  static constexpr int64_t kRows = 256, kCols = 384;
};

// Every step of a JSON report: positive throughput, no errors, ordered
// percentiles, and (when `split`) the server's split present.
void CheckSteps(const nlohmann::json& j, size_t steps, bool gemv_split) {
  ASSERT_TRUE(j.contains("steps") && j["steps"].is_array());
  ASSERT_EQ(j["steps"].size(), steps) << j.dump(1);
  for (const auto& s : j["steps"]) {
    EXPECT_GT(s["requests"].get<int64_t>(), 0) << s.dump(1);
    EXPECT_GT(s["vectors_per_s"].get<double>(), 0) << s.dump(1);
    EXPECT_GT(s["requests_per_s"].get<double>(), 0) << s.dump(1);
    EXPECT_EQ(s["errors"].get<int64_t>(), 0) << s.dump(1);
    const auto& l = s["latency_ms"];
    EXPECT_GT(l["p50"].get<double>(), 0);
    EXPECT_LE(l["p50"].get<double>(), l["p90"].get<double>());
    EXPECT_LE(l["p90"].get<double>(), l["p99"].get<double>());
    EXPECT_LE(l["p99"].get<double>(), l["max"].get<double>());
    EXPECT_GE(s["windows_used"].get<int>(), 1);
    ASSERT_TRUE(s["server"].is_object()) << "no server split: " << s.dump(1);
    if (gemv_split) {
      EXPECT_GE(s["server"]["queue_ms_mean"].get<double>(), 0) << s.dump(1);
      EXPECT_GT(s["server"]["kernel_ms_mean"].get<double>(), 0) << s.dump(1);
      EXPECT_GE(s["server"]["batch_mean"].get<double>(), 1) << s.dump(1);
      EXPECT_GT(s["server"]["kernel_us_per_vector"].get<double>(), 0) << s.dump(1);
      EXPECT_GT(s["server"]["vectors"].get<double>(), 0) << s.dump(1);
    } else {  // Echo runs no kernel and skips the batcher's queues
      EXPECT_TRUE(s["server"]["queue_ms_mean"].is_null()) << s.dump(1);
      EXPECT_TRUE(s["server"]["kernel_ms_mean"].is_null()) << s.dump(1);
      EXPECT_TRUE(s["server"]["batch_mean"].is_null()) << s.dump(1);
    }
  }
}

TEST_F(BenchTest, UnaryAndStreamSweepsReportEveryColumn) {
  RunResult r;
  for (const std::string mode : {"unary", "stream"}) {
    std::vector<std::string> args = {"w", "--mode", mode, "--concurrency", "1,4", "--dtype", "f16"};
    for (const auto& a : MetricsFlags()) args.push_back(a);
    auto j = Run(args, &r);
    EXPECT_EQ(j["method"], mode == "unary" ? "Gemv" : "GemvStream");
    EXPECT_EQ(j["request_bytes"].get<int64_t>(), kCols * 2);  // f16
    EXPECT_EQ(j["result_bytes"].get<int64_t>(), kRows * 2);   // f16 result by default
    CheckSteps(j, 2, true);
    EXPECT_EQ(j["steps"][0]["concurrency"], 1);
    EXPECT_EQ(j["steps"][1]["concurrency"], 4);
    // The table has a row per step.
    EXPECT_NE(r.out.find("\n          1 "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("\n          4 "), std::string::npos) << r.out;
  }
}

TEST_F(BenchTest, EchoCeilingWithTheSamePayload) {
  RunResult r;
  std::vector<std::string> args = {"w", "--echo", "--concurrency", "1,4", "--batch", "3"};
  for (const auto& a : MetricsFlags()) args.push_back(a);
  auto j = Run(args, &r);
  EXPECT_EQ(j["method"], "EchoStream");
  EXPECT_EQ(j["request_bytes"].get<int64_t>(), 3 * kCols * 4);
  EXPECT_EQ(j["result_bytes"].get<int64_t>(), 3 * kCols * 4);
  CheckSteps(j, 2, false);
  const auto& s = j["steps"][1];
  EXPECT_NEAR(s["vectors_per_s"].get<double>(), 3 * s["requests_per_s"].get<double>(), 1e-6);
  // Without a matrix, --cols gives the payload; unary Echo.
  auto k = Run({"--echo", "--cols", "100", "--mode", "unary", "--concurrency", "2"}, &r);
  EXPECT_EQ(k["method"], "Echo");
  EXPECT_EQ(k["request_bytes"].get<int64_t>(), 400);
  EXPECT_GT(k["steps"][0]["vectors_per_s"].get<double>(), 0);
}

TEST_F(BenchTest, OpenLoopRateAndMetricsUnreachable) {
  RunResult r;
  // No metrics credentials: the scrape is refused, the split says n/a.
  auto j = Run({"w", "--rate", "200", "--mode", "unary", "--metrics-url",
                "http://127.0.0.1:" + std::to_string(metrics_port_) + "/metrics"}, &r);
  EXPECT_NE(r.err.find("cannot read /metrics"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("n/a"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("RATE"), std::string::npos) << r.out;
  ASSERT_EQ(j["steps"].size(), 1u);
  EXPECT_TRUE(j["steps"][0]["server"].is_null());
  EXPECT_EQ(j["loop"], "open");
  // An open loop sends at the rate asked, whatever the latency.
  EXPECT_NEAR(j["steps"][0]["requests_per_s"].get<double>(), 200.0, 60.0) << j.dump(1);
}

TEST_F(BenchTest, UsageAndRpcErrors) {
  auto none = Cli({"bench", "--concurrency", "1"});
  EXPECT_EQ(none.exit_code, 2) << none.err;
  auto bad = Cli({"bench", "w", "--concurrency", "0,4"});
  EXPECT_EQ(bad.exit_code, 2) << bad.err;
  auto missing = Cli({"bench", "nope", "--max-seconds", "1"});
  EXPECT_EQ(missing.exit_code, 1) << missing.err;
  EXPECT_NE(missing.err.find("NOT_FOUND"), std::string::npos) << missing.err;
}

}  // namespace
