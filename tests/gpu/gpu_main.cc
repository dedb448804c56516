// main() of the GPU test binaries: no device is a failure, never a pass.
#include <cstdio>

#include <cuda_runtime.h>
#include <gtest/gtest.h>

int main(int argc, char** argv) {
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "FAIL: no CUDA device (%s); GPU tests must run on a GPU machine "
                         "(scripts/gpu-test.sh)\n",
                 err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    return 1;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
    std::printf("GPU 0: %s, sm_%d%d, %.1f GiB\n", prop.name, prop.major, prop.minor,
                prop.totalGlobalMem / 1073741824.0);
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
