// The SDK against a small fake MatrixService in this process (127.0.0.1:0):
// chunked uploads, status mapping, token metadata, health, and GemvSession's
// matching, backpressure, per-item errors, deadlines and server death.
#include <unistd.h>

#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "plume/client/checkpoint.h"
#include "plume/client/client.h"
#include "plume/io/checkpoint.h"
#include "tests/common/wait.h"

namespace plume {
namespace {

using namespace std::chrono_literals;

// Keeps F32 matrices as floats; GEMV is plain FP32 math. Matrix names steer
// GemvStream: "slow" items are never answered, "rev" items are answered in
// reversed groups of four, anything else at once.
class FakeMatrixService final : public v1::MatrixService::Service {
 public:
  std::string required_token;
  std::atomic<int> data_chunks{0};
  std::atomic<int> scale_chunks{0};
  std::atomic<int64_t> data_bytes{0};
  std::atomic<int64_t> scale_bytes{0};
  std::atomic<int> slow_items{0};  // "slow" stream items read (and never answered)

  grpc::Status UploadMatrix(grpc::ServerContext* ctx, grpc::ServerReader<v1::UploadMatrixRequest>* reader,
                            v1::UploadMatrixResponse* resp) override {
    if (auto s = CheckToken(ctx); !s.ok()) return s;
    v1::UploadMatrixRequest req;
    if (!reader->Read(&req) || !req.has_header()) {
      return {grpc::StatusCode::INVALID_ARGUMENT, "first message must be a header"};
    }
    const v1::MatrixHeader h = req.header();
    std::string data, scales;
    while (reader->Read(&req)) {
      if (req.has_data()) {
        ++data_chunks;
        data += req.data();
      } else if (req.has_scales()) {
        ++scale_chunks;
        scales += req.scales();
      } else {
        return {grpc::StatusCode::INVALID_ARGUMENT, "second header"};
      }
    }
    data_bytes = static_cast<int64_t>(data.size());
    scale_bytes = static_cast<int64_t>(scales.size());
    if (h.source_dtype() == v1::DTYPE_F32 &&
        static_cast<int64_t>(data.size()) != h.rows() * h.cols() * 4) {
      return {grpc::StatusCode::INVALID_ARGUMENT, "size mismatch"};
    }
    v1::MatrixInfo info;
    info.set_name(h.name());
    info.set_rows(h.rows());
    info.set_cols(h.cols());
    info.set_format(h.format());
    info.set_scale_mode(h.scale_mode());
    info.set_source_dtype(h.source_dtype());
    info.set_resident_bytes(static_cast<int64_t>(data.size() + scales.size()));
    info.set_content_hash(h.content_hash());
    info.mutable_layout()->set_padded_cols((h.cols() + 15) / 16 * 16);
    std::lock_guard<std::mutex> l(mu_);
    if (h.source_dtype() == v1::DTYPE_E4M3 || h.source_dtype() == v1::DTYPE_E5M2) {
      packed_[h.name()] = {data, scales};
    }
    if (h.source_dtype() == v1::DTYPE_F32) {
      std::vector<float> w(data.size() / 4);
      std::memcpy(w.data(), data.data(), data.size());
      weights_[h.name()] = std::move(w);
    }
    infos_[h.name()] = info;
    *resp->mutable_matrix() = info;
    return grpc::Status::OK;
  }

  grpc::Status GetMatrix(grpc::ServerContext* ctx, const v1::GetMatrixRequest* req,
                         v1::GetMatrixResponse* resp) override {
    if (auto s = CheckToken(ctx); !s.ok()) return s;
    std::lock_guard<std::mutex> l(mu_);
    auto it = infos_.find(req->name());
    if (it == infos_.end()) return NotFound(req->name());
    *resp->mutable_matrix() = it->second;
    if (req->include_packed()) {
      auto p = packed_.find(req->name());
      if (p != packed_.end()) {
        resp->set_packed_words(p->second.first);
        resp->set_scales(p->second.second);
      }
    }
    return grpc::Status::OK;
  }

  grpc::Status ListMatrices(grpc::ServerContext* ctx, const v1::ListMatricesRequest*,
                            v1::ListMatricesResponse* resp) override {
    if (auto s = CheckToken(ctx); !s.ok()) return s;
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& [name, info] : infos_) *resp->add_matrices() = info;
    return grpc::Status::OK;
  }

  grpc::Status DeleteMatrix(grpc::ServerContext* ctx, const v1::DeleteMatrixRequest* req,
                            v1::DeleteMatrixResponse*) override {
    if (auto s = CheckToken(ctx); !s.ok()) return s;
    std::lock_guard<std::mutex> l(mu_);
    if (infos_.erase(req->name()) == 0) return NotFound(req->name());
    weights_.erase(req->name());
    return grpc::Status::OK;
  }

  grpc::Status Gemv(grpc::ServerContext* ctx, const v1::GemvRequest* req, v1::GemvResponse* resp) override {
    if (auto s = CheckToken(ctx); !s.ok()) return s;
    v1::Status item;
    Compute(*req, resp, &item);
    if (item.code() != 0) return {static_cast<grpc::StatusCode>(item.code()), item.message()};
    return grpc::Status::OK;
  }

  grpc::Status GemvStream(grpc::ServerContext* ctx,
                          grpc::ServerReaderWriter<v1::GemvResponse, v1::GemvRequest>* stream) override {
    if (auto s = CheckToken(ctx); !s.ok()) return s;
    v1::GemvRequest req;
    std::vector<v1::GemvResponse> group;
    while (stream->Read(&req)) {
      if (req.matrix() == "slow") {
        ++slow_items;
        continue;
      }
      v1::GemvResponse resp;
      v1::Status item;
      Compute(req, &resp, &item);
      if (item.code() != 0) *resp.mutable_status() = item;
      resp.set_request_id(req.request_id());
      if (req.matrix() == "rev") {
        group.push_back(std::move(resp));
        if (group.size() == 4) {
          for (auto it = group.rbegin(); it != group.rend(); ++it) stream->Write(*it);
          group.clear();
        }
        continue;
      }
      stream->Write(resp);
    }
    return grpc::Status::OK;
  }

 private:
  grpc::Status CheckToken(grpc::ServerContext* ctx) const {
    if (required_token.empty()) return grpc::Status::OK;
    auto it = ctx->client_metadata().find("authorization");
    if (it == ctx->client_metadata().end() ||
        std::string(it->second.data(), it->second.size()) != "Bearer " + required_token) {
      return {grpc::StatusCode::UNAUTHENTICATED, "missing or wrong bearer token"};
    }
    return grpc::Status::OK;
  }

  static grpc::Status NotFound(const std::string& name) {
    return {grpc::StatusCode::NOT_FOUND, "matrix \"" + name + "\" not found"};
  }

  // "rev" uses the weights of "w".
  void Compute(const v1::GemvRequest& req, v1::GemvResponse* resp, v1::Status* item) {
    std::lock_guard<std::mutex> l(mu_);
    const std::string name = req.matrix() == "rev" ? "w" : req.matrix();
    auto it = infos_.find(name);
    if (it == infos_.end()) {
      item->set_code(grpc::StatusCode::NOT_FOUND);
      item->set_message("matrix \"" + req.matrix() + "\" not found");
      return;
    }
    const int64_t rows = it->second.rows(), cols = it->second.cols();
    const auto& in = req.input();
    const int64_t batch = in.shape_size() == 2 ? in.shape(0) : 1;
    if (in.dtype() != v1::DTYPE_F32 || in.shape(in.shape_size() - 1) != cols ||
        static_cast<int64_t>(in.data().size()) != batch * cols * 4) {
      item->set_code(grpc::StatusCode::INVALID_ARGUMENT);
      item->set_message("bad input");
      return;
    }
    const std::vector<float>& w = weights_[name];
    std::vector<float> x(static_cast<size_t>(batch * cols)), y(static_cast<size_t>(batch * rows));
    std::memcpy(x.data(), in.data().data(), in.data().size());
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t r = 0; r < rows; ++r) {
        float acc = 0;
        for (int64_t c = 0; c < cols; ++c) acc += w[r * cols + c] * x[b * cols + c];
        y[b * rows + r] = acc;
      }
    }
    auto* out = resp->mutable_output();
    out->set_dtype(v1::DTYPE_F32);
    if (in.shape_size() == 2) out->add_shape(batch);
    out->add_shape(rows);
    out->set_data(y.data(), y.size() * 4);
  }

  std::mutex mu_;
  std::map<std::string, v1::MatrixInfo> infos_;
  std::map<std::string, std::vector<float>> weights_;
  std::map<std::string, std::pair<std::string, std::string>> packed_;  // pre-packed: words, scales
};

class SdkTest : public ::testing::Test {
 protected:
  void SetUp() override { StartServer(); }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + 1s);
  }

  void StartServer() {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    b.RegisterService(&service_);
    server_ = b.BuildAndStart();
    ASSERT_TRUE(server_ != nullptr);
    ASSERT_GT(port_, 0);
  }

  std::unique_ptr<Client> MakeClient(ClientOptions o = {}) {
    o.target = "127.0.0.1:" + std::to_string(port_);
    auto c = Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return *std::move(c);
  }

  // Uploads a random rows x cols F32 matrix as "w" and returns it.
  std::vector<float> UploadW(Client& c, int64_t rows, int64_t cols) {
    std::vector<float> w = RandomFloats(rows * cols, 42);
    UploadSpec spec;
    spec.name = "w";
    auto info = c.UploadMatrix(spec, TensorRef::F32(w.data(), {rows, cols}));
    EXPECT_TRUE(info.ok()) << info.status();
    return w;
  }

  static std::vector<float> RandomFloats(int64_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> d(-1.0f, 1.0f);
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = d(rng) + (d(rng) > 0 ? 1e-3f : -1e-3f);
    return v;
  }

  static std::vector<float> Reference(const std::vector<float>& w, const std::vector<float>& x, int64_t rows,
                                      int64_t cols) {
    std::vector<float> y(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
      float acc = 0;
      for (int64_t c = 0; c < cols; ++c) acc += w[r * cols + c] * x[c];
      y[r] = acc;
    }
    return y;
  }

  FakeMatrixService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST(StatusTest, FormatAndMapping) {
  EXPECT_EQ(FormatStatus(absl::NotFoundError("matrix \"x\" not found")), "NOT_FOUND: matrix \"x\" not found");
  EXPECT_EQ(FormatStatus(absl::OkStatus()), "OK");
  const absl::Status s = FromGrpcStatus(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "full"));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "full");
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
  EXPECT_EQ(StatusFromCode(99, "x").code(), absl::StatusCode::kUnknown);
}

TEST(TensorTest, ValidateAndFloats) {
  const float v[3] = {1.5f, -2.0f, 3.25f};
  EXPECT_TRUE(ValidateTensor(TensorRef::F32(v, {3})).ok());
  EXPECT_FALSE(ValidateTensor(TensorRef{v1::DTYPE_F32, {4}, std::string_view("abcd")}).ok());
  EXPECT_FALSE(ValidateTensor(TensorRef{v1::DTYPE_UNSPECIFIED, {1}, std::string_view("abcd")}).ok());
  EXPECT_FALSE(ValidateTensor(TensorRef{v1::DTYPE_F32, {-1}, std::string_view()}).ok());
  HostTensor h{v1::DTYPE_F16, {2}, std::string("\x00\x3c\x00\xc0", 4)};  // 1.0, -2.0
  auto f = h.ToFloats();
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(*f, (std::vector<float>{1.0f, -2.0f}));
  HostTensor e{v1::DTYPE_E4M3, {1}, std::string("\x01", 1)};
  EXPECT_FALSE(e.ToFloats().ok());
}

TEST_F(SdkTest, UploadStreamsChunksAndReportsProgress) {
  ClientOptions o;
  o.upload_chunk_bytes = 4096;
  auto c = MakeClient(o);
  const int64_t rows = 37, cols = 101;  // 14948 bytes -> 4 chunks
  std::vector<float> w = RandomFloats(rows * cols, 1);
  std::vector<std::pair<int64_t, int64_t>> calls;
  UploadSpec spec;
  spec.name = "m";
  spec.scale_mode = v1::SCALE_MODE_BLOCK128;
  auto info = c->UploadMatrix(spec, TensorRef::F32(w.data(), {rows, cols}),
                              [&](int64_t sent, int64_t total) { calls.emplace_back(sent, total); });
  ASSERT_TRUE(info.ok()) << FormatStatus(info.status());
  EXPECT_EQ(info->rows(), rows);
  EXPECT_EQ(info->cols(), cols);
  EXPECT_EQ(info->scale_mode(), v1::SCALE_MODE_BLOCK128);
  EXPECT_EQ(service_.data_chunks.load(), 4);
  EXPECT_EQ(service_.data_bytes.load(), rows * cols * 4);
  ASSERT_FALSE(calls.empty());
  for (size_t i = 1; i < calls.size(); ++i) EXPECT_GE(calls[i].first, calls[i - 1].first);
  EXPECT_EQ(calls.back().first, rows * cols * 4);
  EXPECT_EQ(calls.back().second, rows * cols * 4);

  // Not 2-D / wrong size: rejected locally.
  EXPECT_EQ(c->UploadMatrix(spec, TensorRef::F32(w.data(), {rows * cols})).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(SdkTest, UploadPackedSendsWordsThenScales) {
  ClientOptions o;
  o.upload_chunk_bytes = 4096;
  auto c = MakeClient(o);
  const int64_t rows = 20, cols = 300;  // padded 304 -> 76 words per row
  std::vector<uint32_t> words(static_cast<size_t>(rows * 76), 0x3c3c3c3cu);
  std::vector<float> scales(static_cast<size_t>(rows), 0.5f);
  UploadSpec spec;
  spec.name = "p";
  auto info = c->UploadPacked(spec, rows, cols, words.data(), static_cast<int64_t>(words.size()),
                              scales.data(), rows);
  ASSERT_TRUE(info.ok()) << FormatStatus(info.status());
  EXPECT_EQ(info->source_dtype(), v1::DTYPE_E4M3);
  EXPECT_EQ(service_.data_bytes.load(), static_cast<int64_t>(words.size() * 4));
  EXPECT_EQ(service_.scale_bytes.load(), rows * 4);
  EXPECT_EQ(service_.scale_chunks.load(), 1);
}

// An FP8 matrix goes pre-packed with its content hash; GetMatrixPacked asks
// for the resident words and scales and hands them back as sent.
TEST_F(SdkTest, Fp8UploadContentHashAndReadBack) {
  ClientOptions o;
  o.upload_chunk_bytes = 4096;
  auto c = MakeClient(o);
  const int64_t rows = 130, cols = 300;
  std::string codes(static_cast<size_t>(rows * cols), '\0');
  std::mt19937 rng(3);
  for (auto& ch : codes) ch = static_cast<char>(rng() % 0x7e);
  auto m = io::Fp8MatrixFromCodes(Fp8Format::kE5M2, {rows, cols}, codes, true, {2, 3},
                                  {0.5f, 0.25f, 2.0f, 1.0f, 0.125f, 4.0f});
  ASSERT_TRUE(m.ok()) << m.status();
  UploadSpec spec;
  spec.name = "fp8";
  auto info = UploadFp8Matrix(*c, spec, *m);
  ASSERT_TRUE(info.ok()) << FormatStatus(info.status());
  EXPECT_EQ(info->source_dtype(), v1::DTYPE_E5M2);
  EXPECT_EQ(info->format(), v1::DTYPE_E5M2);
  EXPECT_EQ(info->scale_mode(), v1::SCALE_MODE_BLOCK128X128);
  EXPECT_EQ(info->content_hash(), io::Fp8ContentHash(*m, false).value());
  EXPECT_EQ(service_.data_bytes.load(), rows * 304);
  EXPECT_EQ(service_.scale_bytes.load(), 6 * 4);

  auto p = c->GetMatrixPacked("fp8");
  ASSERT_TRUE(p.ok()) << FormatStatus(p.status());
  EXPECT_EQ(p->words, io::PackFp8Codes(codes, rows, cols));
  EXPECT_EQ(io::UnpackFp8Codes(p->words.data(), rows, cols), codes);
  EXPECT_EQ(p->scales, m->scales);
  EXPECT_TRUE(VerifyResident(*c, "fp8", *m).ok());
  io::Fp8Matrix other = *m;
  std::string flipped = codes;
  flipped[1000] = static_cast<char>(flipped[1000] ^ 1);
  other.codes = io::ByteSource(flipped);
  EXPECT_EQ(VerifyResident(*c, "fp8", other).code(), absl::StatusCode::kDataLoss);

  // An explicit hash is sent as given; a matrix without packed codes is refused.
  spec.name = "fp8b";
  spec.content_hash = "sha256:abc";
  info = UploadFp8Matrix(*c, spec, *m);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->content_hash(), "sha256:abc");
  spec.content_hash = "has space";  // refused before anything is sent
  EXPECT_EQ(UploadFp8Matrix(*c, spec, *m).status().code(), absl::StatusCode::kInvalidArgument);
  spec.content_hash = std::string(129, 'a');
  EXPECT_EQ(UploadFp8Matrix(*c, spec, *m).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> w(static_cast<size_t>(4 * 16), 1.0f);
  UploadSpec fs;
  fs.name = "f";
  ASSERT_TRUE(c->UploadMatrix(fs, TensorRef::F32(w.data(), {4, 16})).ok());
  EXPECT_EQ(c->GetMatrixPacked("f").status().code(), absl::StatusCode::kFailedPrecondition);
}

// Codes read from a file as they are sent: packed a message at a time
// (ragged rows padded across message boundaries), and a file that turns out
// shorter than its codes fails the upload with the read's error (the call is
// cancelled; this fake server keeps what it got, the real one nothing).
TEST_F(SdkTest, PackedCodesFromAFileArePackedAsTheyAreSent) {
  ClientOptions o;
  o.upload_chunk_bytes = 4096;  // rows of 304 bytes cut at odd places
  auto c = MakeClient(o);
  const int64_t rows = 50, cols = 300;
  std::string codes(static_cast<size_t>(rows * cols), '\0');
  std::mt19937 rng(8);
  for (auto& ch : codes) ch = static_cast<char>(1 + rng() % 0x7d);
  const std::string path = ::testing::TempDir() + "/plume_sdk_codes_" + std::to_string(getpid());
  {
    std::ofstream f(path, std::ios::binary);
    f << "xyz" << codes;
  }
  auto file = io::FileHandle::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const std::vector<float> scales(static_cast<size_t>(rows), 0.5f);
  UploadSpec spec;
  spec.name = "from-file";
  spec.scale_mode = v1::SCALE_MODE_ROW;
  auto info = c->UploadPackedCodes(spec, rows, cols, io::ByteSource(*file, 3, codes.size()), scales.data(), rows);
  ASSERT_TRUE(info.ok()) << FormatStatus(info.status());
  EXPECT_EQ(service_.data_bytes.load(), rows * 304);
  auto p = c->GetMatrixPacked("from-file");
  ASSERT_TRUE(p.ok()) << FormatStatus(p.status());
  EXPECT_EQ(p->words, io::PackFp8Codes(codes, rows, cols));

  spec.name = "short";
  auto cut = c->UploadPackedCodes(spec, rows, cols + 16, io::ByteSource(*file, 3, rows * (cols + 16)),
                                  scales.data(), rows);
  EXPECT_EQ(cut.status().code(), absl::StatusCode::kDataLoss) << FormatStatus(cut.status());
  std::remove(path.c_str());
}

TEST_F(SdkTest, UnaryCallsAndErrors) {
  auto c = MakeClient();
  const int64_t rows = 9, cols = 33;
  std::vector<float> w = UploadW(*c, rows, cols);
  auto list = c->ListMatrices();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name(), "w");
  auto info = c->GetMatrix("w");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->cols(), cols);

  std::vector<float> x = RandomFloats(2 * cols, 7);
  auto y = c->Gemv("w", TensorRef::F32(x.data(), {2, cols}));
  ASSERT_TRUE(y.ok()) << FormatStatus(y.status());
  EXPECT_EQ(y->shape, (std::vector<int64_t>{2, rows}));
  auto yf = y->ToFloats();
  ASSERT_TRUE(yf.ok());
  const std::vector<float> x1(x.begin() + cols, x.end());
  const auto ref1 = Reference(w, x1, rows, cols);
  for (int64_t r = 0; r < rows; ++r) EXPECT_FLOAT_EQ((*yf)[rows + r], ref1[r]);

  auto missing = c->GetMatrix("x");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(FormatStatus(missing.status()), "NOT_FOUND: matrix \"x\" not found");
  EXPECT_EQ(c->Gemv("nope", TensorRef::F32(x.data(), {cols})).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(c->DeleteMatrix("w").ok());
  EXPECT_EQ(c->DeleteMatrix("w").code(), absl::StatusCode::kNotFound);

  auto health = c->CheckHealth();
  ASSERT_TRUE(health.ok()) << FormatStatus(health.status());
  EXPECT_EQ(*health, HealthStatus::kServing);
}

TEST_F(SdkTest, BearerToken) {
  service_.required_token = "s3cret";
  auto anon = MakeClient();
  EXPECT_EQ(anon->ListMatrices().status().code(), absl::StatusCode::kUnauthenticated);
  ClientOptions o;
  o.bearer_token = "s3cret";
  auto c = MakeClient(o);
  EXPECT_TRUE(c->ListMatrices().ok());
}

TEST_F(SdkTest, UnreachableServerFailsWithUnavailable) {
  ClientOptions o;
  o.target = "127.0.0.1:1";
  o.default_timeout = 2s;
  auto c = Client::Connect(o);
  ASSERT_TRUE(c.ok());
  const absl::Status s = (*c)->ListMatrices().status();
  EXPECT_TRUE(s.code() == absl::StatusCode::kUnavailable || s.code() == absl::StatusCode::kDeadlineExceeded)
      << FormatStatus(s);
}

TEST_F(SdkTest, ConnectRejectsBadOptions) {
  ClientOptions o;
  o.tls_ca_file = "/nonexistent/ca.pem";
  EXPECT_FALSE(Client::Connect(o).ok());
  ClientOptions p;
  p.load_balancing_policy = "bogus";
  EXPECT_FALSE(Client::Connect(p).ok());
  ClientOptions q;
  q.tls_cert_file = "/tmp/cert.pem";  // cert without key
  EXPECT_FALSE(Client::Connect(q).ok());
}

TEST_F(SdkTest, SessionMatchesOutOfOrderResultsByRequestId) {
  auto c = MakeClient();
  const int64_t rows = 5, cols = 16;
  std::vector<float> w = UploadW(*c, rows, cols);
  GemvSessionOptions so;
  so.max_in_flight = 4;
  auto s = c->StartGemvSession("rev", so);
  ASSERT_TRUE(s.ok());
  std::vector<std::vector<float>> xs;
  std::vector<std::future<absl::StatusOr<GemvResult>>> futures;
  for (int i = 0; i < 12; ++i) {  // the 5th Push waits for the first group's replies
    xs.push_back(RandomFloats(cols, 100 + i));
    futures.push_back((*s)->Push(TensorRef::F32(xs.back().data(), {cols})));
    EXPECT_LE((*s)->in_flight(), 4);
  }
  std::vector<uint64_t> ids;
  for (int i = 0; i < 12; ++i) {
    auto r = futures[i].get();
    ASSERT_TRUE(r.ok()) << FormatStatus(r.status());
    ids.push_back(r->request_id);
    auto y = r->output.ToFloats();
    ASSERT_TRUE(y.ok());
    const auto ref = Reference(w, xs[i], rows, cols);
    for (int64_t k = 0; k < rows; ++k) EXPECT_FLOAT_EQ((*y)[k], ref[k]) << i;
  }
  EXPECT_EQ(std::set<uint64_t>(ids.begin(), ids.end()).size(), 12u);
  EXPECT_TRUE((*s)->Finish().ok());
  EXPECT_TRUE((*s)->Finish().ok());  // idempotent
  // Push after Finish: a ready failure.
  auto late = (*s)->Push(TensorRef::F32(xs[0].data(), {cols})).get();
  EXPECT_EQ(late.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(SdkTest, SessionPerItemErrorsFailOnlyThatItem) {
  auto c = MakeClient();
  const int64_t rows = 3, cols = 8;
  UploadW(*c, rows, cols);
  auto s = c->StartGemvSession("w");
  ASSERT_TRUE(s.ok());
  std::vector<float> x = RandomFloats(cols, 3), bad = RandomFloats(cols + 1, 4);
  auto f1 = (*s)->Push(TensorRef::F32(x.data(), {cols}));
  auto f2 = (*s)->Push(TensorRef::F32(bad.data(), {cols + 1}));
  auto f3 = (*s)->Push(TensorRef{v1::DTYPE_F32, {cols}, std::string_view("xx")});  // fails locally
  std::atomic<int> callbacks{0};
  std::promise<absl::StatusOr<GemvResult>> cb_result;
  const uint64_t id = (*s)->Push(TensorRef::F32(x.data(), {cols}), [&](uint64_t rid, absl::StatusOr<GemvResult> r) {
    ++callbacks;
    EXPECT_TRUE(!r.ok() || r->request_id == rid);
    cb_result.set_value(std::move(r));
  });
  EXPECT_GT(id, 0u);
  EXPECT_TRUE(f1.get().ok());
  auto e2 = f2.get();
  EXPECT_EQ(e2.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f3.get().status().code(), absl::StatusCode::kInvalidArgument);
  auto cr = cb_result.get_future().get();
  EXPECT_TRUE(cr.ok());
  EXPECT_EQ(cr->request_id, id);
  EXPECT_TRUE((*s)->Finish().ok());
  EXPECT_EQ(callbacks.load(), 1);

  // A stream on an unknown matrix: every item fails NOT_FOUND, the stream is OK.
  auto s2 = c->StartGemvSession("ghost");
  ASSERT_TRUE(s2.ok());
  auto g = (*s2)->Push(TensorRef::F32(x.data(), {cols})).get();
  EXPECT_EQ(g.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE((*s2)->Finish().ok());
}

TEST_F(SdkTest, SessionDeadlineFailsBlockedPushAndPendingItems) {
  auto c = MakeClient();
  UploadW(*c, 2, 4);
  GemvSessionOptions so;
  so.max_in_flight = 3;
  so.timeout = 500ms;
  auto s = c->StartGemvSession("slow", so);
  ASSERT_TRUE(s.ok());
  std::vector<float> x = RandomFloats(4, 5);
  std::vector<std::future<absl::StatusOr<GemvResult>>> fs;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 4; ++i) fs.push_back((*s)->Push(TensorRef::F32(x.data(), {4})));  // 4th blocks
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 300ms);
  for (auto& f : fs) EXPECT_EQ(f.get().status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ((*s)->Finish().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST_F(SdkTest, SessionServerDeathFailsPendingItems) {
  auto c = MakeClient();
  UploadW(*c, 2, 4);
  GemvSessionOptions so;
  so.timeout = 60s;
  auto s = c->StartGemvSession("slow", so);
  ASSERT_TRUE(s.ok());
  std::vector<float> x = RandomFloats(4, 6);
  std::vector<std::future<absl::StatusOr<GemvResult>>> fs;
  for (int i = 0; i < 3; ++i) fs.push_back((*s)->Push(TensorRef::F32(x.data(), {4})));
  // All three pending on the server when it goes.
  ASSERT_TRUE(testing::WaitUntil("the server to read the 3 items",
                                 [&] { return service_.slow_items == 3; }))
      << service_.slow_items << " read";
  const auto t0 = std::chrono::steady_clock::now();
  server_->Shutdown(std::chrono::system_clock::now());  // cancels the stream
  server_.reset();
  for (auto& f : fs) {
    ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
    EXPECT_FALSE(f.get().ok());
  }
  EXPECT_FALSE((*s)->Finish().ok());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
}

TEST_F(SdkTest, SessionDestroyedWithoutFinishCancels) {
  auto c = MakeClient();
  UploadW(*c, 2, 4);
  std::vector<float> x = RandomFloats(4, 8);
  std::future<absl::StatusOr<GemvResult>> f;
  {
    auto s = c->StartGemvSession("slow");
    ASSERT_TRUE(s.ok());
    f = (*s)->Push(TensorRef::F32(x.data(), {4}));
  }
  ASSERT_EQ(f.wait_for(5s), std::future_status::ready);
  EXPECT_EQ(f.get().status().code(), absl::StatusCode::kCancelled);
}

TEST_F(SdkTest, SessionConcurrentPushers) {
  auto c = MakeClient();
  const int64_t rows = 4, cols = 32;
  std::vector<float> w = UploadW(*c, rows, cols);
  GemvSessionOptions so;
  so.max_in_flight = 5;
  auto s = c->StartGemvSession("w", so);
  ASSERT_TRUE(s.ok());
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::vector<float> x = RandomFloats(cols, 1000 + t);
      const auto ref = Reference(w, x, rows, cols);
      for (int i = 0; i < 50; ++i) {
        auto r = (*s)->Push(TensorRef::F32(x.data(), {cols})).get();
        if (r.ok() && r->output.ToFloats().value() == ref) ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 200);
  EXPECT_TRUE((*s)->Finish().ok());
}

}  // namespace
}  // namespace plume
