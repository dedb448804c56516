// Compiles tests/common/test_pch.h into the tests' precompiled header; the
// program itself (gtest_main with no tests) is never run.
