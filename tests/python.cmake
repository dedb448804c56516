# The Python client's pytest suite (client/python/tests), label "python":
# the build tree's `plume` package (client/python/CMakeLists.txt) against
# real plume-server processes this build made (and the plume CLI, which
# test_model.py compares content hashes with). pytest exits non-zero when it
# collects no tests (5) or the server binary is missing (conftest.py), so
# neither passes as success.
if(TARGET plume-server AND TARGET plume_python AND TARGET plume_cli)
  add_test(NAME python_client
    COMMAND ${PLUME_PYTHON} -m pytest -q -ra -p no:cacheprovider
            ${PROJECT_SOURCE_DIR}/client/python/tests)
  set_tests_properties(python_client PROPERTIES
    LABELS python
    TIMEOUT 600
    ENVIRONMENT "PYTHONPATH=${PLUME_PYTHON_PATH};PLUME_SERVER=$<TARGET_FILE:plume-server>;PLUME_CLI=$<TARGET_FILE:plume_cli>;PYTHONDONTWRITEBYTECODE=1")
else()
  message(FATAL_ERROR "plume: the Python client tests need the targets plume-server, plume_cli and plume_python "
                      "(python3 and grpc_python_plugin: scripts/install-deps.sh)")
endif()
