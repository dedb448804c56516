# GPU GEMV benchmark (bench/run_gpu_bench.sh runs it on a GPU machine).
if(PLUME_HAVE_CUDA)
  add_executable(gpu_gemv_bench ${CMAKE_CURRENT_LIST_DIR}/gpu_gemv_bench.cu)
  target_link_libraries(gpu_gemv_bench PRIVATE plume_kernels_cuda plume_kernels_ref CUDA::cublas CUDA::cublasLt)
  target_compile_options(gpu_gemv_bench PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr>)
endif()
# GPU attention benchmark (bench/run_gpu_attention_bench.sh runs it).
if(PLUME_HAVE_CUDA)
  add_executable(gpu_attention_bench ${CMAKE_CURRENT_LIST_DIR}/gpu_attention_bench.cu)
  target_link_libraries(gpu_attention_bench PRIVATE plume_kernels_cuda)
  target_compile_options(gpu_attention_bench PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr>)
endif()
# Multi-GPU GEMV through the backend layer (bench/run_multi_gpu_bench.sh).
if(TARGET plume_cuda_backend)
  add_executable(gpu_multi_bench ${CMAKE_CURRENT_LIST_DIR}/gpu_multi_bench.cc)
  target_include_directories(gpu_multi_bench PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(gpu_multi_bench PRIVATE plume_cuda_backend plume_backends plume_kernels_ref absl::strings)
endif()
