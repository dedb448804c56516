// A fixture base for tests that run plume-server (PLUME_SERVER_BIN, defined
// by the including test) as a process: a scratch directory per test, the
// server started there on ports 0 and killed at the end; the directory is
// kept, and the server's log printed, when the test failed.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/common/process.h"

namespace plume::testing {

class ServerProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string(info->test_suite_name()) + "_" + std::to_string(getpid()) +
                       "_" + info->name();
    std::replace(name.begin(), name.end(), '/', '_');  // parameterized: "Name/0"
    dir_ = std::filesystem::temp_directory_path() / ("plume_" + name);
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      WaitFor(pid_, std::chrono::seconds(10));
    }
    if (HasFailure()) {
      std::cerr << "server log:\n" << SlurpFile(File("server.err")) << "\nkept " << dir_ << "\n";
    } else {
      std::filesystem::remove_all(dir_);
    }
  }
  std::string File(const std::string& f) const { return (dir_ / f).string(); }

  // Starts plume-server (CPU backend, one compute thread, ports 0) with
  // `flags` after those, and waits until it serves: port_ and metrics_port_.
  void StartServer(const std::vector<std::string>& flags) {
    std::filesystem::remove(File("ready.json"));
    std::vector<std::string> args = {PLUME_SERVER_BIN, "--grpc_address=127.0.0.1:0",
                                     "--metrics_address=127.0.0.1:0", "--backend=cpu",
                                     "--cpu_threads=1", "--ready_file=" + File("ready.json")};
    args.insert(args.end(), flags.begin(), flags.end());
    pid_ = Spawn(args, File("server.out"), File("server.err"));
    ASSERT_GT(pid_, 0);
    std::string why;
    ASSERT_TRUE(WaitForReadyFile(pid_, File("ready.json"), &port_, &metrics_port_,
                                 std::chrono::seconds(60), &why))
        << why << "\n" << SlurpFile(File("server.err"));
  }

  std::filesystem::path dir_;
  pid_t pid_ = -1;
  int port_ = 0;
  int metrics_port_ = 0;
};

}  // namespace plume::testing
