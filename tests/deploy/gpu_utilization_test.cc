// GpuUtilizationCollector against a fake NVML library (FAKE_NVML_LIB, built
// from fake_nvml.c) and against libraries that are not NVML at all.
#include "server/core/gpu_utilization.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "prometheus/metric_family.h"
#include "prometheus/text_serializer.h"

namespace plume::core {
namespace {

class GpuUtilizationTest : public ::testing::Test {
 protected:
  void TearDown() override {
    unsetenv("FAKE_NVML_MODE");
    unsetenv("FAKE_NVML_SHUTDOWN_FILE");
  }
};

TEST_F(GpuUtilizationTest, MissingLibraryMeansNoCollectorAndSaysWhy) {
  std::string why;
  EXPECT_EQ(GpuUtilizationCollector::Create("libplume-no-such-nvml.so.1", &why), nullptr);
  EXPECT_NE(why.find("cannot load libplume-no-such-nvml.so.1"), std::string::npos) << why;
}

TEST_F(GpuUtilizationTest, EmptyLibraryNameTurnsItOff) {
  std::string why;
  EXPECT_EQ(GpuUtilizationCollector::Create("", &why), nullptr);
  EXPECT_EQ(why, "no NVML library given");
}

TEST_F(GpuUtilizationTest, LibraryWithoutNvmlSymbolsIsRejected) {
  std::string why;
  EXPECT_EQ(GpuUtilizationCollector::Create("libm.so.6", &why), nullptr);
  EXPECT_NE(why.find("lacks nvmlInit_v2"), std::string::npos) << why;
}

TEST_F(GpuUtilizationTest, ExportsOneRatioPerGpu) {
  std::string why;
  auto c = GpuUtilizationCollector::Create(FAKE_NVML_LIB, &why);
  ASSERT_NE(c, nullptr) << why;
  EXPECT_EQ(c->num_devices(), 2);
  const auto families = c->Collect();
  ASSERT_EQ(families.size(), 1u);
  const prometheus::MetricFamily& f = families[0];
  EXPECT_EQ(f.name, "plume_gpu_utilization_ratio");
  EXPECT_EQ(f.type, prometheus::MetricType::Gauge);
  ASSERT_EQ(f.metric.size(), 2u);
  ASSERT_EQ(f.metric[0].label.size(), 1u);
  EXPECT_EQ(f.metric[0].label[0].name, "gpu");
  EXPECT_EQ(f.metric[0].label[0].value, "0");
  EXPECT_DOUBLE_EQ(f.metric[0].gauge.value, 0.37);
  EXPECT_EQ(f.metric[1].label[0].value, "1");
  EXPECT_DOUBLE_EQ(f.metric[1].gauge.value, 0.81);

  const std::string text = prometheus::TextSerializer().Serialize(families);
  EXPECT_NE(text.find("# TYPE plume_gpu_utilization_ratio gauge"), std::string::npos) << text;
  EXPECT_NE(text.find("plume_gpu_utilization_ratio{gpu=\"1\"} 0.81"), std::string::npos) << text;
}

TEST_F(GpuUtilizationTest, FailedReadLeavesThatGpuOutOfTheScrape) {
  auto c = GpuUtilizationCollector::Create(FAKE_NVML_LIB);
  ASSERT_NE(c, nullptr);
  setenv("FAKE_NVML_MODE", "read_fails_1", 1);
  auto families = c->Collect();
  ASSERT_EQ(families.size(), 1u);
  ASSERT_EQ(families[0].metric.size(), 1u);
  EXPECT_EQ(families[0].metric[0].label[0].value, "0");
}

TEST_F(GpuUtilizationTest, InitFailureOrNoDevicesMeansNoCollector) {
  const std::string log =
      (std::filesystem::temp_directory_path() / ("fake_nvml_shutdown_" + std::to_string(getpid()))).string();
  std::filesystem::remove(log);
  setenv("FAKE_NVML_SHUTDOWN_FILE", log.c_str(), 1);
  std::string why;
  setenv("FAKE_NVML_MODE", "init_fails", 1);
  EXPECT_EQ(GpuUtilizationCollector::Create(FAKE_NVML_LIB, &why), nullptr);
  EXPECT_NE(why.find("nvmlInit_v2 failed with NVML error 9"), std::string::npos) << why;
  EXPECT_FALSE(std::filesystem::exists(log)) << "no shutdown after a failed init";

  setenv("FAKE_NVML_MODE", "no_devices", 1);
  EXPECT_EQ(GpuUtilizationCollector::Create(FAKE_NVML_LIB, &why), nullptr);
  EXPECT_EQ(why, "NVML reports no usable GPU");
  // An initialized NVML is shut down again, once.
  std::ifstream in(log);
  std::stringstream lines;
  lines << in.rdbuf();
  EXPECT_EQ(lines.str(), "shutdown\n");
  std::filesystem::remove(log);
}

TEST_F(GpuUtilizationTest, DestructionShutsNvmlDown) {
  const std::string log =
      (std::filesystem::temp_directory_path() / ("fake_nvml_dtor_" + std::to_string(getpid()))).string();
  std::filesystem::remove(log);
  setenv("FAKE_NVML_SHUTDOWN_FILE", log.c_str(), 1);
  {
    auto c = GpuUtilizationCollector::Create(FAKE_NVML_LIB);
    ASSERT_NE(c, nullptr);
    EXPECT_FALSE(std::filesystem::exists(log));
  }
  EXPECT_TRUE(std::filesystem::exists(log));
  std::filesystem::remove(log);
}

}  // namespace
}  // namespace plume::core
