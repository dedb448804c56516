# Client tests: plume_io, the SDK against an in-process fake server, and (when
# the server and the CPU reference targets exist) the CLI end to end.
add_executable(client_io_test client/io_test.cc)
target_link_libraries(client_io_test PRIVATE plume_io GTest::gtest_main)
gtest_discover_tests(client_io_test DISCOVERY_TIMEOUT 60)

add_executable(client_sdk_test client/sdk_test.cc)
target_include_directories(client_sdk_test PRIVATE ${PROJECT_SOURCE_DIR})
target_link_libraries(client_sdk_test PRIVATE plume_client gRPC::grpc++ GTest::gtest_main)
gtest_discover_tests(client_sdk_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)

# Per-message timeouts of streamed uploads (SDK and `plume upload`) against
# a fake server that reads slowly, stalls or answers late.
if(TARGET plume_cli)
  add_executable(client_upload_timeout_test client/upload_timeout_test.cc)
  target_include_directories(client_upload_timeout_test PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(client_upload_timeout_test PRIVATE plume_client plume_io gRPC::grpc++ GTest::gtest_main)
  target_compile_definitions(client_upload_timeout_test PRIVATE PLUME_CLI_BIN="$<TARGET_FILE:plume_cli>")
  add_dependencies(client_upload_timeout_test plume_cli)
  gtest_discover_tests(client_upload_timeout_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)
endif()

# FP8 checkpoints, client side: scale lookup and layouts, packing, sharded
# indexes, the content hash (generated checkpoints, no server).
add_executable(client_checkpoint_test client/checkpoint_test.cc)
target_include_directories(client_checkpoint_test PRIVATE ${PROJECT_SOURCE_DIR})
target_link_libraries(client_checkpoint_test PRIVATE plume_io nlohmann_json::nlohmann_json GTest::gtest_main)
gtest_discover_tests(client_checkpoint_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 60)

if(TARGET plume-server AND TARGET plume_kernels_ref)
  # FP8 checkpoints end to end: the CLI and the SDK against plume-server.
  add_executable(client_checkpoint_e2e_test client/checkpoint_e2e_test.cc)
  target_include_directories(client_checkpoint_e2e_test PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(client_checkpoint_e2e_test PRIVATE plume_client plume_io plume_kernels_ref
    nlohmann_json::nlohmann_json GTest::gtest_main)
  target_compile_definitions(client_checkpoint_e2e_test PRIVATE
    PLUME_SERVER_BIN="$<TARGET_FILE:plume-server>"
    PLUME_CLI_BIN="$<TARGET_FILE:plume_cli>")
  add_dependencies(client_checkpoint_e2e_test plume-server plume_cli)
  gtest_discover_tests(client_checkpoint_e2e_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)

  add_executable(client_cli_e2e_test client/cli_e2e_test.cc)
  target_include_directories(client_cli_e2e_test PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(client_cli_e2e_test PRIVATE plume_io plume_kernels_ref plume_kernels_naive nlohmann_json::nlohmann_json
    GTest::gtest_main)
  target_compile_definitions(client_cli_e2e_test PRIVATE
    PLUME_SERVER_BIN="$<TARGET_FILE:plume-server>"
    PLUME_CLI_BIN="$<TARGET_FILE:plume_cli>")
  # The test runs the binaries, so building it builds them.
  add_dependencies(client_cli_e2e_test plume-server plume_cli)
  gtest_discover_tests(client_cli_e2e_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 300)

  # The CLI's interface: --json, flag spellings, float64 input, an unreachable server.
  add_executable(client_cli_output_test client/cli_output_test.cc)
  target_include_directories(client_cli_output_test PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(client_cli_output_test PRIVATE plume_io plume_kernels_ref nlohmann_json::nlohmann_json
    GTest::gtest_main)
  target_compile_definitions(client_cli_output_test PRIVATE
    PLUME_SERVER_BIN="$<TARGET_FILE:plume-server>"
    PLUME_CLI_BIN="$<TARGET_FILE:plume_cli>")
  add_dependencies(client_cli_output_test plume-server plume_cli)
  gtest_discover_tests(client_cli_output_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 300)
else()
  message(STATUS "plume: client_cli_e2e_test skipped (needs targets plume-server and plume_kernels_ref)")
endif()

# `plume bench`'s /metrics reader: URL and text-format parsing, GET
# against a real prometheus-cpp Exposer with and without basic auth.
add_executable(client_metrics_scrape_test client/metrics_scrape_test.cc)
target_link_libraries(client_metrics_scrape_test PRIVATE plume_metrics_scrape prometheus-cpp::pull
  GTest::gtest_main)
gtest_discover_tests(client_metrics_scrape_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 60)
