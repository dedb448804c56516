// The real server, in process on 127.0.0.1:0, driven through the real SDK.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

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

#include "plume/client/client.h"
#include "tests/common/gemv_reference.h"
#include "plume/reference/api.h"
#include "plume/reference/attention.h"
#include "plume/reference/naive.h"
#include "server/core/attention_service.h"
#include "server/core/kv_store.h"
#include "tests/common/attention_reference.h"
#include "server/backends/cpu/cpu_backend.h"
#include "server/core/matrix_service.h"
#include "server/core/matrix_store.h"
#include "server/core/metrics.h"
#include "server/grpc/server.h"
#include "tests/common/test_server.h"
#include "tests/common/wait.h"

namespace plume {
namespace {

using testing::ExpectedGemv;

std::vector<float> Random(int64_t n, uint32_t seed) { return testing::RandomNormal(n, seed); }

std::string HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return "";
  }
  const std::string req = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  (void)!write(fd, req.data(), req.size());
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) out.append(buf, size_t(n));
  close(fd);
  return out;
}

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

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(int64_t{1} << 30); }

  void Start(int64_t budget) {
    core::EngineOptions eo = testing::TestEngineOptions();
    eo.store.budget_bytes = budget;
    eo.limits.max_vectors_per_request = 64;
    eo.limits.max_attention_rows = 4096;
    auto t = testing::StartTestServer(eo);
    ASSERT_TRUE(t.ok()) << t.status();
    engine_ = std::move(t->engine);
    server_ = std::move(t->server);
    metrics_ = engine_->metrics();
    store_ = engine_->matrix_store();

    ClientOptions copts;
    copts.target = "127.0.0.1:" + std::to_string(server_->port());
    copts.upload_chunk_bytes = 4096;  // many chunks
    auto c = Client::Connect(copts);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = std::move(*c);
  }

  void TearDown() override {
    client_.reset();
    if (server_) server_->Shutdown(std::chrono::milliseconds(100));
    server_.reset();
  }

  std::unique_ptr<v1::MatrixService::Stub> RawStub() {
    return v1::MatrixService::NewStub(client_->channel());
  }

  absl::StatusOr<v1::MatrixInfo> Upload(const std::string& name, const std::vector<float>& w,
                                        int64_t rows, int64_t cols,
                                        v1::ScaleMode mode = v1::SCALE_MODE_ROW,
                                        v1::DType format = v1::DTYPE_E4M3) {
    UploadSpec spec;
    spec.name = name;
    spec.format = format;
    spec.scale_mode = mode;
    TensorRef src = TensorRef::F32(w.data(), {rows, cols});
    return client_->UploadMatrix(spec, src);
  }

  std::unique_ptr<core::Engine> engine_;
  std::unique_ptr<server::Server> server_;  // goes before the engine
  core::Metrics* metrics_ = nullptr;
  core::MatrixStore* store_ = nullptr;
  std::unique_ptr<Client> client_;
};

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
  const std::string text = HttpGet(exposer.GetListeningPorts().front(), "/metrics");
  ASSERT_NE(text.find("200 OK"), std::string::npos) << text;
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

// ---------------------------------------------------------------- AttentionService

// K/V for tests: [kv_heads, seq, dim] normal values from a seed.
struct KvData {
  int64_t kv_heads, seq, dim;
  std::vector<float> k, v;
  KvData(int64_t h, int64_t s, int64_t d, uint32_t seed)
      : kv_heads(h), seq(s), dim(d), k(Random(h * s * d, seed)), v(Random(h * s * d, seed + 1)) {}
  TensorRef K() const { return TensorRef::F32(k.data(), {kv_heads, seq, dim}); }
  TensorRef V() const { return TensorRef::F32(v.data(), {kv_heads, seq, dim}); }
};

// What a CPU-backend server holds after the same uploads and appends.
class ExpectedKv {
 public:
  ExpectedKv(int64_t kv_heads, int64_t dim, Fp8Format f = Fp8Format::kE4M3,
             KvScaleMode m = KvScaleMode::kTokenBlock)
      : cache_({kv_heads, dim, m}, f) {}
  void Append(const KvData& d) { ASSERT_TRUE(cache_.Append(d.k.data(), d.v.data(), d.seq)); }
  // Relative L2 error of an F32 output against the FP64 reference.
  double RelErr(const std::vector<float>& q, int64_t batch, int64_t heads, int64_t q_len, bool causal,
                const HostTensor& out, float scale = 0.0f) const {
    const int64_t dim = cache_.layout().head_dim;
    if (out.shape != std::vector<int64_t>{batch, heads, q_len, dim}) return INFINITY;
    AttentionProblem p{cache_.view(), {}};
    p.q = q.data();
    p.batch = batch;
    p.heads = heads;
    p.q_len = q_len;
    p.scale = scale != 0.0f ? scale : float(1.0 / std::sqrt(double(dim)));
    p.causal = causal;
    std::vector<double> want(q.size());
    naive::Attention(p, want.data());
    auto got = out.ToFloats();
    return got.ok() ? testing::RelL2(*got, want) : INFINITY;
  }

 private:
  ref::HostKvCache cache_;
};

TEST_F(ServerTest, KvUploadAppendAttendMatchesReference) {
  const int64_t kv_heads = 2, heads = 8, dim = 72;  // GQA groups of 4, a ragged head_dim
  const KvData up(kv_heads, 100, dim, 20);
  int64_t progress_calls = 0;
  auto info = client_->UploadKV({"kv0", v1::DTYPE_E4M3, v1::KV_SCALE_MODE_TOKEN_BLOCK}, up.K(), up.V(),
                                [&](int64_t, int64_t) { ++progress_calls; });
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_GE(progress_calls, 2 * up.k.size() * 4 / 4096);  // many chunks
  EXPECT_EQ(info->seq(), 100);
  EXPECT_EQ(info->kv_heads(), kv_heads);
  EXPECT_EQ(info->head_dim(), dim);
  EXPECT_EQ(info->layout().row_stride_bytes(), 80);
  EXPECT_EQ(info->layout().page_tokens(), 64);
  EXPECT_EQ(info->layout().pages(), 2);
  EXPECT_EQ(info->resident_bytes(), 2 * info->layout().page_bytes());
  EXPECT_EQ(info->backend(), "cpu");
  ExpectedKv want(kv_heads, dim);
  want.Append(up);

  const int64_t batch = 2, q_len = 3;
  auto q = Random(batch * heads * q_len * dim, 21);
  const TensorRef qref = TensorRef::F32(q.data(), {batch, heads, q_len, dim});
  for (bool causal : {false, true}) {
    auto out = client_->Attention("kv0", qref, {.causal = causal});
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_LE(want.RelErr(q, batch, heads, q_len, causal, *out), 1e-5) << "causal " << causal;
  }
  // Decode-style appends: one token, then 40 more (into a new page).
  for (int64_t n : {1, 40}) {
    const KvData more(kv_heads, n, dim, uint32_t(22 + n));
    auto grown = client_->AppendKV("kv0", more.K(), more.V());
    ASSERT_TRUE(grown.ok()) << grown.status();
    want.Append(more);
  }
  auto got = client_->GetKV("kv0");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->seq(), 141);
  EXPECT_EQ(got->layout().pages(), 3);
  EXPECT_EQ(got->layout().capacity_tokens(), 192);
  auto out = client_->Attention("kv0", qref, {.softmax_scale = 0.05f, .causal = true});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_LE(want.RelErr(q, batch, heads, q_len, true, *out, 0.05f), 1e-5);
  // F16 and BF16 outputs round the same answer once more.
  auto out16 = client_->Attention("kv0", qref, {.softmax_scale = 0.05f, .causal = true, .output_dtype = v1::DTYPE_F16});
  ASSERT_TRUE(out16.ok());
  EXPECT_EQ(out16->dtype, v1::DTYPE_F16);
  EXPECT_LE(want.RelErr(q, batch, heads, q_len, true, *out16, 0.05f), 1e-3);
  auto outbf = client_->Attention("kv0", qref, {.softmax_scale = 0.05f, .causal = true, .output_dtype = v1::DTYPE_BF16});
  ASSERT_TRUE(outbf.ok());
  EXPECT_LE(want.RelErr(q, batch, heads, q_len, true, *outbf, 0.05f), 8e-3);
}

TEST_F(ServerTest, KvScaleModesAndFormats) {
  const KvData d(3, 65, 64, 30);
  int i = 0;
  for (auto [f, wf] : {std::pair{v1::DTYPE_E4M3, Fp8Format::kE4M3}, std::pair{v1::DTYPE_E5M2, Fp8Format::kE5M2}})
    for (auto [m, wm] : {std::pair{v1::KV_SCALE_MODE_NONE, KvScaleMode::kNone},
                         std::pair{v1::KV_SCALE_MODE_TENSOR, KvScaleMode::kTensor},
                         std::pair{v1::KV_SCALE_MODE_HEAD, KvScaleMode::kHead},
                         std::pair{v1::KV_SCALE_MODE_TOKEN_BLOCK, KvScaleMode::kTokenBlock}}) {
      const std::string name = "kv" + std::to_string(i++);
      auto info = client_->UploadKV({name, f, m}, d.K(), d.V());
      ASSERT_TRUE(info.ok()) << info.status();
      EXPECT_EQ(info->format(), f);
      EXPECT_EQ(info->scale_mode(), m);
      ExpectedKv want(3, 64, wf, wm);
      want.Append(d);
      auto q = Random(6 * 64, 31);
      auto out = client_->Attention(name, TensorRef::F32(q.data(), {1, 6, 1, 64}));
      ASSERT_TRUE(out.ok()) << out.status();
      EXPECT_LE(want.RelErr(q, 1, 6, 1, false, *out), 1e-5) << name;
    }
  auto list = client_->ListKV();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->size(), 8u);
}

TEST_F(ServerTest, AttentionStreamMatchesRequestIdsAndIsolatesItemErrors) {
  const int64_t dim = 32;
  const KvData d(2, 300, dim, 40);
  ASSERT_TRUE(client_->UploadKV({"s"}, d.K(), d.V()).ok());
  ExpectedKv want(2, dim);
  want.Append(d);
  auto session = client_->StartAttentionSession("s", {.max_in_flight = 4, .attention = {.causal = true}});
  ASSERT_TRUE(session.ok()) << session.status();
  std::vector<std::vector<float>> qs;
  std::vector<std::future<absl::StatusOr<AttentionResult>>> futures;
  for (int i = 0; i < 12; ++i) {
    const int64_t q_len = 1 + i % 3;
    qs.push_back(Random(4 * q_len * dim, 41 + i));
    // Item 5 has the wrong head_dim: it fails alone.
    futures.push_back((*session)->Push(TensorRef::F32(qs.back().data(), {1, 4, q_len, i == 5 ? dim / 2 : dim})));
  }
  std::set<uint64_t> ids;
  for (int i = 0; i < 12; ++i) {
    auto r = futures[i].get();
    if (i == 5) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
      continue;
    }
    ASSERT_TRUE(r.ok()) << i << ": " << r.status();
    ids.insert(r->request_id);
    EXPECT_LE(want.RelErr(qs[i], 1, 4, 1 + i % 3, true, r->output), 1e-5) << i;
  }
  EXPECT_EQ(ids.size(), 11u);
  EXPECT_TRUE((*session)->Finish().ok());
}

TEST_F(ServerTest, AttentionErrorPathsHaveTheirCodes) {
  const int64_t dim = 16;
  const KvData d(2, 10, dim, 50);
  ASSERT_TRUE(client_->UploadKV({"e"}, d.K(), d.V()).ok());
  auto q = Random(2 * 8 * 11 * dim, 51);
  auto attend = [&](const std::string& name, std::vector<int64_t> shape, AttentionOptions o = {}) {
    return client_->Attention(name, TensorRef::F32(q.data(), std::move(shape)), o).status().code();
  };
  EXPECT_EQ(attend("e", {1, 4, 2, dim}), absl::StatusCode::kOk);
  // Unknown cache.
  EXPECT_EQ(attend("missing", {1, 4, 2, dim}), absl::StatusCode::kNotFound);
  // Shape mismatch: head_dim, rank.
  EXPECT_EQ(attend("e", {1, 4, 2, dim / 2}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(attend("e", {4, 2, dim}), absl::StatusCode::kInvalidArgument);
  // Heads not a multiple of kv_heads (2).
  EXPECT_EQ(attend("e", {1, 3, 2, dim}), absl::StatusCode::kInvalidArgument);
  // Causal with q_len > seq (10); the same queries without causal are fine.
  EXPECT_EQ(attend("e", {1, 2, 11, dim}, {.causal = true}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(attend("e", {1, 2, 11, dim}), absl::StatusCode::kOk);
  EXPECT_EQ(attend("e", {1, 2, 10, dim}, {.causal = true}), absl::StatusCode::kOk);
  // Non-finite softmax scale, FP8 queries, an unknown output dtype.
  EXPECT_EQ(attend("e", {1, 2, 1, dim}, {.softmax_scale = INFINITY}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(attend("e", {1, 2, 1, dim}, {.output_dtype = v1::DTYPE_E4M3}), absl::StatusCode::kInvalidArgument);
  std::vector<uint8_t> fp8(2 * dim, 0x38);
  EXPECT_EQ(client_->Attention("e", TensorRef{v1::DTYPE_E4M3, {1, 2, 1, dim},
                                              std::string_view(reinterpret_cast<const char*>(fp8.data()), fp8.size())})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  // A bad name.
  EXPECT_EQ(attend("../e", {1, 2, 1, dim}), absl::StatusCode::kInvalidArgument);
  // batch x heads x q_len over the limit (4096 here).
  auto big = Random(4098 * dim, 56);
  EXPECT_EQ(client_->Attention("e", TensorRef::F32(big.data(), {1, 2, 2049, dim})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->Attention("e", TensorRef::F32(big.data(), {1, 2, 2048, dim})).status().code(),
            absl::StatusCode::kOk);

  // Appends: unknown cache, kv_heads / head_dim mismatch, k and v differing.
  const KvData one(2, 1, dim, 52), wrong_heads(3, 1, dim, 53), wrong_dim(2, 1, dim + 1, 54), two(2, 2, dim, 55);
  EXPECT_EQ(client_->AppendKV("missing", one.K(), one.V()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->AppendKV("e", wrong_heads.K(), wrong_heads.V()).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->AppendKV("e", wrong_dim.K(), wrong_dim.V()).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->AppendKV("e", one.K(), two.V()).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->GetKV("e")->seq(), 10);  // none of them changed the cache

  // Uploads: an existing name, FP8 or mismatched sources, short data, no header.
  EXPECT_EQ(client_->UploadKV({"e"}, d.K(), d.V()).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(client_->UploadKV({"x"}, d.K(), one.V()).status().code(), absl::StatusCode::kInvalidArgument);
  auto stub = v1::AttentionService::NewStub(client_->channel());
  auto upload = [&](const std::vector<v1::UploadKVRequest>& msgs) {
    grpc::ClientContext ctx;
    v1::UploadKVResponse resp;
    auto writer = stub->UploadKV(&ctx, &resp);
    for (const auto& m : msgs) {
      if (!writer->Write(m)) break;
    }
    writer->WritesDone();
    return writer->Finish().error_code();
  };
  v1::UploadKVRequest header;
  header.mutable_header()->set_name("short");
  header.mutable_header()->set_kv_heads(1);
  header.mutable_header()->set_seq(2);
  header.mutable_header()->set_head_dim(4);
  header.mutable_header()->set_source_dtype(v1::DTYPE_F32);
  v1::UploadKVRequest kmsg, vmsg;
  kmsg.set_k(std::string(32, '\x01'));
  vmsg.set_v(std::string(32, '\x01'));
  EXPECT_EQ(upload({header, kmsg, vmsg}), grpc::StatusCode::OK);
  header.mutable_header()->set_name("short2");
  EXPECT_EQ(upload({header, kmsg}), grpc::StatusCode::INVALID_ARGUMENT);           // no v
  EXPECT_EQ(upload({header, kmsg, vmsg, vmsg}), grpc::StatusCode::INVALID_ARGUMENT);  // too much v
  EXPECT_EQ(upload({kmsg}), grpc::StatusCode::INVALID_ARGUMENT);                   // no header
  EXPECT_EQ(upload({}), grpc::StatusCode::INVALID_ARGUMENT);                       // nothing
  header.mutable_header()->set_source_dtype(v1::DTYPE_E4M3);
  EXPECT_EQ(upload({header}), grpc::StatusCode::INVALID_ARGUMENT);                 // FP8 source
  header.mutable_header()->set_source_dtype(v1::DTYPE_F32);
  header.mutable_header()->set_head_dim(0);
  EXPECT_EQ(upload({header}), grpc::StatusCode::INVALID_ARGUMENT);                 // empty shape
  header.mutable_header()->set_head_dim(4);
  header.mutable_header()->set_scale_mode(static_cast<v1::KVScaleMode>(9));
  EXPECT_EQ(upload({header}), grpc::StatusCode::INVALID_ARGUMENT);                 // unknown scale mode
  EXPECT_EQ(client_->GetKV("short2").status().code(), absl::StatusCode::kNotFound);

  // Delete, then everything on the name is NOT_FOUND.
  ASSERT_TRUE(client_->DeleteKV("e").ok());
  EXPECT_EQ(client_->DeleteKV("e").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->GetKV("e").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(attend("e", {1, 4, 2, dim}), absl::StatusCode::kNotFound);
}

TEST_F(ServerTest, KvCachesShareTheBudgetWithMatrices) {
  TearDown();
  const KvLayout l{2, 64, KvScaleMode::kTokenBlock};
  Start(3 * l.page_bytes() + 6000);  // three pages and one small matrix
  auto w = Random(64 * 64, 60);
  ASSERT_TRUE(Upload("m", w, 64, 64).ok());  // 4352 bytes
  const KvData d(2, 128, 64, 61);            // two pages
  ASSERT_TRUE(client_->UploadKV({"kv"}, d.K(), d.V()).ok());
  const KvData more(2, 64, 64, 62);  // a third page fits ...
  ASSERT_TRUE(client_->AppendKV("kv", more.K(), more.V()).ok());
  const KvData one(2, 1, 64, 63);  // ... a fourth does not
  auto over = client_->AppendKV("kv", one.K(), one.V());
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(over.status().message().find("memory budget"), std::string::npos) << over.status();
  EXPECT_EQ(client_->GetKV("kv")->seq(), 192);
  EXPECT_EQ(client_->UploadKV({"kv2"}, one.K(), one.V()).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Upload("m2", w, 64, 64).status().code(), absl::StatusCode::kResourceExhausted);
  // Deleting the cache frees its pages for a new one (even while the matrix stays).
  ASSERT_TRUE(client_->DeleteKV("kv").ok());
  EXPECT_TRUE(client_->UploadKV({"kv2"}, one.K(), one.V()).ok());
  ASSERT_TRUE(client_->DeleteMatrix("m").ok());
  ASSERT_TRUE(client_->DeleteKV("kv2").ok());
  EXPECT_EQ(store_->used_bytes(), 0);
}

TEST_F(ServerTest, KvAppendsDeletesAndAttentionRace) {
  const int64_t dim = 32;
  const KvData d(2, 64, dim, 70);
  ASSERT_TRUE(client_->UploadKV({"race"}, d.K(), d.V()).ok());
  std::atomic<bool> stop{false};
  std::atomic<int> attended{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&, t] {
      auto q = Random(4 * dim, 71 + t);
      while (!stop) {
        auto out = client_->Attention("race", TensorRef::F32(q.data(), {1, 4, 1, dim}), {.causal = true});
        if (out.ok()) {
          ++attended;
          const auto floats = out->ToFloats();
          ASSERT_TRUE(floats.ok());
          for (float x : *floats) ASSERT_TRUE(std::isfinite(x));
        } else {
          ASSERT_EQ(out.status().code(), absl::StatusCode::kNotFound) << out.status();
        }
      }
    });
  }
  const KvData tok(2, 1, dim, 72);
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(client_->AppendKV("race", tok.K(), tok.V()).ok());
  EXPECT_EQ(client_->GetKV("race")->seq(), 164);
  ASSERT_TRUE(client_->DeleteKV("race").ok());
  stop = true;
  for (auto& r : readers) r.join();
  EXPECT_GT(attended.load(), 0);
  EXPECT_EQ(store_->used_bytes(), 0);  // the last request let go of the pages
}

}  // namespace
}  // namespace plume
