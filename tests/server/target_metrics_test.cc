// The per-target series: `matrix` / `cache` labels on the GEMV and attention
// counters and histograms, the --metrics_max_targets cap that folds further
// targets into "_other", and series that leave /metrics with their target.
// Checked on Metrics itself and end to end (real server in process, SDK),
// through the text prometheus-cpp's exposer serves.
#include <gtest/gtest.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "plume/client/client.h"
#include "server/core/metrics.h"
#include "tests/common/gemv_reference.h"
#include "tests/common/test_server.h"

namespace plume {
namespace {

using core::Metrics;
using core::TargetKind;

// What a scrape of `registry` returns: the text exposition format.
std::string Scrape(prometheus::Registry& registry) {
  return prometheus::TextSerializer().Serialize(registry.Collect());
}

// The value of the sample `name{label="value"}` in `text`, if it is there.
std::optional<double> Sample(const std::string& text, const std::string& name, const std::string& label,
                             const std::string& value) {
  const std::string head = name + "{" + label + "=\"" + value + "\"} ";
  for (size_t pos = 0; (pos = text.find(head, pos)) != std::string::npos; pos += head.size()) {
    if (pos == 0 || text[pos - 1] == '\n') return std::stod(text.substr(pos + head.size()));
  }
  return std::nullopt;
}

// The values one label of `name`'s samples takes in `text`.
std::vector<std::string> LabelValues(const std::string& text, const std::string& name, const std::string& label) {
  std::vector<std::string> out;
  const std::string head = "\n" + name + "{" + label + "=\"";
  for (size_t pos = 0; (pos = text.find(head, pos)) != std::string::npos; pos += head.size()) {
    const size_t begin = pos + head.size();
    out.push_back(text.substr(begin, text.find('"', begin) - begin));
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

TEST(TargetMetrics, EachTargetHasItsLabelUpToTheCapThenOther) {
  Metrics m({.max_targets = 2});
  auto a = m.Target(TargetKind::kMatrix, "a");
  auto b = m.Target(TargetKind::kMatrix, "b");
  auto c = m.Target(TargetKind::kMatrix, "c");
  auto d = m.Target(TargetKind::kMatrix, "d");
  auto k = m.Target(TargetKind::kKvCache, "k");  // caches have a cap of their own
  EXPECT_NE(a.get(), b.get());
  EXPECT_EQ(c.get(), d.get());  // both beyond the cap: one "_other"
  a->RecordWork(3, 100);
  b->RecordWork(5, 200);
  c->RecordWork(7, 1);
  d->RecordWork(11, 2);
  k->RecordWork(2, 50);
  a->RecordQueueWait(1e-3);
  a->RecordKernel(2e-3);
  a->RecordHostPart(1e-6);
  a->RecordBatch(3);
  k->RecordBatch(1);
  k->RecordHostPart(1.0);  // caches have no host series: nothing recorded

  const std::string text = Scrape(*m.registry());
  EXPECT_EQ(Sample(text, "plume_vectors_total", "matrix", "a"), 3);
  EXPECT_EQ(Sample(text, "plume_vectors_total", "matrix", "b"), 5);
  EXPECT_EQ(Sample(text, "plume_vectors_total", "matrix", "_other"), 18);
  EXPECT_EQ(Sample(text, "plume_weight_bytes_read_total", "matrix", "_other"), 3);
  EXPECT_EQ(Sample(text, "plume_attention_queries_total", "cache", "k"), 2);
  EXPECT_EQ(Sample(text, "plume_kv_bytes_read_total", "cache", "k"), 50);
  EXPECT_EQ(Sample(text, "plume_queue_duration_seconds_count", "matrix", "a"), 1);
  EXPECT_DOUBLE_EQ(Sample(text, "plume_kernel_duration_seconds_sum", "matrix", "a").value_or(0), 2e-3);
  EXPECT_EQ(Sample(text, "plume_host_duration_seconds_count", "matrix", "a"), 1);
  EXPECT_EQ(Sample(text, "plume_batch_size_sum", "matrix", "a"), 3);
  EXPECT_EQ(Sample(text, "plume_batch_size_count", "cache", "k"), 1);
  EXPECT_TRUE(LabelValues(text, "plume_host_duration_seconds_count", "cache").empty()) << text;
  EXPECT_FALSE(Sample(text, "plume_vectors_total", "matrix", "c").has_value());
  EXPECT_EQ(LabelValues(text, "plume_vectors_total", "matrix"), (std::vector<std::string>{"_other", "a", "b"}))
      << text;
  // Every per-target family, labelled only by its target.
  for (const char* name : {"plume_queue_duration_seconds_count", "plume_kernel_duration_seconds_count",
                           "plume_batch_size_count"}) {
    EXPECT_EQ(LabelValues(text, name, "matrix").size(), 3u) << name;
    EXPECT_EQ(LabelValues(text, name, "cache"), std::vector<std::string>{"k"}) << name;
  }
  EXPECT_EQ(text.find("plume_vectors_total 0"), std::string::npos) << "an unlabelled series is left";
}

TEST(TargetMetrics, SeriesGoWithTheLastHolderAndFreeTheirSlot) {
  Metrics m({.max_targets = 1});
  auto a = m.Target(TargetKind::kMatrix, "a");
  auto a2 = m.Target(TargetKind::kMatrix, "a");  // a deleted "a" still running beside its re-upload
  EXPECT_EQ(a.get(), a2.get());
  auto b = m.Target(TargetKind::kMatrix, "b");  // beyond the cap
  a->RecordWork(1, 1);
  b->RecordWork(4, 1);
  a.reset();
  std::string text = Scrape(*m.registry());
  EXPECT_EQ(Sample(text, "plume_vectors_total", "matrix", "a"), 1) << "a holder is left";
  a2.reset();
  text = Scrape(*m.registry());
  EXPECT_FALSE(Sample(text, "plume_vectors_total", "matrix", "a").has_value()) << text;
  EXPECT_FALSE(Sample(text, "plume_queue_duration_seconds_count", "matrix", "a").has_value()) << text;
  // Its slot is free again: the next target has a label of its own, from zero.
  auto c = m.Target(TargetKind::kMatrix, "c");
  c->RecordWork(2, 1);
  auto again = m.Target(TargetKind::kMatrix, "a");  // the cap is reached again
  again->RecordWork(8, 1);
  text = Scrape(*m.registry());
  EXPECT_EQ(Sample(text, "plume_vectors_total", "matrix", "c"), 2);
  EXPECT_EQ(Sample(text, "plume_vectors_total", "matrix", "_other"), 12);
  // A target named "_other" counts there too, and takes no slot.
  auto named_other = m.Target(TargetKind::kMatrix, std::string(core::kOtherTarget));
  EXPECT_EQ(named_other.get(), b.get());
  b.reset();
  again.reset();
  named_other.reset();
  text = Scrape(*m.registry());
  EXPECT_FALSE(Sample(text, "plume_vectors_total", "matrix", "_other").has_value()) << text;
  EXPECT_EQ(LabelValues(text, "plume_vectors_total", "matrix"), std::vector<std::string>{"c"});
}

TEST(TargetMetrics, ZeroTargetsFoldsEveryTarget) {
  Metrics m({.max_targets = 0});
  auto a = m.Target(TargetKind::kMatrix, "a");
  auto k = m.Target(TargetKind::kKvCache, "k");
  a->RecordWork(1, 1);
  k->RecordWork(1, 1);
  const std::string text = Scrape(*m.registry());
  EXPECT_EQ(LabelValues(text, "plume_vectors_total", "matrix"), std::vector<std::string>{"_other"});
  EXPECT_EQ(LabelValues(text, "plume_attention_queries_total", "cache"), std::vector<std::string>{"_other"});
}

TEST(TargetMetrics, EngineRefusesACapOutOfRange) {
  for (int64_t bad : {int64_t{-1}, core::kMaxMetricsTargetsLimit + 1}) {
    core::EngineOptions o = testing::TestEngineOptions();
    o.metrics.max_targets = bad;
    auto e = core::Engine::Create(o, std::make_unique<core::CpuBackend>(1));
    ASSERT_FALSE(e.ok()) << bad;
    EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(e.status().message().find("--metrics_max_targets"), std::string::npos) << e.status();
  }
}

// The server with a cap of 1: GEMV and attention traffic on two matrices and
// two caches, then a delete, as a scrape sees them.
TEST(TargetMetrics, ServerLabelsGemvAndAttentionByTarget) {
  core::EngineOptions o = testing::TestEngineOptions();
  o.metrics.max_targets = 1;
  auto server = testing::StartTestServer(o);
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions co;
  co.target = server->address();
  auto client = Client::Connect(co);
  ASSERT_TRUE(client.ok()) << client.status();
  Client& c = **client;

  const int64_t rows = 40, cols = 96;
  const std::vector<float> w = testing::RandomNormal(rows * cols, 11);
  for (const char* name : {"w1", "w2"}) {
    auto up = c.UploadMatrix({.name = name}, TensorRef::F32(w.data(), {rows, cols}));
    ASSERT_TRUE(up.ok()) << up.status();
  }
  const std::vector<float> x = testing::RandomNormal(3 * cols, 12);
  ASSERT_TRUE(c.Gemv("w1", TensorRef::F32(x.data(), {2, cols})).ok());
  ASSERT_TRUE(c.Gemv("w2", TensorRef::F32(x.data(), {3, cols})).ok());
  ASSERT_TRUE(c.Gemv("w2", TensorRef::F32(x.data(), {cols})).ok());

  const int64_t kv_heads = 2, seq = 20, dim = 32, heads = 4;
  const std::vector<float> kv = testing::RandomNormal(kv_heads * seq * dim, 13);
  const std::vector<float> q = testing::RandomNormal(heads * dim, 14);
  for (const char* name : {"c1", "c2"}) {
    auto up = c.UploadKV({.name = name}, TensorRef::F32(kv.data(), {kv_heads, seq, dim}),
                         TensorRef::F32(kv.data(), {kv_heads, seq, dim}));
    ASSERT_TRUE(up.ok()) << up.status();
    ASSERT_TRUE(c.Attention(name, TensorRef::F32(q.data(), {1, heads, 1, dim})).ok());
  }

  std::string text = Scrape(*server->metrics()->registry());
  EXPECT_EQ(Sample(text, "plume_vectors_total", "matrix", "w1"), 2) << text;
  EXPECT_EQ(Sample(text, "plume_vectors_total", "matrix", "_other"), 4) << text;
  EXPECT_EQ(Sample(text, "plume_queue_duration_seconds_count", "matrix", "w1"), 1);
  EXPECT_EQ(Sample(text, "plume_queue_duration_seconds_count", "matrix", "_other"), 2);
  EXPECT_EQ(Sample(text, "plume_kernel_duration_seconds_count", "matrix", "_other"), 2);
  EXPECT_EQ(Sample(text, "plume_batch_size_sum", "matrix", "_other"), 4);
  EXPECT_EQ(Sample(text, "plume_weight_bytes_read_total", "matrix", "w1"),
            Sample(text, "plume_weight_bytes_read_total", "matrix", "_other").value_or(0) / 2);
  EXPECT_GT(Sample(text, "plume_weight_bytes_read_total", "matrix", "w1").value_or(0), 0);
  EXPECT_EQ(Sample(text, "plume_attention_queries_total", "cache", "c1"), heads);
  EXPECT_EQ(Sample(text, "plume_attention_queries_total", "cache", "_other"), heads);
  EXPECT_EQ(Sample(text, "plume_queue_duration_seconds_count", "cache", "c1"), 1);
  EXPECT_EQ(Sample(text, "plume_kernel_duration_seconds_count", "cache", "_other"), 1);
  EXPECT_EQ(Sample(text, "plume_batch_size_sum", "cache", "c1"), 1);
  EXPECT_GT(Sample(text, "plume_kv_bytes_read_total", "cache", "c1").value_or(0), 0);
  EXPECT_EQ(LabelValues(text, "plume_vectors_total", "matrix"), (std::vector<std::string>{"_other", "w1"}));

  // A delete takes w1's series off /metrics once its last request is done
  // (here at once: none runs), and frees its slot for the next matrix.
  ASSERT_TRUE(c.DeleteMatrix("w1").ok());
  text = Scrape(*server->metrics()->registry());
  EXPECT_FALSE(Sample(text, "plume_vectors_total", "matrix", "w1").has_value()) << text;
  EXPECT_FALSE(Sample(text, "plume_kernel_duration_seconds_count", "matrix", "w1").has_value()) << text;
  ASSERT_TRUE(c.UploadMatrix({.name = "w3"}, TensorRef::F32(w.data(), {rows, cols})).ok());
  ASSERT_TRUE(c.Gemv("w3", TensorRef::F32(x.data(), {cols})).ok());
  text = Scrape(*server->metrics()->registry());
  EXPECT_EQ(Sample(text, "plume_vectors_total", "matrix", "w3"), 1) << text;
  EXPECT_EQ(Sample(text, "plume_vectors_total", "matrix", "_other"), 4) << text;
  ASSERT_TRUE(c.DeleteKV("c1").ok());
  text = Scrape(*server->metrics()->registry());
  EXPECT_EQ(LabelValues(text, "plume_attention_queries_total", "cache"), std::vector<std::string>{"_other"});
}

}  // namespace
}  // namespace plume
