# server/core unit tests (no gRPC) and in-process server tests through the SDK.
add_executable(core_test server/core_test.cc)
target_link_libraries(core_test PRIVATE plume_core GTest::gtest_main)
gtest_discover_tests(core_test DISCOVERY_TIMEOUT 60)

if(TARGET plume_client)
  add_executable(server_test server/server_test.cc)
  target_link_libraries(server_test PRIVATE plume_grpc_service plume_client plume_core
    prometheus-cpp::pull GTest::gtest_main)
  gtest_discover_tests(server_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)
endif()

# The durable store (issue 7): file format, directory cycle, MatrixService persistence.
add_executable(store_test server/store_test.cc)
target_link_libraries(store_test PRIVATE plume_core GTest::gtest_main)
gtest_discover_tests(store_test DISCOVERY_TIMEOUT 60)

# Auth and TLS (issue 7): certificates are made at test time with openssl.
if(TARGET plume_client)
  add_executable(security_test server/security_test.cc)
  target_link_libraries(security_test PRIVATE plume_grpc_service plume_client plume_core
    GTest::gtest_main)
  gtest_discover_tests(security_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)
endif()
