// The real server, in process on 127.0.0.1:0, driven through the real SDK:
// the MatrixService, health, reflection and metrics. The AttentionService's
// cases are in server_attention_test.cc, on the same fixture
// (server_fixture.h).
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <prometheus/exposer.h>
#include <prometheus/registry.h>

#include "metrics_scrape.h"
#include "plume/client/client.h"
#include "plume/reference/api.h"
#include "plume/reference/naive.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/core/matrix_service.h"
#include "server/core/matrix_store.h"
#include "server/core/metrics.h"
#include "server/grpc/server.h"
#include "tests/common/gemv_reference.h"
#include "tests/common/test_server.h"
#include "tests/common/wait.h"
#include "tests/server/server_fixture.h"

namespace plume {
namespace {

using namespace server_test;
using testing::ExpectedGemv;

// The value of the first sample line that starts with `series`, or -1.
double Sample(const std::string& text, const std::string& series) {
  size_t pos = 0;
  while ((pos = text.find(series, pos)) != std::string::npos) {
    // The whole series name: plume_kv_bytes is not plume_kv_bytes_read_total.
    if ((pos == 0 || text[pos - 1] == '\n') && text.compare(pos + series.size(), 1, " ") == 0) {
      const size_t sp = text.find(' ', pos + series.size());
      return std::stod(text.substr(sp + 1, text.find('\n', sp) - sp - 1));
    }
    pos += series.size();
  }
  return -1;
}

TEST_F(ServerTest, UploadInManyChunksThenGemvMatchesReference) {
  const int64_t rows = 129, cols = 1001, batch = 8;
  auto w = Random(rows * cols, 1);
  int64_t progress_calls = 0;
  UploadSpec spec{"w", v1::DTYPE_E4M3, v1::SCALE_MODE_ROW, false};
  auto info = client_->UploadMatrix(spec, TensorRef::F32(w.data(), {rows, cols}),
                                    [&](int64_t, int64_t) { ++progress_calls; });
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_GE(progress_calls, rows * cols * 4 / 4096);  // it really went in many chunks
  EXPECT_EQ(info->rows(), rows);
  EXPECT_EQ(info->cols(), cols);
  EXPECT_EQ(info->layout().padded_cols(), 1008);
  EXPECT_EQ(info->resident_bytes(), rows * 1008 + rows * 4);
  EXPECT_EQ(info->backend(), "cpu");

  auto x = Random(batch * cols, 2);
  auto y = client_->Gemv("w", TensorRef::F32(x.data(), {batch, cols}));
  ASSERT_TRUE(y.ok()) << y.status();
  ASSERT_EQ(y->shape, (std::vector<int64_t>{batch, rows}));
  auto yf = y->ToFloats();
  ASSERT_TRUE(yf.ok());
  ExpectedGemv e(w, rows, cols, Fp8Format::kE4M3, ScaleMode::kRow);
  EXPECT_LE(e.RelErr(x, batch, *yf), 1e-5);

  // A 1-D input gives a 1-D output.
  auto y1 = client_->Gemv("w", TensorRef::F32(x.data(), {cols}));
  ASSERT_TRUE(y1.ok()) << y1.status();
  EXPECT_EQ(y1->shape, (std::vector<int64_t>{rows}));
}

TEST_F(ServerTest, EveryFormatAndScaleModeWithHalfAndBf16Outputs) {
  const int64_t rows = 33, cols = 257;
  auto w = Random(rows * cols, 3);
  auto x = Random(cols, 4);
  int i = 0;
  for (v1::DType f : {v1::DTYPE_E4M3, v1::DTYPE_E5M2}) {
    for (v1::ScaleMode m : {v1::SCALE_MODE_NONE, v1::SCALE_MODE_TENSOR, v1::SCALE_MODE_ROW,
                            v1::SCALE_MODE_BLOCK128}) {
      const std::string name = "m" + std::to_string(i++);
      ASSERT_TRUE(Upload(name, w, rows, cols, m, f).ok()) << name;
      ExpectedGemv e(w, rows, cols, static_cast<Fp8Format>(f), static_cast<ScaleMode>(m));
      auto y = client_->Gemv(name, TensorRef::F32(x.data(), {cols}));
      ASSERT_TRUE(y.ok()) << y.status();
      EXPECT_LE(e.RelErr(x, 1, *y->ToFloats()), 1e-5) << name;
      for (v1::DType out : {v1::DTYPE_F16, v1::DTYPE_BF16}) {
        auto yh = client_->Gemv(name, TensorRef::F32(x.data(), {cols}), out);
        ASSERT_TRUE(yh.ok()) << yh.status();
        EXPECT_EQ(yh->dtype, out);
        // One rounding to 11 (F16) or 8 (BF16) significant bits.
        EXPECT_LE(e.RelErr(x, 1, *yh->ToFloats()), out == v1::DTYPE_F16 ? 1e-3 : 8e-3) << name;
      }
    }
  }
}

TEST_F(ServerTest, PrePackedUploadServesTheSameAnswers) {
  const int64_t rows = 20, cols = 300;
  auto w = Random(rows * cols, 5);
  PackedLayout l{rows, cols};
  std::vector<uint32_t> words(size_t(l.total_words()));
  std::vector<float> scales(size_t(NumScales(ScaleMode::kBlock128, rows, cols)));
  ref::QuantizePack(w.data(), DType::kF32, rows, cols,
                    {Fp8Format::kE5M2, ScaleMode::kBlock128, true}, words.data(), scales.data());
  UploadSpec spec{"packed", v1::DTYPE_E5M2, v1::SCALE_MODE_BLOCK128, false};
  auto info = client_->UploadPacked(spec, rows, cols, words.data(), int64_t(words.size()),
                                    scales.data(), int64_t(scales.size()));
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_TRUE(Upload("quantized", w, rows, cols, v1::SCALE_MODE_BLOCK128, v1::DTYPE_E5M2).ok());
  auto x = Random(3 * cols, 6);
  auto a = client_->Gemv("packed", TensorRef::F32(x.data(), {3, cols}));
  auto b = client_->Gemv("quantized", TensorRef::F32(x.data(), {3, cols}));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->data, b->data);  // same codes, same scales, same kernel: same bits

  // Bad scales are refused and nothing is stored.
  scales[3] = NAN;
  spec.name = "bad-scales";
  auto bad = client_->UploadPacked(spec, rows, cols, words.data(), int64_t(words.size()),
                                   scales.data(), int64_t(scales.size()));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->GetMatrix("bad-scales").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ServerTest, GemvStreamMatchesRequestIdsAndIsolatesItemErrors) {
  const int64_t rows = 64, cols = 96;
  auto w = Random(rows * cols, 7);
  ASSERT_TRUE(Upload("s", w, rows, cols).ok());
  ExpectedGemv e(w, rows, cols, Fp8Format::kE4M3, ScaleMode::kRow);

  auto session = client_->StartGemvSession("s", {.max_in_flight = 16});
  ASSERT_TRUE(session.ok()) << session.status();
  const int n = 200;
  std::vector<std::vector<float>> xs;
  std::vector<std::future<absl::StatusOr<GemvResult>>> futures;
  std::vector<float> wrong = Random(cols + 1, 99);
  for (int i = 0; i < n; ++i) {
    xs.push_back(Random(cols, 1000 + i));
    if (i == 50) {  // a bad item in the middle fails alone
      futures.push_back((*session)->Push(TensorRef::F32(wrong.data(), {cols + 1})));
    } else {
      futures.push_back((*session)->Push(TensorRef::F32(xs.back().data(), {cols})));
    }
  }
  std::set<uint64_t> ids;
  for (int i = 0; i < n; ++i) {
    auto r = futures[size_t(i)].get();
    if (i == 50) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
      continue;
    }
    ASSERT_TRUE(r.ok()) << i << ": " << r.status();
    ids.insert(r->request_id);
    EXPECT_LE(e.RelErr(xs[size_t(i)], 1, *r->output.ToFloats()), 1e-5) << i;
  }
  EXPECT_EQ(ids.size(), size_t(n - 1));  // every result its own request_id
  EXPECT_TRUE((*session)->Finish().ok());
}

TEST_F(ServerTest, StreamsCancelledMidwayLeaveTheServerHealthy) {
  const int64_t rows = 512, cols = 1024;
  auto w = Random(rows * cols, 16);
  ASSERT_TRUE(Upload("c", w, rows, cols).ok());
  auto x = Random(cols, 17);
  for (int round = 0; round < 5; ++round) {
    auto session = client_->StartGemvSession("c", {.max_in_flight = 32});
    ASSERT_TRUE(session.ok());
    std::vector<std::future<absl::StatusOr<GemvResult>>> futures;
    for (int i = 0; i < 100; ++i) futures.push_back((*session)->Push(TensorRef::F32(x.data(), {cols})));
    (*session)->Cancel();
    for (auto& f : futures) {
      auto r = f.get();  // each one finished or was cancelled; none hangs
      if (!r.ok()) EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled) << r.status();
    }
  }
  // A stream abandoned with no Finish at all.
  {
    auto session = client_->StartGemvSession("c");
    ASSERT_TRUE(session.ok());
    for (int i = 0; i < 50; ++i) (*session)->Push(TensorRef::F32(x.data(), {cols}));
  }
  auto y = client_->Gemv("c", TensorRef::F32(x.data(), {cols}));
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_LE(ExpectedGemv(w, rows, cols, Fp8Format::kE4M3, ScaleMode::kRow).RelErr(x, 1, *y->ToFloats()),
            1e-5);
}

TEST_F(ServerTest, ShutdownWithOpenStreamsEndsThem) {
  const int64_t rows = 64, cols = 64;
  auto w = Random(rows * cols, 18);
  ASSERT_TRUE(Upload("d", w, rows, cols).ok());
  auto x = Random(cols, 19);
  auto session = client_->StartGemvSession("d");
  ASSERT_TRUE(session.ok());
  ASSERT_TRUE((*session)->Push(TensorRef::F32(x.data(), {cols})).get().ok());
  server_->Shutdown(std::chrono::milliseconds(200));  // the stream is still open
  auto late = (*session)->Push(TensorRef::F32(x.data(), {cols})).get();
  EXPECT_FALSE(late.ok());
  EXPECT_FALSE((*session)->Finish().ok());
}

TEST_F(ServerTest, ListAndDelete) {
  auto w = Random(16 * 16, 8);
  for (const char* name : {"c", "a", "b"}) ASSERT_TRUE(Upload(name, w, 16, 16).ok());
  auto list = client_->ListMatrices();
  ASSERT_TRUE(list.ok());
  std::vector<std::string> names;
  for (const auto& m : *list) names.push_back(m.name());
  EXPECT_EQ(names, (std::vector<std::string>{"a", "b", "c"}));

  ASSERT_TRUE(client_->DeleteMatrix("b").ok());
  EXPECT_EQ(client_->DeleteMatrix("b").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->GetMatrix("b").status().code(), absl::StatusCode::kNotFound);
  list = client_->ListMatrices();
  ASSERT_EQ(list->size(), 2u);
  // The name can be used again.
  EXPECT_TRUE(Upload("b", w, 16, 16).ok());
}

TEST_F(ServerTest, ErrorPathsHaveTheirCodes) {
  const int64_t rows = 8, cols = 40;
  auto w = Random(rows * cols, 9);
  ASSERT_TRUE(Upload("w", w, rows, cols).ok());
  auto x = Random(cols, 10);

  // Unknown matrix.
  EXPECT_EQ(client_->Gemv("missing", TensorRef::F32(x.data(), {cols})).status().code(),
            absl::StatusCode::kNotFound);
  // A second upload of an existing name.
  EXPECT_EQ(Upload("w", w, rows, cols).status().code(), absl::StatusCode::kAlreadyExists);
  // A name that is not a safe file name.
  EXPECT_EQ(Upload("../w", w, rows, cols).status().code(), absl::StatusCode::kInvalidArgument);

  // The SDK checks tensors itself, so malformed requests go through the raw stub.
  auto stub = RawStub();
  auto gemv = [&](const v1::GemvRequest& req) {
    grpc::ClientContext ctx;
    v1::GemvResponse resp;
    return stub->Gemv(&ctx, req, &resp).error_code();
  };
  v1::GemvRequest req;
  req.set_matrix("w");
  req.mutable_input()->set_dtype(v1::DTYPE_F32);
  req.mutable_input()->add_shape(cols);
  req.mutable_input()->set_data(std::string(reinterpret_cast<const char*>(x.data()), cols * 4));
  EXPECT_EQ(gemv(req), grpc::StatusCode::OK);
  v1::GemvRequest bad = req;  // wrong length
  bad.mutable_input()->mutable_data()->append("abcd");
  EXPECT_EQ(gemv(bad), grpc::StatusCode::INVALID_ARGUMENT);
  bad = req;  // wrong dtype: the bytes are F32 but F16 is declared
  bad.mutable_input()->set_dtype(v1::DTYPE_F16);
  EXPECT_EQ(gemv(bad), grpc::StatusCode::INVALID_ARGUMENT);
  bad = req;  // unknown dtype
  bad.mutable_input()->set_dtype(static_cast<v1::DType>(77));
  EXPECT_EQ(gemv(bad), grpc::StatusCode::INVALID_ARGUMENT);
  bad = req;  // batch over --max_vectors_per_request (64 here)
  bad.mutable_input()->clear_shape();
  bad.mutable_input()->add_shape(65);
  bad.mutable_input()->add_shape(cols);
  EXPECT_EQ(gemv(bad), grpc::StatusCode::INVALID_ARGUMENT);

  // Uploads whose data does not match the header.
  auto upload = [&](const std::vector<v1::UploadMatrixRequest>& msgs) {
    grpc::ClientContext ctx;
    v1::UploadMatrixResponse resp;
    auto writer = stub->UploadMatrix(&ctx, &resp);
    for (const auto& m : msgs) {
      if (!writer->Write(m)) break;
    }
    writer->WritesDone();
    return writer->Finish().error_code();
  };
  v1::UploadMatrixRequest header;
  header.mutable_header()->set_name("short");
  header.mutable_header()->set_rows(10);
  header.mutable_header()->set_cols(10);
  header.mutable_header()->set_source_dtype(v1::DTYPE_F32);
  v1::UploadMatrixRequest data;
  data.set_data(std::string(300, '\x01'));
  EXPECT_EQ(upload({header, data}), grpc::StatusCode::INVALID_ARGUMENT);  // 300 of 400 bytes
  data.set_data(std::string(404, '\x01'));
  EXPECT_EQ(upload({header, data}), grpc::StatusCode::INVALID_ARGUMENT);  // too many
  EXPECT_EQ(upload({data}), grpc::StatusCode::INVALID_ARGUMENT);          // no header
  EXPECT_EQ(upload({}), grpc::StatusCode::INVALID_ARGUMENT);              // nothing at all
  // A failed upload leaves no trace: the name is free and no bytes are held.
  EXPECT_EQ(client_->GetMatrix("short").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->used_bytes(), (*client_->GetMatrix("w")).resident_bytes());
  // And the stored matrix still answers the same.
  auto y = client_->Gemv("w", TensorRef::F32(x.data(), {cols}));
  ASSERT_TRUE(y.ok());
  EXPECT_LE(ExpectedGemv(w, rows, cols, Fp8Format::kE4M3, ScaleMode::kRow).RelErr(x, 1, *y->ToFloats()),
            1e-5);
}

TEST_F(ServerTest, BudgetOverflowIsResourceExhausted) {
  TearDown();
  Start(64 * 1024);  // 64 KiB of resident matrices
  auto w = Random(100 * 512, 11);
  ASSERT_TRUE(Upload("fits", w, 100, 512).ok());  // 51.6 KB
  auto over = Upload("too-much", w, 100, 512);
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(over.status().message().find("memory budget"), std::string::npos)
      << over.status().message();
  ASSERT_TRUE(client_->DeleteMatrix("fits").ok());
  EXPECT_TRUE(Upload("too-much", w, 100, 512).ok());  // room again after the delete
}

TEST_F(ServerTest, HealthIsServing) {
  auto h = client_->CheckHealth();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, HealthStatus::kServing);
}

// Server reflection answers list_services with plume's service and health.
// No reflection stubs ship with Debian's gRPC, so the request is encoded by
// hand: ServerReflectionRequest{list_services: ""} is field 7, empty string.
TEST_F(ServerTest, ReflectionListsServices) {
  grpc::GenericStub stub(client_->channel());
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto call = stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  auto wait = [&](intptr_t want) {
    void* tag = nullptr;
    bool ok = false;
    EXPECT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(reinterpret_cast<intptr_t>(tag), want);
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(wait(1));
  const char request[] = {0x3a, 0x00};
  grpc::Slice slice(request, sizeof request);
  grpc::ByteBuffer out(&slice, 1);
  call->WriteLast(out, grpc::WriteOptions(), reinterpret_cast<void*>(2));
  ASSERT_TRUE(wait(2));
  grpc::ByteBuffer in;
  call->Read(&in, reinterpret_cast<void*>(3));
  ASSERT_TRUE(wait(3));
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(4));
  wait(4);
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(in.Dump(&slices).ok());
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_NE(bytes.find("plume.v1.MatrixService"), std::string::npos);
  EXPECT_NE(bytes.find("plume.v1.AttentionService"), std::string::npos);
  EXPECT_NE(bytes.find("grpc.health.v1.Health"), std::string::npos);
  cq.Shutdown();
  void* tag;
  bool ok;
  while (cq.Next(&tag, &ok)) {
  }
}

TEST_F(ServerTest, MetricsCountTraffic) {
  const int64_t rows = 32, cols = 64;
  auto w = Random(rows * cols, 12);
  ASSERT_TRUE(Upload("m", w, rows, cols).ok());
  auto x = Random(4 * cols, 13);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(client_->Gemv("m", TensorRef::F32(x.data(), {4, cols})).ok());
  EXPECT_FALSE(client_->Gemv("nope", TensorRef::F32(x.data(), {4, cols})).ok());
  // K/V: [2, 100, 32], appended to 130 tokens (3 pages), attended twice by
  // [1, 4, 3, 32] and once with a wrong head_dim.
  auto k = Random(2 * 130 * 32, 16);
  ASSERT_TRUE(client_->UploadKV({"kv"}, TensorRef::F32(k.data(), {2, 100, 32}),
                                TensorRef::F32(k.data(), {2, 100, 32})).ok());
  auto app = client_->AppendKV("kv", TensorRef::F32(k.data(), {2, 30, 32}), TensorRef::F32(k.data(), {2, 30, 32}));
  ASSERT_TRUE(app.ok()) << app.status();
  const int64_t kv_bytes = app->resident_bytes();
  EXPECT_EQ(kv_bytes, 3 * (KvLayout{2, 32, KvScaleMode::kTokenBlock}.page_bytes()));
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(client_->Attention("kv", TensorRef::F32(k.data(), {1, 4, 3, 32})).ok());
  EXPECT_FALSE(client_->Attention("kv", TensorRef::F32(k.data(), {1, 4, 3, 16})).ok());

  // The real HTTP endpoint, as plume-server serves it. (Only this test starts
  // one: an Exposer takes about 2 s to stop.)
  prometheus::Exposer exposer("127.0.0.1:0");
  exposer.RegisterCollectable(metrics_->registry());
  cli::HttpUrl url;
  url.host = "127.0.0.1";
  url.port = std::to_string(exposer.GetListeningPorts().front());
  url.path = "/metrics";
  const absl::StatusOr<std::string> body = cli::HttpGet(url, "", absl::Seconds(10));
  ASSERT_TRUE(body.ok()) << body.status();  // a 200 response
  const std::string& text = *body;
  EXPECT_EQ(Sample(text, "plume_requests_total{code=\"OK\",method=\"Gemv\"}"), 3);
  EXPECT_EQ(Sample(text, "plume_requests_total{code=\"NOT_FOUND\",method=\"Gemv\"}"), 1);
  EXPECT_EQ(Sample(text, "plume_requests_total{code=\"OK\",method=\"UploadMatrix\"}"), 1);
  EXPECT_EQ(Sample(text, "plume_request_duration_seconds_count{method=\"Gemv\"}"), 4);
  // Per target: the matrix's and the cache's own series (labels matrix, cache).
  EXPECT_EQ(Sample(text, "plume_vectors_total{matrix=\"m\"}"), 12);
  EXPECT_EQ(Sample(text, "plume_weight_bytes_read_total{matrix=\"m\"}"), 3 * (rows * cols + rows * 4));
  EXPECT_EQ(Sample(text, "plume_resident_matrices"), 1);
  EXPECT_EQ(Sample(text, "plume_resident_bytes"), rows * cols + rows * 4);
  EXPECT_GT(Sample(text, "plume_memory_budget_bytes"), 0);
  // Batcher and backend: 3 GEMVs of 4 vectors and 2 attention calls of 1 batch element ran.
  EXPECT_EQ(Sample(text, "plume_batch_size_count{matrix=\"m\"}"), 3);
  EXPECT_EQ(Sample(text, "plume_batch_size_sum{matrix=\"m\"}"), 12);
  EXPECT_EQ(Sample(text, "plume_batch_size_count{cache=\"kv\"}"), 2);
  EXPECT_EQ(Sample(text, "plume_batch_size_sum{cache=\"kv\"}"), 2);
  EXPECT_EQ(Sample(text, "plume_kernel_duration_seconds_count{matrix=\"m\"}"), 3);
  EXPECT_EQ(Sample(text, "plume_kernel_duration_seconds_count{cache=\"kv\"}"), 2);
  EXPECT_GT(Sample(text, "plume_kernel_duration_seconds_sum{matrix=\"m\"}"), 0);
  EXPECT_EQ(Sample(text, "plume_host_duration_seconds_count{matrix=\"m\"}"), 3);
  EXPECT_EQ(Sample(text, "plume_queue_duration_seconds_count{matrix=\"m\"}"), 3);
  EXPECT_EQ(Sample(text, "plume_queue_duration_seconds_count{cache=\"kv\"}"), 2);
  EXPECT_EQ(Sample(text, "plume_queue_depth"), 0);
  // K/V caches and attention (uploaded and run before the scrape below).
  EXPECT_EQ(Sample(text, "plume_kv_caches"), 1);
  EXPECT_EQ(Sample(text, "plume_kv_bytes"), kv_bytes);
  EXPECT_EQ(Sample(text, "plume_requests_total{code=\"OK\",method=\"UploadKV\"}"), 1);
  EXPECT_EQ(Sample(text, "plume_requests_total{code=\"OK\",method=\"AppendKV\"}"), 1);
  EXPECT_EQ(Sample(text, "plume_requests_total{code=\"OK\",method=\"Attention\"}"), 2);
  EXPECT_EQ(Sample(text, "plume_requests_total{code=\"INVALID_ARGUMENT\",method=\"Attention\"}"), 1);
  EXPECT_EQ(Sample(text, "plume_request_duration_seconds_count{method=\"Attention\"}"), 3);
  EXPECT_EQ(Sample(text, "plume_attention_queries_total{cache=\"kv\"}"), 2 * 4 * 3);
  EXPECT_EQ(Sample(text, "plume_kv_bytes_read_total{cache=\"kv\"}"), 2 * kv_bytes);
}

TEST_F(ServerTest, ConcurrentClientsAndDeleteWhileInFlight) {
  const int64_t rows = 256, cols = 512;
  auto w = Random(rows * cols, 14);
  ASSERT_TRUE(Upload("hot", w, rows, cols).ok());
  ExpectedGemv e(w, rows, cols, Fp8Format::kE4M3, ScaleMode::kRow);
  auto x = Random(2 * cols, 15);
  std::atomic<int> ok{0}, not_found{0}, other{0};
  std::atomic<int> answered{0};  // clients that have had an answer
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 5000; ++i) {  // until the delete shows
        auto y = client_->Gemv("hot", TensorRef::F32(x.data(), {2, cols}));
        if (i == 0) answered++;
        if (y.ok()) {
          (e.RelErr(x, 2, *y->ToFloats()) <= 1e-5 ? ok : other)++;
        } else if (y.status().code() == absl::StatusCode::kNotFound) {
          not_found++;
          break;
        } else {
          other++;
        }
      }
    });
  }
  // Every client calling in a loop before the delete goes in (the delete
  // goes in regardless, so that the clients end).
  EXPECT_TRUE(testing::WaitUntil("all 8 clients to get an answer", [&] { return answered == 8; }))
      << answered << " of 8 clients answered";
  ASSERT_TRUE(client_->DeleteMatrix("hot").ok());
  for (auto& t : threads) t.join();
  EXPECT_EQ(other.load(), 0);  // every call either finished right or got NOT_FOUND
  EXPECT_GT(ok.load(), 0);
  EXPECT_EQ(not_found.load(), 8);
  EXPECT_EQ(store_->used_bytes(), 0);  // the deleted matrix was freed once idle
}

}  // namespace
}  // namespace plume
