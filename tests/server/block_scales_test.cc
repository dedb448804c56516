// BLOCK128X128 (one scale per 128x128 block, as FP8 checkpoints ship) end to
// end on the CPU backend, in process: pre-packed codes stay byte for byte
// (GetMatrix include_packed and the durable store across a restart), F32
// sources quantize per block, GEMV matches the FP64 product of the
// dequantized matrix; the content_hash label travels with the matrix; the
// store codec still reads version 1 files.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "plume/client/client.h"
#include "plume/kernels/fp8.h"
#include "plume/kernels/layout.h"
#include "plume/reference/api.h"
#include "plume/v1/plume.grpc.pb.h"
#include "server/core/crc32c.h"
#include "server/core/store_codec.h"
#include "tests/common/gemv_reference.h"
#include "tests/common/test_server.h"
#include "tests/common/files.h"

namespace plume {
namespace {

namespace fs = std::filesystem;

struct Packed {
  int64_t rows = 0, cols = 0;
  Fp8Format format = Fp8Format::kE4M3;
  std::vector<uint32_t> words;
  std::vector<float> tiles;  // [ceil(rows/128)][ceil(cols/128)]
};

// Random finite codes (no NaN or infinity codes) and random block scales.
Packed RandomCheckpoint(int64_t rows, int64_t cols, Fp8Format f, uint32_t seed) {
  Packed p{rows, cols, f, {}, {}};
  const PackedLayout l{rows, cols};
  p.words.assign(static_cast<size_t>(l.total_words()), 0);
  std::mt19937 rng(seed);
  auto* bytes = reinterpret_cast<uint8_t*>(p.words.data());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      uint8_t code;
      do {
        code = static_cast<uint8_t>(rng());
      } while (f == Fp8Format::kE4M3 ? (code & 0x7f) == 0x7f : (code & 0x7c) == 0x7c);
      bytes[r * l.padded_cols() + c] = code;
    }
  }
  std::uniform_real_distribution<float> scale(1.0f / 256, 1.0f / 4);
  p.tiles.resize(static_cast<size_t>(NumScales(ScaleMode::kBlock128x128, rows, cols)));
  for (float& s : p.tiles) s = scale(rng);
  return p;
}

// y = W x in FP64 from the codes and block scales, W row-major [rows][cols].
std::vector<double> Fp64Gemv(const Packed& p, const std::vector<float>& x, int64_t batch) {
  const PackedLayout l{p.rows, p.cols};
  std::vector<double> y(static_cast<size_t>(batch * p.rows), 0.0);
  for (int64_t r = 0; r < p.rows; ++r) {
    for (int64_t c = 0; c < p.cols; ++c) {
      const double w = double(fp8::Decode(CodeAt(p.words.data(), l, r, c), p.format)) *
                       double(ScaleAt(p.tiles.data(), ScaleMode::kBlock128x128, l, r, c));
      for (int64_t b = 0; b < batch; ++b) y[size_t(b * p.rows + r)] += w * x[size_t(b * p.cols + c)];
    }
  }
  return y;
}

double RelL2(const std::vector<double>& want, const std::vector<float>& got) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / den);
}

class BlockScalesTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(); }
  void TearDown() override { Stop(); }

  void Start() {
    core::EngineOptions eo = testing::TestEngineOptions();
    eo.store.dir = dir_.str();
    auto t = testing::StartTestServer(eo);
    ASSERT_TRUE(t.ok()) << t.status();
    server_ = std::move(*t);
    ClientOptions o;
    o.target = server_.address();
    o.upload_chunk_bytes = 4096;
    auto c = Client::Connect(o);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = std::move(*c);
    stub_ = v1::MatrixService::NewStub(client_->channel());
  }
  void Stop() {
    stub_.reset();
    client_.reset();
    if (server_.server) server_.server->Shutdown(std::chrono::milliseconds(100));
    server_.server.reset();
    server_.engine.reset();
  }

  // A pre-packed upload through the raw stub (content_hash set).
  grpc::Status UploadPacked(const std::string& name, const Packed& p, v1::ScaleMode mode,
                            const float* scales, size_t num_scales, const std::string& hash,
                            v1::MatrixInfo* info) {
    grpc::ClientContext ctx;
    v1::UploadMatrixResponse resp;
    auto w = stub_->UploadMatrix(&ctx, &resp);
    v1::UploadMatrixRequest req;
    v1::MatrixHeader* h = req.mutable_header();
    const v1::DType dt = p.format == Fp8Format::kE4M3 ? v1::DTYPE_E4M3 : v1::DTYPE_E5M2;
    h->set_name(name);
    h->set_rows(p.rows);
    h->set_cols(p.cols);
    h->set_source_dtype(dt);
    h->set_format(dt);
    h->set_scale_mode(mode);
    h->set_content_hash(hash);
    w->Write(req);
    req.Clear();
    req.set_data(std::string(reinterpret_cast<const char*>(p.words.data()), p.words.size() * 4));
    w->Write(req);
    req.Clear();
    req.set_scales(std::string(reinterpret_cast<const char*>(scales), num_scales * 4));
    w->Write(req);
    w->WritesDone();
    grpc::Status s = w->Finish();
    if (info != nullptr) *info = resp.matrix();
    return s;
  }

  v1::GetMatrixResponse GetPacked(const std::string& name) {
    grpc::ClientContext ctx;
    v1::GetMatrixRequest req;
    req.set_name(name);
    req.set_include_packed(true);
    v1::GetMatrixResponse resp;
    grpc::Status s = stub_->GetMatrix(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  }

  std::vector<float> Gemv(const std::string& name, const std::vector<float>& x, int64_t batch,
                          int64_t cols) {
    auto r = client_->Gemv(name, TensorRef::F32(x.data(), {batch, cols}));
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return {};
    auto f = r->ToFloats();
    return f.ok() ? *f : std::vector<float>{};
  }

  testing::TempDir dir_;
  testing::TestServer server_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<v1::MatrixService::Stub> stub_;
};

TEST_F(BlockScalesTest, PrePackedCodesRoundTripAndGemvMatchesFp64BothFormatsRagged) {
  for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{200, 300}, {128, 128}, {7, 515}}) {
      SCOPED_TRACE(::testing::Message() << ScaleModeName(ScaleMode::kBlock128x128) << " "
                                        << (f == Fp8Format::kE4M3 ? "e4m3 " : "e5m2 ") << rows
                                        << "x" << cols);
      const Packed p = RandomCheckpoint(rows, cols, f, uint32_t(rows * 7 + cols + int(f)));
      const std::string name = "ckpt_" + std::to_string(int(f)) + "_" + std::to_string(rows);
      v1::MatrixInfo info;
      grpc::Status s = UploadPacked(name, p, v1::SCALE_MODE_BLOCK128X128, p.tiles.data(),
                                    p.tiles.size(), "sha256:abc123", &info);
      ASSERT_TRUE(s.ok()) << s.error_message();
      EXPECT_EQ(info.scale_mode(), v1::SCALE_MODE_BLOCK128X128);
      EXPECT_EQ(info.layout().num_scales(), int64_t(p.tiles.size()));
      EXPECT_EQ(info.content_hash(), "sha256:abc123");

      const v1::GetMatrixResponse got = GetPacked(name);
      ASSERT_EQ(got.packed_words().size(), p.words.size() * 4);
      EXPECT_EQ(std::memcmp(got.packed_words().data(), p.words.data(), p.words.size() * 4), 0);
      ASSERT_EQ(got.scales().size(), p.tiles.size() * 4);
      EXPECT_EQ(std::memcmp(got.scales().data(), p.tiles.data(), p.tiles.size() * 4), 0);

      const int64_t batch = 3;
      const auto x = testing::RandomNormal(batch * cols, uint32_t(cols));
      const auto y = Gemv(name, x, batch, cols);
      ASSERT_EQ(y.size(), size_t(batch * rows));
      EXPECT_LE(RelL2(Fp64Gemv(p, x, batch), y), 1e-5);
    }
  }
}

TEST_F(BlockScalesTest, F32SourceQuantizesPerBlockLikeTheReference) {
  const int64_t rows = 300, cols = 260;
  auto w = testing::RandomNormal(rows * cols, 11);
  w[5 * cols + 3] = 40.0f;  // one large value sets its block's scale only
  UploadSpec spec;
  spec.name = "q";
  spec.scale_mode = v1::SCALE_MODE_BLOCK128X128;
  auto info = client_->UploadMatrix(spec, TensorRef::F32(w.data(), {rows, cols}));
  ASSERT_TRUE(info.ok()) << info.status();

  Packed want{rows, cols, Fp8Format::kE4M3, {}, {}};
  want.words.resize(size_t(PackedLayout{rows, cols}.total_words()));
  want.tiles.resize(size_t(NumScales(ScaleMode::kBlock128x128, rows, cols)));
  ref::QuantizePack(w.data(), DType::kF32, rows, cols,
                    {Fp8Format::kE4M3, ScaleMode::kBlock128x128, true}, want.words.data(),
                    want.tiles.data());
  ASSERT_EQ(want.tiles.size(), 3u * 3u);
  EXPECT_FLOAT_EQ(want.tiles[0], 40.0f / 448.0f);
  EXPECT_LT(want.tiles[1], want.tiles[0] / 4);  // the neighbouring block keeps its own

  const v1::GetMatrixResponse got = GetPacked("q");
  ASSERT_EQ(got.packed_words().size(), want.words.size() * 4);
  EXPECT_EQ(std::memcmp(got.packed_words().data(), want.words.data(), want.words.size() * 4), 0);
  ASSERT_EQ(got.scales().size(), want.tiles.size() * 4);
  EXPECT_EQ(std::memcmp(got.scales().data(), want.tiles.data(), want.tiles.size() * 4), 0);

  const auto x = testing::RandomNormal(2 * cols, 12);
  EXPECT_LE(RelL2(Fp64Gemv(want, x, 2), Gemv("q", x, 2, cols)), 1e-5);
}

TEST_F(BlockScalesTest, TheStoreKeepsBlockScalesAndTheContentHashAcrossARestart) {
  const Packed p = RandomCheckpoint(260, 130, Fp8Format::kE4M3, 21);
  ASSERT_TRUE(UploadPacked("kept", p, v1::SCALE_MODE_BLOCK128X128, p.tiles.data(),
                           p.tiles.size(), "crc:1234", nullptr)
                  .ok());
  const auto x = testing::RandomNormal(p.cols, 22);
  const auto before = Gemv("kept", x, 1, p.cols);
  Stop();
  Start();
  const v1::GetMatrixResponse got = GetPacked("kept");
  EXPECT_EQ(got.matrix().scale_mode(), v1::SCALE_MODE_BLOCK128X128);
  EXPECT_EQ(got.matrix().content_hash(), "crc:1234");
  EXPECT_EQ(std::memcmp(got.packed_words().data(), p.words.data(), p.words.size() * 4), 0);
  ASSERT_EQ(got.scales().size(), p.tiles.size() * 4);
  EXPECT_EQ(std::memcmp(got.scales().data(), p.tiles.data(), p.tiles.size() * 4), 0);
  EXPECT_EQ(Gemv("kept", x, 1, p.cols), before);  // bit for bit
}

TEST_F(BlockScalesTest, WrongScaleCountsAndBadHashesAreInvalidArgument) {
  const Packed p = RandomCheckpoint(200, 300, Fp8Format::kE4M3, 31);
  // BLOCK128's count (a scale per row per 128 columns) for a 128x128 header.
  std::vector<float> per_row(size_t(NumScales(ScaleMode::kBlock128, 200, 300)), 0.5f);
  grpc::Status s = UploadPacked("wrong", p, v1::SCALE_MODE_BLOCK128X128, per_row.data(),
                                per_row.size(), "", nullptr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find(std::to_string(p.tiles.size() * 4)), std::string::npos)
      << s.error_message();
  s = UploadPacked("hash", p, v1::SCALE_MODE_BLOCK128X128, p.tiles.data(), p.tiles.size(),
                   "bad hash with spaces", nullptr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("content_hash"), std::string::npos) << s.error_message();
  s = UploadPacked("hash", p, v1::SCALE_MODE_BLOCK128X128, p.tiles.data(), p.tiles.size(),
                   std::string(129, 'a'), nullptr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(client_->GetMatrix("wrong").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->GetMatrix("hash").status().code(), absl::StatusCode::kNotFound);
}

TEST(StoreCodecVersions, AVersionOneFileStillDecodes) {
  const Packed p = RandomCheckpoint(20, 40, Fp8Format::kE5M2, 41);
  std::vector<float> rows_scales(20, 0.25f);
  core::StoredMatrixMeta meta;
  meta.name = "old";
  meta.shape.rows = 20;
  meta.shape.cols = 40;
  meta.shape.format = Fp8Format::kE5M2;
  meta.shape.scale_mode = ScaleMode::kRow;
  meta.created_unix_ms = 1234;
  // Version 2 as written today, then rewritten as version 1 by hand: the
  // 80-byte header, the name, the payload; no content hash.
  const std::string v2 = core::EncodeMatrixFile(meta, rows_scales.data(), p.words.data());
  ASSERT_EQ(*reinterpret_cast<const uint32_t*>(v2.data() + 8), core::kMatrixFileVersion);
  std::string v1 = v2.substr(0, 80) + v2.substr(96);
  const uint32_t one = 1;
  const uint64_t size = v1.size();
  std::memcpy(v1.data() + 8, &one, 4);
  std::memcpy(v1.data() + 16, &size, 8);
  const uint32_t crc = core::Crc32c(0, v1.data() + 16, v1.size() - 16);
  std::memcpy(v1.data() + 12, &crc, 4);
  auto m = core::DecodeMatrixFile(v1);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->meta.name, "old");
  EXPECT_EQ(m->meta.content_hash, "");
  EXPECT_EQ(m->words, p.words);
  EXPECT_EQ(m->scales, rows_scales);

  meta.content_hash = "x:1";
  auto back = core::DecodeMatrixFile(core::EncodeMatrixFile(meta, rows_scales.data(), p.words.data()));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->meta.content_hash, "x:1");
}

}  // namespace
}  // namespace plume
