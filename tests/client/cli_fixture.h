// The fixture of the CLI's end-to-end tests (cli_e2e_test.cc,
// cli_output_test.cc): a temporary folder, plume-server started on port 0
// (CPU backend, ready file) and stopped with SIGTERM, and the `plume` binary
// run against it. Paths come from CMake: PLUME_SERVER_BIN and PLUME_CLI_BIN.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "tests/common/gemv_reference.h"
#include "tests/common/process.h"

namespace plume::cli_testing {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

using plume::testing::Spawn;
using plume::testing::WaitFor;

inline std::string Slurp(const std::string& path) { return plume::testing::SlurpFile(path); }

struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

class E2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("plume_cli_e2e_" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    StopServer();
    if (!HasFailure()) {
      std::error_code ec;
      fs::remove_all(dir_, ec);
    } else {
      std::cerr << "server log:\n" << Slurp(File("server.err")) << Slurp(File("server.out"));
      std::cerr << "files kept in " << dir_ << "\n";
    }
  }

  std::string File(const std::string& name) const { return (dir_ / name).string(); }

  // Starts plume-server and waits for its ready file.
  void StartServer(const std::vector<std::string>& extra_flags = {}) {
    const std::string ready = File("ready.json");
    std::vector<std::string> args = {PLUME_SERVER_BIN, "--grpc_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0",
                                     "--backend=cpu", "--ready_file=" + ready, "--store_dir=" + File("store")};
    args.insert(args.end(), extra_flags.begin(), extra_flags.end());
    server_pid_ = Spawn(args, File("server.out"), File("server.err"));
    ASSERT_GT(server_pid_, 0) << "cannot start " << PLUME_SERVER_BIN;
    std::string why;
    ASSERT_TRUE(plume::testing::WaitForReadyFile(server_pid_, ready, &port_, &metrics_port_, 30s, &why))
        << why << ":\n" << Slurp(File("server.err"));
  }

  // SIGTERM (the server drains), then wait; SIGKILL after 20 s. Runs from
  // TearDown, so the server goes away even when assertions fail.
  void StopServer() {
    if (server_pid_ <= 0) return;
    kill(server_pid_, SIGTERM);
    const int code = WaitFor(server_pid_, 20s);
    EXPECT_EQ(code, 0) << "plume-server did not exit cleanly on SIGTERM";
    server_pid_ = -1;
  }

  RunResult Cli(std::vector<std::string> args) { return CliAt("127.0.0.1:" + std::to_string(port_), std::move(args)); }

  // The CLI against `address` (with --timeout 60).
  RunResult CliAt(const std::string& address, std::vector<std::string> args) {
    std::vector<std::string> full = {PLUME_CLI_BIN, "--server", address, "--timeout", "60"};
    full.insert(full.end(), args.begin(), args.end());
    RunResult r;
    const pid_t pid = Spawn(full, File("cli.out"), File("cli.err"));
    if (pid <= 0) return r;
    r.exit_code = WaitFor(pid, 120s);
    r.out = Slurp(File("cli.out"));
    r.err = Slurp(File("cli.err"));
    return r;
  }

  fs::path dir_;
  pid_t server_pid_ = -1;
  int port_ = 0;
  int metrics_port_ = 0;
};

inline std::vector<float> RandomFloats(size_t n, uint32_t seed, float scale) {
  return plume::testing::RandomNormal(static_cast<int64_t>(n), seed, scale);
}

}  // namespace plume::cli_testing
