#include "plume/build_info.h"

#include <string_view>

#include "plume_build_commit.h"  // generated: PLUME_BUILD_COMMIT

namespace plume {

#ifndef PLUME_BUILD_SANITIZE
#define PLUME_BUILD_SANITIZE ""
#endif

namespace {

// "Release", "Debug (sanitizers: address,undefined)", ...
constexpr std::string_view kBuildType =
    sizeof(PLUME_BUILD_SANITIZE) > 1
        ? (sizeof(PLUME_BUILD_TYPE) > 1 ? PLUME_BUILD_TYPE " (sanitizers: " PLUME_BUILD_SANITIZE ")"
                                        : "unspecified (sanitizers: " PLUME_BUILD_SANITIZE ")")
        : (sizeof(PLUME_BUILD_TYPE) > 1 ? PLUME_BUILD_TYPE : "unspecified");

}  // namespace

const BuildInfo& GetBuildInfo() {
  static const BuildInfo info{
      PLUME_BUILD_VERSION,
      PLUME_BUILD_COMMIT,
      kBuildType,
#ifdef PLUME_BUILD_CUDA_TOOLKIT
      "cpu,cuda",
      PLUME_BUILD_CUDA_TOOLKIT,
#else
      "cpu",
      "",
#endif
  };
  return info;
}

std::string VersionText(std::string_view program, std::string_view cuda_runtime) {
  const BuildInfo& b = GetBuildInfo();
  std::string out;
  out.append(program).append(" ").append(b.version).append("\n");
  out.append("commit:     ").append(b.commit).append("\n");
  out.append("build type: ").append(b.build_type).append("\n");
  out.append("backends:   ").append(b.backends).append("\n");
  out.append("cuda:       ");
  if (b.cuda.empty()) {
    out.append("none");
  } else {
    out.append("built with ").append(b.cuda);
    if (!cuda_runtime.empty()) out.append(", runtime ").append(cuda_runtime);
  }
  return out;
}

}  // namespace plume
