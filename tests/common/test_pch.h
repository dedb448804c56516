// The headers most test files share, compiled once into a precompiled header
// that every C++ test target reuses (tests/CMakeLists.txt): their parsing
// was a third of a test file's compile time.
#pragma once

#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>
