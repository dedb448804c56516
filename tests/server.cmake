# Under ThreadSanitizer (the tsan preset), the tests labelled tsan carry the
# annotations that make Debian's uninstrumented abseil locks visible to it
# (tests/tsan/absl_sync_annotations.cc says why).
function(plume_tsan_test target)
  if(PLUME_SANITIZE MATCHES "thread")
    target_sources(${target} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/tsan/absl_sync_annotations.cc)
    target_link_libraries(${target} PRIVATE ${CMAKE_DL_LIBS})
  endif()
endfunction()

# server/core unit tests (no gRPC) and in-process server tests through the SDK.
# Streamed uploads: codes, budget, the sharded path, peak host memory.
if(TARGET plume_client)
  add_executable(upload_stream_test server/upload_stream_test.cc)
  target_link_libraries(upload_stream_test PRIVATE plume_grpc_service plume_client plume_backends
    GTest::gtest_main)
  gtest_discover_tests(upload_stream_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120 RUN_SERIAL TRUE)
endif()

add_executable(core_test server/core_test.cc)
target_link_libraries(core_test PRIVATE plume_backends GTest::gtest_main)
gtest_discover_tests(core_test DISCOVERY_TIMEOUT 60)

# server/core includes no protobuf or gRPC header and links no proto target.
add_test(NAME core_no_proto_test
  COMMAND ${CMAKE_COMMAND} -DCORE_DIR=${PROJECT_SOURCE_DIR}/server/core
    "-DCORE_LIBS=$<JOIN:$<TARGET_PROPERTY:plume_core,LINK_LIBRARIES>,|>"
    -P ${CMAKE_CURRENT_SOURCE_DIR}/server/core_no_proto.cmake)
set_tests_properties(core_no_proto_test PROPERTIES TIMEOUT 30)

# The wire <-> core conversion: every field, views that copy nothing,
# results written into the response's own bytes.
add_executable(convert_test server/convert_test.cc)
target_link_libraries(convert_test PRIVATE plume_wire_convert GTest::gtest_main)
gtest_discover_tests(convert_test DISCOVERY_TIMEOUT 60)

if(TARGET plume_client)
  add_executable(server_test server/server_test.cc server/server_attention_test.cc)
  target_link_libraries(server_test PRIVATE plume_grpc_service plume_client plume_backends plume_metrics_scrape
    plume_kernels_naive prometheus-cpp::pull GTest::gtest_main)
  plume_tsan_test(server_test)
  gtest_discover_tests(server_test DISCOVERY_TIMEOUT 60 PROPERTIES LABELS tsan TIMEOUT 120)

  # BLOCK128X128 and content_hash end to end (CPU backend, durable store).
  add_executable(block_scales_test server/block_scales_test.cc)
  target_link_libraries(block_scales_test PRIVATE plume_grpc_service plume_client plume_backends
    GTest::gtest_main)
  gtest_discover_tests(block_scales_test DISCOVERY_TIMEOUT 60)
endif()

add_executable(memory_trimmer_test server/memory_trimmer_test.cc)
target_link_libraries(memory_trimmer_test PRIVATE plume_core GTest::gtest_main)
gtest_discover_tests(memory_trimmer_test DISCOVERY_TIMEOUT 60)

# The batcher: formation, both policies, queue limit, drops, routing; CPU backend.
add_executable(batcher_test server/batcher_test.cc server/batcher_policy_test.cc)
target_link_libraries(batcher_test PRIVATE plume_backends prometheus-cpp::core GTest::gtest_main)
plume_tsan_test(batcher_test)
gtest_discover_tests(batcher_test DISCOVERY_TIMEOUT 60 PROPERTIES LABELS tsan TIMEOUT 120)

# Per-target metrics: the matrix / cache labels, the --metrics_max_targets
# cap ("_other"), series removed with their target; on Metrics and end to end.
if(TARGET plume_client)
  add_executable(target_metrics_test server/target_metrics_test.cc)
  target_link_libraries(target_metrics_test PRIVATE plume_grpc_service plume_client plume_backends
    prometheus-cpp::core GTest::gtest_main)
  gtest_discover_tests(target_metrics_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)
endif()

# Batching end to end: 32 streaming clients under both policies, a lone
# client's queue time, per-upload options, a full queue. Serial: the lone
# client's queue time is a latency bound, and a test beside it on the same
# cores would measure the scheduler.
if(TARGET plume_client)
  add_executable(batching_e2e_test server/batching_e2e_test.cc)
  target_link_libraries(batching_e2e_test PRIVATE plume_grpc_service plume_client plume_backends
    prometheus-cpp::core GTest::gtest_main)
  plume_tsan_test(batching_e2e_test)
  gtest_discover_tests(batching_e2e_test DISCOVERY_TIMEOUT 60
    PROPERTIES LABELS tsan TIMEOUT 120 RUN_SERIAL TRUE)
endif()

# The registries (matrices, K/V caches) and a delete's file removal outside
# their lock: reservations, budget, deletes racing Gets and re-uploads.
add_executable(registry_test server/registry_test.cc)
target_link_libraries(registry_test PRIVATE plume_backends GTest::gtest_main)
plume_tsan_test(registry_test)
gtest_discover_tests(registry_test DISCOVERY_TIMEOUT 60 PROPERTIES LABELS tsan TIMEOUT 120)

# The durable store: file format, directory cycle, MatrixService persistence.
add_executable(store_test server/store_test.cc)
target_link_libraries(store_test PRIVATE plume_backends GTest::gtest_main)
gtest_discover_tests(store_test DISCOVERY_TIMEOUT 60)

# The store writes quantized matrices from bounded slices of rows, byte for
# byte the whole-matrix file; the backends' ranged reads.
add_executable(store_slices_test server/store_slices_test.cc)
target_link_libraries(store_slices_test PRIVATE plume_backends GTest::gtest_main)
plume_tsan_test(store_slices_test)
gtest_discover_tests(store_slices_test DISCOVERY_TIMEOUT 60 PROPERTIES LABELS tsan TIMEOUT 120)

# Pre-packed uploads streamed into the resident matrix and the store's file.
add_executable(prepacked_stream_test server/prepacked_stream_test.cc)
target_link_libraries(prepacked_stream_test PRIVATE plume_backends GTest::gtest_main)
gtest_discover_tests(prepacked_stream_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)

# Auth and TLS: certificates are made at test time with openssl.
if(TARGET plume_client)
  add_executable(security_test server/security_test.cc)
  target_link_libraries(security_test PRIVATE plume_grpc_service plume_client plume_backends
    GTest::gtest_main)
  gtest_discover_tests(security_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)
endif()

# plume-server as a process: drain, kill -9 during uploads,
# corrupt store files, metrics basic auth.
if(TARGET plume_client AND TARGET plume-server)
  add_executable(process_test server/process_test.cc)
  target_include_directories(process_test PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(process_test PRIVATE plume_client plume_kernels_ref plume_metrics_scrape
    gRPC::grpc++ absl::strings nlohmann_json::nlohmann_json GTest::gtest_main)
  target_compile_definitions(process_test PRIVATE PLUME_SERVER_BIN="$<TARGET_FILE:plume-server>")
  add_dependencies(process_test plume-server)
  gtest_discover_tests(process_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 300)
endif()

# The operator's view: `plume-server --version`, `plume --version`,
# `plume-server --help`, and plume_build_info and process_* on /metrics
# (the binaries as processes; the collector and registry in process).
if(TARGET plume-server AND TARGET plume_cli)
  add_executable(build_info_test server/build_info_test.cc)
  target_include_directories(build_info_test PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(build_info_test PRIVATE plume_core plume_build_info plume_metrics_scrape
    prometheus-cpp::core nlohmann_json::nlohmann_json GTest::gtest_main)
  target_compile_definitions(build_info_test PRIVATE
    PLUME_SERVER_BIN="$<TARGET_FILE:plume-server>"
    PLUME_CLI_BIN="$<TARGET_FILE:plume_cli>"
    PLUME_EXPECTED_VERSION="${PROJECT_VERSION}"
    PLUME_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
    PLUME_EXPECT_CUDA=$<BOOL:${PLUME_HAVE_CUDA}>)
  add_dependencies(build_info_test plume-server plume_cli)
  gtest_discover_tests(build_info_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)
endif()

# Bad-input sweep, delete during 1,000 in-flight GEMVs, expired requests, stream limit.
if(TARGET plume_client)
  add_executable(reliability_test server/reliability_test.cc)
  target_link_libraries(reliability_test PRIVATE plume_grpc_service plume_client plume_backends
    prometheus-cpp::core GTest::gtest_main)
  gtest_discover_tests(reliability_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 180)
endif()

# A delete during load does not stall GEMVs: 64 GemvStream clients' p99 while
# another matrix is deleted and uploaded in a loop (durable store), against
# the same calls and disk work done outside the server, in alternating 0.5 s
# windows (about 15 s; up to 3 rounds, 45 s, on a busy machine). Serial: a
# latency bound.
if(TARGET plume_client)
  add_executable(delete_under_load_test server/delete_under_load_test.cc)
  target_link_libraries(delete_under_load_test PRIVATE plume_grpc_service plume_client plume_backends
    GTest::gtest_main)
  gtest_discover_tests(delete_under_load_test DISCOVERY_TIMEOUT 60
    PROPERTIES TIMEOUT 120 RUN_SERIAL TRUE)
endif()

# Soak: 10^6 small GEMVs, RSS growth < 5%. Label "soak"; not built
# under sanitizers, whose allocators keep freed memory by design.
if(TARGET plume_client AND NOT PLUME_SANITIZE)
  add_executable(soak_test server/soak_test.cc)
  target_link_libraries(soak_test PRIVATE plume_grpc_service plume_client plume_backends GTest::gtest_main)
  add_test(NAME soak_test COMMAND soak_test)
  # RUN_SERIAL: with other tests loading the 2 cores, malloc arenas grow with
  # thread contention and the ~21 MiB baseline swings by more than 5%.
  set_tests_properties(soak_test PROPERTIES LABELS soak TIMEOUT 600 RUN_SERIAL TRUE)
endif()

# K/V caches in the durable store: .pkv format, append log,
# compaction, restart, quarantine.
add_executable(kv_store_file_test server/kv_store_file_test.cc)
target_link_libraries(kv_store_file_test PRIVATE plume_backends GTest::gtest_main)
gtest_discover_tests(kv_store_file_test DISCOVERY_TIMEOUT 60)

# Multi-device placement: ShardedBackend over CpuBackend children.
add_executable(sharded_backend_test server/sharded_backend_test.cc)
target_include_directories(sharded_backend_test PRIVATE ${PROJECT_SOURCE_DIR})
target_link_libraries(sharded_backend_test PRIVATE plume_backends GTest::gtest_main)
gtest_discover_tests(sharded_backend_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)
# DiagnosticsService Echo/EchoStream: byte-exact round trip, size
# limit, token, method labels.
if(TARGET plume_client)
  add_executable(echo_test server/echo_test.cc)
  target_link_libraries(echo_test PRIVATE plume_grpc_service plume_client plume_backends
    prometheus-cpp::core GTest::gtest_main)
  gtest_discover_tests(echo_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)
endif()

# Streams whose client stops reading and cancels: SIGTERM still exits
# within --drain_timeout (plume-server as a process).
if(TARGET plume_client AND TARGET plume-server)
  add_executable(drain_test server/drain_test.cc)
  target_include_directories(drain_test PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(drain_test PRIVATE plume_client plume_metrics_scrape gRPC::grpc++
    nlohmann_json::nlohmann_json GTest::gtest_main)
  target_compile_definitions(drain_test PRIVATE PLUME_SERVER_BIN="$<TARGET_FILE:plume-server>")
  add_dependencies(drain_test plume-server)
  gtest_discover_tests(drain_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)
endif()

# The stream reactor on cancel, in process (ThreadSanitizer and ASan see it):
# a stalled, cancelled GemvStream or EchoStream finishes and Shutdown returns.
if(TARGET plume_client)
  add_executable(stream_cancel_test server/stream_cancel_test.cc)
  target_link_libraries(stream_cancel_test PRIVATE plume_grpc_service plume_client plume_backends
    GTest::gtest_main)
  plume_tsan_test(stream_cancel_test)
  gtest_discover_tests(stream_cancel_test DISCOVERY_TIMEOUT 60 PROPERTIES LABELS tsan TIMEOUT 120)
endif()

# Validators at the edges of their arithmetic: response sizes (the 2^32
# boundary) and upload byte counts with the limits at their maximum.
add_executable(validation_limits_test server/validation_limits_test.cc)
target_link_libraries(validation_limits_test PRIVATE plume_backends GTest::gtest_main)
gtest_discover_tests(validation_limits_test DISCOVERY_TIMEOUT 60)

# Admission on the real server, in process: oversized responses refused
# before any work.
if(TARGET plume_client)
  add_executable(admission_test server/admission_test.cc)
  target_link_libraries(admission_test PRIVATE plume_grpc_service plume_client plume_backends
    prometheus-cpp::core GTest::gtest_main)
  gtest_discover_tests(admission_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)
endif()

# Request bytes that do not parse, sent raw to every method: INVALID_ARGUMENT
# naming the method, streams end with it after their good results.
if(TARGET plume_client)
  add_executable(malformed_request_test server/malformed_request_test.cc)
  target_link_libraries(malformed_request_test PRIVATE plume_grpc_service plume_backends
    GTest::gtest_main)
  gtest_discover_tests(malformed_request_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)
endif()

# A long mixed-fault run against plume-server as a process (label chaos):
# random clients (fixed seeds), SIGTERM at the end, restart and check. 45 s
# of faults in a normal build; 12 s under sanitizers, without the RSS check.
if(TARGET plume_client AND TARGET plume-server)
  add_executable(chaos_test server/chaos_test.cc)
  target_include_directories(chaos_test PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(chaos_test PRIVATE plume_client plume_kernels_ref gRPC::grpc++
    nlohmann_json::nlohmann_json GTest::gtest_main)
  target_compile_definitions(chaos_test PRIVATE PLUME_SERVER_BIN="$<TARGET_FILE:plume-server>")
  if(PLUME_SANITIZE)
    target_compile_definitions(chaos_test PRIVATE PLUME_CHAOS_SANITIZED)
  endif()
  add_dependencies(chaos_test plume-server)
  add_test(NAME chaos_test COMMAND chaos_test)
  # RUN_SERIAL: the RSS comparison and the drain bound want the cores.
  set_tests_properties(chaos_test PROPERTIES LABELS chaos TIMEOUT 240 RUN_SERIAL TRUE)
endif()
