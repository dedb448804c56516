# GPU tests: built wherever CUDA is (CI builds them), run only on a GPU
# machine by scripts/gpu-test.sh. They carry the ctest label "gpu"; CI runs
# `ctest -LE gpu`. With no GPU they fail loudly, never pass silently.
# plume_gpu_test(NAME LIBS...): tests/gpu/NAME.cc with gpu_main.cc, label gpu.
function(plume_gpu_test name)
  add_executable(${name} gpu/${name}.cc gpu/gpu_main.cc)
  target_link_libraries(${name} PRIVATE ${ARGN} GTest::gtest)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES LABELS gpu)
endfunction()
if(PLUME_HAVE_CUDA)
  plume_gpu_test(gpu_codec_test plume_kernels_cuda plume_kernels_ref)
  plume_gpu_test(gpu_gemv_test plume_kernels_cuda plume_kernels_ref)
endif()
if(TARGET plume_cuda_backend)
  plume_gpu_test(gpu_backend_test plume_cuda_backend plume_backends)
  plume_gpu_test(gpu_attention_test plume_cuda_backend plume_backends plume_kernels_cuda plume_kernels_ref
    plume_kernels_naive)
  # The pinned fast path, ShardedBackend over one CudaBackend per GPU.
  plume_gpu_test(gpu_multi_test plume_cuda_backend plume_backends plume_kernels_ref)
  # The completion threads' queue and polling window: no device needed, so CI runs it.
  add_executable(cuda_completions_test server/cuda_completions_test.cc)
  target_include_directories(cuda_completions_test PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(cuda_completions_test PRIVATE plume_cuda_backend GTest::gtest_main)
  add_test(NAME cuda_completions_test COMMAND cuda_completions_test)
endif()
# The delete-under-load measurement (tests/server/delete_under_load_test.cc)
# on the CUDA backend with the serving bench's 8192 x 8192 matrix.
if(TARGET plume_cuda_backend AND TARGET plume_client)
  add_executable(gpu_delete_under_load_test server/delete_under_load_test.cc gpu/gpu_main.cc)
  target_compile_definitions(gpu_delete_under_load_test PRIVATE PLUME_DELETE_TEST_ON_CUDA=1)
  target_link_libraries(gpu_delete_under_load_test PRIVATE plume_grpc_service plume_client
    plume_backends plume_cuda_backend GTest::gtest)
  target_include_directories(gpu_delete_under_load_test PRIVATE ${PROJECT_SOURCE_DIR})
  add_test(NAME gpu_delete_under_load_test COMMAND gpu_delete_under_load_test)
  set_tests_properties(gpu_delete_under_load_test PROPERTIES LABELS gpu)
endif()
# The attention kernels' code run on the CPU in emulation (tests/emu): a CI
# check of their indexing, fragment layouts and masking where there is no
# GPU. Built where CUDA is (it needs the toolkit's cuda_fp16.h); labelled
# "emu", not "gpu", so CI runs it. The test includes the kernels' own headers
# (kernels/cuda/src/attention_*.cuh) after tests/emu/emu_cuda.h, which
# provides the CUDA built-ins and the device helpers on the CPU.
if(PLUME_HAVE_CUDA)
  add_executable(attention_emu_test emu/attention_emu_test.cc)
  target_include_directories(attention_emu_test PRIVATE ${PROJECT_SOURCE_DIR}
                             ${PROJECT_SOURCE_DIR}/kernels/cuda/include
                             ${PROJECT_SOURCE_DIR}/kernels/cuda/src
                             ${CUDAToolkit_INCLUDE_DIRS})
  target_link_libraries(attention_emu_test PRIVATE plume_kernels_ref plume_kernels_naive GTest::gtest_main)
  target_compile_options(attention_emu_test PRIVATE -Wno-unknown-pragmas -Wno-class-memaccess)
  add_test(NAME attention_emu_test COMMAND attention_emu_test)
  set_tests_properties(attention_emu_test PROPERTIES LABELS emu TIMEOUT 300)
endif()

# The Hopper flash prefill's kernels under the same emulation, with the
# Hopper instructions (mbarriers, bulk copies, wgmma) from tests/emu/emu_sm90.h.
if(PLUME_HAVE_CUDA)
  add_executable(prefill_images_emu_test emu/prefill_images_emu_test.cc)
  target_include_directories(prefill_images_emu_test PRIVATE ${PROJECT_SOURCE_DIR}
                             ${PROJECT_SOURCE_DIR}/kernels/cuda/include
                             ${PROJECT_SOURCE_DIR}/kernels/cuda/src
                             ${CUDAToolkit_INCLUDE_DIRS})
  target_link_libraries(prefill_images_emu_test PRIVATE plume_kernels_ref plume_kernels_naive GTest::gtest_main)
  target_compile_options(prefill_images_emu_test PRIVATE -Wno-unknown-pragmas -Wno-class-memaccess)
  add_test(NAME prefill_images_emu_test COMMAND prefill_images_emu_test)
  set_tests_properties(prefill_images_emu_test PROPERTIES LABELS emu TIMEOUT 300)
  # The Hopper decode, the same way.
  add_executable(decode_wgmma_emu_test emu/decode_wgmma_emu_test.cc)
  target_include_directories(decode_wgmma_emu_test PRIVATE ${PROJECT_SOURCE_DIR}
                             ${PROJECT_SOURCE_DIR}/kernels/cuda/include
                             ${PROJECT_SOURCE_DIR}/kernels/cuda/src
                             ${CUDAToolkit_INCLUDE_DIRS})
  target_link_libraries(decode_wgmma_emu_test PRIVATE plume_kernels_ref plume_kernels_naive GTest::gtest_main)
  target_compile_options(decode_wgmma_emu_test PRIVATE -Wno-unknown-pragmas -Wno-class-memaccess)
  add_test(NAME decode_wgmma_emu_test COMMAND decode_wgmma_emu_test)
  set_tests_properties(decode_wgmma_emu_test PROPERTIES LABELS emu TIMEOUT 300)
endif()

# The Hopper GEMV's plan (host code of the sm_90a library): runs on the CPU,
# labelled "emu" so that CI runs it.
if(PLUME_HAVE_CUDA)
  add_executable(gemv_wgmma_plan_test kernels/gemv_wgmma_plan_test.cc)
  target_include_directories(gemv_wgmma_plan_test PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(gemv_wgmma_plan_test PRIVATE plume_kernels_cuda GTest::gtest_main)
  add_test(NAME gemv_wgmma_plan_test COMMAND gemv_wgmma_plan_test)
  set_tests_properties(gemv_wgmma_plan_test PROPERTIES LABELS emu)
endif()
