// What this build of plume is: version (CMake project(VERSION)), git commit,
// build type and the compute backends compiled in. Reported by
// `plume --version`, `plume-server --version` and the plume_build_info
// metric.
#pragma once

#include <string>
#include <string_view>

namespace plume {

struct BuildInfo {
  std::string_view version;     // "0.1.0"
  std::string_view commit;      // short git commit, "-dirty" when built from changed files; or "unknown"
  std::string_view build_type;  // CMAKE_BUILD_TYPE: "Release", "Debug", ...
  std::string_view backends;    // the server's backends compiled in: "cpu" or "cpu,cuda"
  std::string_view cuda;        // CUDA toolkit major.minor built against; "" without CUDA
};

const BuildInfo& GetBuildInfo();

// The text of --version, without a trailing newline:
//   <program> 0.1.0
//   commit:     4d3cd3d
//   build type: Release
//   backends:   cpu,cuda
//   cuda:       built with 12.4, runtime 12.4
// `cuda_runtime` (the CUDA runtime library found at run time, where the
// caller can ask it) is added to the cuda line when given; without CUDA the
// line reads "cuda:       none".
std::string VersionText(std::string_view program, std::string_view cuda_runtime = {});

}  // namespace plume
