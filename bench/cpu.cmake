# CPU GEMV benchmark (bench/run_cpu_bench.sh runs it next to numpy).
add_executable(plume_cpu_gemv_bench ${CMAKE_CURRENT_LIST_DIR}/cpu_gemv_bench.cc)
target_link_libraries(plume_cpu_gemv_bench PRIVATE plume_kernels_ref)
