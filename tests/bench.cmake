# The bench's own tools: bench/serving_table.py's before/after comparison.
add_test(NAME bench_serving_table
  COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/bench/serving_table_test.py)
set_tests_properties(bench_serving_table PROPERTIES TIMEOUT 60)
