// Test helpers that run real binaries: spawn with redirected output, wait
// with a timeout, and start plume-server on port 0 (reading its ready file).
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

extern char** environ;

namespace plume::testing {

inline std::string SlurpFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Starts args[0] with stdin from /dev/null and stdout/stderr to the files.
inline pid_t Spawn(const std::vector<std::string>& args, const std::string& out_path,
                   const std::string& err_path) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  return rc == 0 ? pid : -1;
}

// Waits for `pid` up to `timeout`; kills it (SIGKILL) past that. Returns the
// exit code, or 128 + signal.
inline int WaitFor(pid_t pid, std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  while (true) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0) return -1;
    if (std::chrono::steady_clock::now() > end) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// Reads `{"grpc_port": N, "metrics_port": M}` once plume-server wrote it.
// False (with `why`) if the process exits or `timeout` passes first.
inline bool WaitForReadyFile(pid_t pid, const std::string& ready, int* grpc_port,
                             int* metrics_port, std::chrono::milliseconds timeout,
                             std::string* why) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    int status;
    if (waitpid(pid, &status, WNOHANG) != 0) {
      *why = "plume-server exited early";
      return false;
    }
    if (std::filesystem::exists(ready)) {
      auto j = nlohmann::json::parse(SlurpFile(ready), nullptr, false);
      if (!j.is_discarded() && j.is_object() && j.contains("grpc_port") &&
          j["grpc_port"].is_number_integer() && j.contains("metrics_port") &&
          j["metrics_port"].is_number_integer()) {
        *grpc_port = j["grpc_port"].get<int>();
        *metrics_port = j["metrics_port"].get<int>();
        if (*grpc_port > 0) return true;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  *why = "plume-server wrote no ready file in time";
  return false;
}

}  // namespace plume::testing
