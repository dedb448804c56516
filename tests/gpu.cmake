# GPU tests: built wherever CUDA is (CI builds them), run only on a GPU
# machine by scripts/gpu-test.sh. They carry the ctest label "gpu"; CI runs
# `ctest -LE gpu`. With no GPU they fail loudly, never pass silently.
if(PLUME_HAVE_CUDA)
  add_executable(gpu_codec_test gpu/gpu_codec_test.cc gpu/gpu_main.cc)
  target_link_libraries(gpu_codec_test PRIVATE plume_kernels_cuda plume_kernels_ref GTest::gtest)
  add_test(NAME gpu_codec_test COMMAND gpu_codec_test)
  set_tests_properties(gpu_codec_test PROPERTIES LABELS gpu)
endif()
if(PLUME_HAVE_CUDA)
  add_executable(gpu_gemv_test gpu/gpu_gemv_test.cc gpu/gpu_main.cc)
  target_link_libraries(gpu_gemv_test PRIVATE plume_kernels_cuda plume_kernels_ref GTest::gtest)
  add_test(NAME gpu_gemv_test COMMAND gpu_gemv_test)
  set_tests_properties(gpu_gemv_test PROPERTIES LABELS gpu)
endif()
