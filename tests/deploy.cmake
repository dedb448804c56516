# deploy/ tests (label "deploy"): the NVML exporter against a fake NVML; the
# Grafana dashboard's PromQL evaluated by a real Prometheus (Debian package
# `prometheus`) scraping a live plume-server driven by the CLI; static checks
# of the manifests; the SDK's round_robin over replicas. The image build
# itself is deploy/build-image.sh, not a ctest (it takes minutes).
add_library(plume_fake_nvml MODULE deploy/fake_nvml.c)
set_target_properties(plume_fake_nvml PROPERTIES PREFIX "lib" OUTPUT_NAME "fake-nvidia-ml")

add_executable(gpu_utilization_test deploy/gpu_utilization_test.cc)
target_link_libraries(gpu_utilization_test PRIVATE plume_backends GTest::gtest_main)
target_compile_definitions(gpu_utilization_test PRIVATE FAKE_NVML_LIB="$<TARGET_FILE:plume_fake_nvml>")
add_dependencies(gpu_utilization_test plume_fake_nvml)
gtest_discover_tests(gpu_utilization_test DISCOVERY_TIMEOUT 60 PROPERTIES LABELS deploy)

if(TARGET plume-server AND TARGET plume_cli)
  # Debian's python3, which has python3-numpy (scripts/install-deps.sh), as in scripts/demo.sh.
  add_test(NAME deploy_prometheus_dashboard
    COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/deploy/prometheus_dashboard_test.py
      --repo ${PROJECT_SOURCE_DIR}
      --server $<TARGET_FILE:plume-server>
      --cli $<TARGET_FILE:plume_cli>
      --fake-nvml $<TARGET_FILE:plume_fake_nvml>)
  set_tests_properties(deploy_prometheus_dashboard PROPERTIES LABELS deploy TIMEOUT 180)
endif()

# The SDK's round_robin policy over several replicas (the headless Service
# pattern of deploy/k8s/).
if(TARGET plume_client)
  add_executable(client_lb_test client/lb_test.cc)
  target_link_libraries(client_lb_test PRIVATE plume_client gRPC::grpc++ GTest::gtest_main)
  gtest_discover_tests(client_lb_test DISCOVERY_TIMEOUT 60 PROPERTIES LABELS deploy TIMEOUT 60
    ENVIRONMENT "LSAN_OPTIONS=suppressions=${CMAKE_CURRENT_SOURCE_DIR}/deploy/lsan.supp")
endif()

add_test(NAME deploy_manifests
  COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/deploy/manifests_test.py ${PROJECT_SOURCE_DIR})
set_tests_properties(deploy_manifests PROPERTIES LABELS deploy TIMEOUT 30)

# compose.yaml as docker-compose 1.29 (Debian bookworm's) reads it, with and
# without the gpu profile.
add_test(NAME deploy_compose_config
  COMMAND /bin/sh -c "docker-compose -f deploy/compose.yaml config -q && docker-compose -f deploy/compose.yaml --profile gpu config -q"
  WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
set_tests_properties(deploy_compose_config PROPERTIES LABELS deploy TIMEOUT 60)
