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
