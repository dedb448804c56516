# Kernel tests: FP8/half numerics, packing, scales, GEMV against FP64, ThreadPool,
# the GEMV dispatcher's timing order, and the Hopper GEMV's layouts emulated on
# the CPU (no CUDA needed).
add_executable(plume_kernels_tests
  ${CMAKE_CURRENT_LIST_DIR}/kernels/fp8_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/kernels/half_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/kernels/layout_scales_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/kernels/gemv_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/kernels/thread_pool_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/kernels/gemv_tuner_order_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/kernels/attention_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/emu/gemv_wgmma_layout_test.cc)
target_link_libraries(plume_kernels_tests PRIVATE plume_kernels_ref plume_kernels_naive GTest::gtest_main)
target_include_directories(plume_kernels_tests PRIVATE ${PROJECT_SOURCE_DIR})
gtest_discover_tests(plume_kernels_tests TEST_PREFIX "kernels." DISCOVERY_TIMEOUT 60)
