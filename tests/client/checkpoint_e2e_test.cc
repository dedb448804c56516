// FP8 checkpoints end to end: generated .safetensors checkpoints (and .npy
// codes) uploaded pre-packed through the `plume` CLI and the SDK into a real
// plume-server (CPU backend), GEMV with F32 activations against the FP64
// product of the dequantized checkpoint; `plume upload-model` over a sharded
// checkpoint, its rerun and --replace.
//
// Paths come from CMake: PLUME_SERVER_BIN and PLUME_CLI_BIN.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "plume/client/checkpoint.h"
#include "plume/client/client.h"
#include "plume/io/checkpoint.h"
#include "plume/io/npy.h"
#include "tests/common/files.h"
#include "tests/common/fp8_checkpoint.h"
#include "tests/common/gemv_reference.h"
#include "tests/common/process.h"
#include "tests/common/server_process_test.h"

namespace {

using namespace std::chrono_literals;
using plume::Fp8Format;
using plume::testing::EncodeRawSafetensors;
using plume::testing::RawTensor;

struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// A generated FP8 tensor and its scales (mode in plume.v1.ScaleMode numbering).
struct GenFp8 {
  int64_t rows = 0, cols = 0;
  Fp8Format format = Fp8Format::kE4M3;
  std::string codes;
  std::vector<int64_t> scale_shape;
  std::vector<float> scales;
  int mode = 1;

  RawTensor Codes() const { return {plume::testing::Fp8Dtype(format), {rows, cols}, codes}; }
  RawTensor Scales(const std::string& dtype) const {
    return {dtype, scale_shape, plume::testing::ScaleBytes(scales, dtype)};
  }
  std::vector<double> Dequantized() const {
    return plume::testing::Dequantize(codes, format, mode, scales, rows, cols);
  }
};

GenFp8 MakeFp8(int64_t rows, int64_t cols, Fp8Format f, std::vector<int64_t> scale_shape, int mode, uint32_t seed) {
  GenFp8 g;
  g.rows = rows;
  g.cols = cols;
  g.format = f;
  g.codes = plume::testing::RandomFp8Codes(rows * cols, f, seed);
  int64_t n = 1;
  for (int64_t d : scale_shape) n *= d;
  g.scale_shape = std::move(scale_shape);
  g.scales = plume::testing::RandomScales(n, seed + 1000);
  g.mode = mode;
  return g;
}

class CheckpointE2eTest : public plume::testing::ServerProcessTest {
 protected:
  void SetUp() override {
    ServerProcessTest::SetUp();
    ASSERT_NO_FATAL_FAILURE(StartServer({"--store_dir=" + File("store")}));
    plume::ClientOptions o;
    o.target = "127.0.0.1:" + std::to_string(port_);
    auto c = plume::Client::Connect(o);
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = std::move(*c);
  }

  RunResult Cli(std::vector<std::string> args) {
    std::vector<std::string> full = {PLUME_CLI_BIN, "--server", "127.0.0.1:" + std::to_string(port_), "--timeout",
                                     "30"};
    full.insert(full.end(), args.begin(), args.end());
    RunResult r;
    const pid_t pid = plume::testing::Spawn(full, File("cli.out"), File("cli.err"));
    if (pid <= 0) return r;
    r.exit_code = plume::testing::WaitFor(pid, 60s);
    r.out = plume::testing::SlurpFile(File("cli.out"));
    r.err = plume::testing::SlurpFile(File("cli.err"));
    return r;
  }

  void Write(const std::string& file, const std::map<std::string, RawTensor>& t) {
    plume::testing::WriteFile(File(file), EncodeRawSafetensors(t));
  }

  // GEMV of `name` on 2 F32 vectors against FP64 W x of the dequantized checkpoint.
  void ExpectGemv(const std::string& name, const std::vector<double>& w, int64_t rows, int64_t cols) {
    const int64_t batch = 2;
    const std::vector<float> x = plume::testing::RandomNormal(batch * cols, 7, 1.0f);
    auto y = client_->Gemv(name, plume::TensorRef::F32(x.data(), {batch, cols}));
    ASSERT_TRUE(y.ok()) << name << ": " << y.status();
    auto yf = y->ToFloats();
    ASSERT_TRUE(yf.ok());
    EXPECT_LE(plume::testing::GemvRelErr(w, rows, cols, x, batch, *yf), 1e-5) << name;
  }

  std::unique_ptr<plume::Client> client_;
};

// TENSOR, ROW and BLOCK128 scale tensors of every spelling, both formats,
// F32/BF16/F16 scales, a ragged 200 x 300 matrix.
TEST_F(CheckpointE2eTest, Fp8SafetensorsUploadGemvMatchesTheCheckpoint) {
  const int64_t rows = 200, cols = 300;
  struct Case {
    std::vector<int64_t> shape;
    int mode;
    const char* mode_name;
    const char* scale_suffix;
    const char* dtype;
  };
  const std::vector<Case> cases = {
      {{}, 2, "tensor", "_scale", "F32"},           {{1}, 2, "tensor", "_scale_inv", "BF16"},
      {{rows}, 3, "row", "_scale_inv", "F16"},      {{rows, 1}, 3, "row", "_scale", "F32"},
      {{rows, 3}, 4, "block128", "_scale_inv", "BF16"},
  };
  uint32_t seed = 10;
  int i = 0;
  for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
    for (const Case& k : cases) {
      const GenFp8 g = MakeFp8(rows, cols, f, k.shape, k.mode, ++seed);
      const std::string file = "ckpt" + std::to_string(i) + ".safetensors";
      const std::string name = "w" + std::to_string(i++);
      SCOPED_TRACE(name + " " + plume::testing::Fp8Dtype(f) + " scales " + plume::io::ShapeString(k.shape) + " " +
                   k.dtype);
      Write(file, {{"model.layers.0.proj.weight", g.Codes()},
                   {std::string("model.layers.0.proj.weight") + k.scale_suffix, g.Scales(k.dtype)},
                   {"model.layers.0.proj.bias", {"F32", {rows}, std::string(rows * 4, '\0')}}});
      auto up = Cli({"upload", name, File(file), "--tensor", "model.layers.0.proj.weight"});
      ASSERT_EQ(up.exit_code, 0) << up.err;
      EXPECT_NE(up.out.find(std::string("scale_mode:       ") + k.mode_name + "\n"), std::string::npos) << up.out;
      EXPECT_NE(up.out.find(std::string("source_dtype:     ") + (f == Fp8Format::kE4M3 ? "e4m3" : "e5m2")),
                std::string::npos)
          << up.out;
      ASSERT_NO_FATAL_FAILURE(ExpectGemv(name, g.Dequantized(), rows, cols));
    }
  }
}

// DeepSeek-V3's layout: one scale per 128x128 block (SCALE_MODE_BLOCK128X128).
TEST_F(CheckpointE2eTest, Block128x128UploadGemvMatchesTheCheckpoint) {
  for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
    const GenFp8 g = MakeFp8(200, 300, f, {2, 3}, 5, f == Fp8Format::kE4M3 ? 50 : 51);
    const std::string name = f == Fp8Format::kE4M3 ? "b4" : "b5";
    Write(name + ".safetensors", {{"x.weight", g.Codes()}, {"x.weight_scale_inv", g.Scales("BF16")}});
    auto up = Cli({"upload", name, File(name + ".safetensors")});
    ASSERT_EQ(up.exit_code, 0) << up.err;
    EXPECT_NE(up.out.find("scale_mode:       block128x128"), std::string::npos) << up.out;
    ASSERT_NO_FATAL_FAILURE(ExpectGemv(name, g.Dequantized(), 200, 300));
  }
}

TEST_F(CheckpointE2eTest, CodesAndScalesFromNpy) {
  const GenFp8 g = MakeFp8(200, 300, Fp8Format::kE5M2, {200, 1}, 3, 60);
  plume::testing::WriteFile(File("codes.npy"), plume::testing::EncodeNpyU8({200, 300}, g.codes));
  ASSERT_TRUE(plume::io::WriteNpy(File("scales.npy"), plume::io::FromFloats({200, 1}, g.scales.data())).ok());
  auto up = Cli({"upload", "n1", "--codes", File("codes.npy"), "--scales", File("scales.npy"), "--format", "e5m2"});
  ASSERT_EQ(up.exit_code, 0) << up.err;
  EXPECT_NE(up.out.find("scale_mode:       row"), std::string::npos) << up.out;
  ASSERT_NO_FATAL_FAILURE(ExpectGemv("n1", g.Dequantized(), 200, 300));

  // BLOCK128 scales from a [rows, ceil(cols/128)] array, E4M3.
  const GenFp8 b = MakeFp8(200, 300, Fp8Format::kE4M3, {200, 3}, 4, 61);
  plume::testing::WriteFile(File("codes2.npy"), plume::testing::EncodeNpyU8({200, 300}, b.codes));
  ASSERT_TRUE(plume::io::WriteNpy(File("scales2.npy"), plume::io::FromFloats({200, 3}, b.scales.data())).ok());
  auto up2 = Cli({"upload", "n2", "--codes", File("codes2.npy"), "--scales", File("scales2.npy"), "--format", "e4m3"});
  ASSERT_EQ(up2.exit_code, 0) << up2.err;
  ASSERT_NO_FATAL_FAILURE(ExpectGemv("n2", b.Dequantized(), 200, 300));

  // A wrong-shaped scale array, or no --format: refused before anything is sent.
  ASSERT_TRUE(plume::io::WriteNpy(File("bad.npy"), plume::io::FromFloats({3, 2}, g.scales.data())).ok());
  auto bad = Cli({"upload", "n3", "--codes", File("codes.npy"), "--scales", File("bad.npy"), "--format", "e5m2"});
  EXPECT_EQ(bad.exit_code, 2) << bad.err;
  EXPECT_NE(bad.err.find("[3, 2]"), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("[200, 300]"), std::string::npos) << bad.err;
  auto nofmt = Cli({"upload", "n3", "--codes", File("codes.npy"), "--scales", File("scales.npy")});
  EXPECT_EQ(nofmt.exit_code, 2) << nofmt.err;
  EXPECT_FALSE(client_->GetMatrix("n3").ok());
}

TEST_F(CheckpointE2eTest, ScaleProblemsAreRefusedClientSide) {
  const GenFp8 g = MakeFp8(200, 300, Fp8Format::kE4M3, {200}, 3, 70);
  Write("noscale.safetensors", {{"a.weight", g.Codes()}});
  auto none = Cli({"upload", "s1", File("noscale.safetensors")});
  EXPECT_EQ(none.exit_code, 2) << none.err;
  EXPECT_NE(none.err.find("--scale-tensor"), std::string::npos) << none.err;
  EXPECT_NE(none.err.find("--scale none"), std::string::npos) << none.err;

  // --scale none: the codes as they are, scale 1.
  auto unscaled = Cli({"upload", "s1", File("noscale.safetensors"), "--scale", "none"});
  ASSERT_EQ(unscaled.exit_code, 0) << unscaled.err;
  EXPECT_NE(unscaled.out.find("scale_mode:       none"), std::string::npos) << unscaled.out;
  ASSERT_NO_FATAL_FAILURE(ExpectGemv("s1", plume::testing::Dequantize(g.codes, g.format, 1, {}, 200, 300), 200, 300));

  // A scale tensor under another name, via --scale-tensor.
  Write("named.safetensors", {{"a.weight", g.Codes()}, {"scales_of_a", g.Scales("F32")}});
  auto named = Cli({"upload", "s2", File("named.safetensors"), "--tensor", "a.weight", "--scale-tensor", "scales_of_a"});
  ASSERT_EQ(named.exit_code, 0) << named.err;
  ASSERT_NO_FATAL_FAILURE(ExpectGemv("s2", g.Dequantized(), 200, 300));

  // Wrong shape: both shapes named.
  Write("wrong.safetensors", {{"a.weight", g.Codes()}, {"a.weight_scale_inv", {"F32", {3, 2}, std::string(24, '\0')}}});
  auto wrong = Cli({"upload", "s3", File("wrong.safetensors")});
  EXPECT_EQ(wrong.exit_code, 2) << wrong.err;
  EXPECT_NE(wrong.err.find("[3, 2]"), std::string::npos) << wrong.err;
  EXPECT_NE(wrong.err.find("[200, 300]"), std::string::npos) << wrong.err;

  // The format is the dtype's; a scale mode for FP8 comes from the scale tensor.
  Write("ok.safetensors", {{"a.weight", g.Codes()}, {"a.weight_scale", g.Scales("F32")}});
  auto fmt = Cli({"upload", "s3", File("ok.safetensors"), "--format", "e5m2"});
  EXPECT_EQ(fmt.exit_code, 2) << fmt.err;
  EXPECT_NE(fmt.err.find("F8_E4M3"), std::string::npos) << fmt.err;
  auto mode = Cli({"upload", "s3", File("ok.safetensors"), "--scale", "block128"});
  EXPECT_EQ(mode.exit_code, 2) << mode.err;
  EXPECT_FALSE(client_->GetMatrix("s3").ok());
}

TEST_F(CheckpointE2eTest, SdkUploadsACheckpointTensor) {
  const GenFp8 g = MakeFp8(200, 300, Fp8Format::kE4M3, {200, 3}, 4, 80);
  Write("sdk.safetensors", {{"q.weight", g.Codes()}, {"q.weight_scale_inv", g.Scales("F32")}});
  auto ckpt = plume::io::Checkpoint::Open(File("sdk.safetensors"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  plume::UploadSpec spec;
  spec.name = "sdk1";
  auto info = plume::UploadFp8Tensor(*client_, spec, *ckpt, "q.weight");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->scale_mode(), plume::v1::SCALE_MODE_BLOCK128);
  EXPECT_EQ(info->source_dtype(), plume::v1::DTYPE_E4M3);
  ASSERT_NO_FATAL_FAILURE(ExpectGemv("sdk1", g.Dequantized(), 200, 300));
}

// The server keeps the content hash and returns the resident codes and
// scales (GetMatrix include_packed): the file's, byte for byte.
TEST_F(CheckpointE2eTest, SdkReadBackIsTheFilesCodes) {
  const GenFp8 g = MakeFp8(200, 300, Fp8Format::kE5M2, {200}, 3, 90);
  Write("rb.safetensors", {{"q.weight", g.Codes()}, {"q.weight_scale", g.Scales("BF16")}});
  auto ckpt = plume::io::Checkpoint::Open(File("rb.safetensors"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto m = plume::io::LoadFp8Matrix(*ckpt, "q.weight");
  ASSERT_TRUE(m.ok()) << m.status();
  plume::UploadSpec spec;
  spec.name = "rb";
  auto info = plume::UploadFp8Matrix(*client_, spec, *m);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->content_hash(), plume::io::Fp8ContentHash(*m, false).value()) << "the server did not keep content_hash";
  auto p = client_->GetMatrixPacked("rb");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(plume::io::UnpackFp8Codes(p->words.data(), 200, 300), g.codes);
  EXPECT_EQ(p->scales, g.scales);
  EXPECT_TRUE(plume::VerifyResident(*client_, "rb", *m).ok());
}

// ---------------------------------------------------------------- upload-model

class UploadModelTest : public CheckpointE2eTest {
 protected:
  // Two shards and an index: an E4M3 BLOCK128 weight, an E5M2 ROW weight
  // whose scale lives in the other shard, a BF16 weight (quantized by the
  // server), and tensors that are not uploaded: a 1-D norm weight, a 2-D
  // non-weight, the scale tensors.
  void WriteSharded() {
    q_ = MakeFp8(200, 300, Fp8Format::kE4M3, {200, 3}, 4, 100);
    k_ = MakeFp8(130, 140, Fp8Format::kE5M2, {130, 1}, 3, 101);
    embed_ = plume::testing::RandomNormal(64 * 48, 102, 1.0f);
    std::string embed_bytes;
    for (float v : embed_) {
      const uint16_t b = plume::FloatToBf16Bits(v);
      embed_bytes.push_back(static_cast<char>(b & 0xff));
      embed_bytes.push_back(static_cast<char>(b >> 8));
    }
    for (float& v : embed_) v = plume::Bf16BitsToFloat(plume::FloatToBf16Bits(v));
    WriteShard1();
    Write("model-00002-of-00002.safetensors",
          {{"model.layers.0.self_attn.k_proj.weight", k_.Codes()},
           {"model.layers.0.self_attn.q_proj.weight_scale_inv", q_.Scales("F32")},
           {"model.embed_tokens.weight", {"BF16", {64, 48}, embed_bytes}},
           {"model.layers.0.input_layernorm.weight", {"F32", {300}, std::string(1200, '\0')}}});
    nlohmann::json wm;
    for (const char* n : {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight_scale_inv",
                          "model.layers.0.mlp.router_logits"}) {
      wm[n] = "model-00001-of-00002.safetensors";
    }
    for (const char* n : {"model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.q_proj.weight_scale_inv",
                          "model.embed_tokens.weight", "model.layers.0.input_layernorm.weight"}) {
      wm[n] = "model-00002-of-00002.safetensors";
    }
    plume::testing::WriteFile(File("model.safetensors.index.json"),
                              nlohmann::json{{"metadata", {{"total_size", 0}}}, {"weight_map", wm}}.dump(1));
  }
  void WriteShard1() {
    Write("model-00001-of-00002.safetensors",
          {{"model.layers.0.self_attn.q_proj.weight", q_.Codes()},
           {"model.layers.0.self_attn.k_proj.weight_scale_inv", k_.Scales("BF16")},
           {"model.layers.0.mlp.router_logits", {"F32", {4, 8}, std::string(128, '\0')}}});
  }
  RunResult UploadModel(std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"upload-model", File("model.safetensors.index.json"), "--prefix", "m-"};
    args.insert(args.end(), extra.begin(), extra.end());
    return Cli(args);
  }
  static size_t Count(const std::string& s, const std::string& what) {
    size_t n = 0;
    for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
    return n;
  }

  GenFp8 q_, k_;
  std::vector<float> embed_;
  const std::string q_name_ = "m-model.layers.0.self_attn.q_proj.weight";
  const std::string k_name_ = "m-model.layers.0.self_attn.k_proj.weight";
  const std::string embed_name_ = "m-model.embed_tokens.weight";
};

TEST_F(UploadModelTest, UploadsTheMatchingTensorsOfAShardedCheckpoint) {
  WriteSharded();
  auto r = UploadModel();
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  for (const char* col : {"NAME", "SHAPE", "DTYPE", "MODE", "BYTES", "SECONDS", "RESULT"}) {
    EXPECT_NE(r.out.find(col), std::string::npos) << r.out;
  }
  EXPECT_NE(r.out.find("3 uploaded, 0 skipped"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("100.0%"), std::string::npos) << r.err;  // one progress bar, to the end
  EXPECT_EQ(Count(r.err, "upload-model 3 tensors"), Count(r.err, "\n")) << r.err;

  auto list = client_->ListMatrices();
  ASSERT_TRUE(list.ok()) << list.status();
  std::vector<std::string> names;
  for (const auto& m : *list) names.push_back(m.name());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{embed_name_, k_name_, q_name_}));

  auto q = client_->GetMatrix(q_name_);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->scale_mode(), plume::v1::SCALE_MODE_BLOCK128);
  EXPECT_EQ(q->source_dtype(), plume::v1::DTYPE_E4M3);
  auto k = client_->GetMatrix(k_name_);
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(k->scale_mode(), plume::v1::SCALE_MODE_ROW);
  EXPECT_EQ(k->format(), plume::v1::DTYPE_E5M2);
  auto e = client_->GetMatrix(embed_name_);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->source_dtype(), plume::v1::DTYPE_BF16);
  EXPECT_EQ(e->format(), plume::v1::DTYPE_E4M3);
  ASSERT_NO_FATAL_FAILURE(ExpectGemv(q_name_, q_.Dequantized(), 200, 300));
  ASSERT_NO_FATAL_FAILURE(ExpectGemv(k_name_, k_.Dequantized(), 130, 140));
  {  // the BF16 weight, quantized by the server (E4M3, row scales)
    const plume::testing::ExpectedGemv want(embed_, 64, 48, plume::Fp8Format::kE4M3, plume::ScaleMode::kRow);
    const std::vector<float> x = plume::testing::RandomNormal(48, 3, 1.0f);
    auto y = client_->Gemv(embed_name_, plume::TensorRef::F32(x.data(), {48}));
    ASSERT_TRUE(y.ok()) << y.status();
    EXPECT_LE(want.RelErr(x, 1, *y->ToFloats()), 1e-5);
  }

  // --match picks by regular expression; a non-matching selection is a usage error.
  auto one = Cli({"upload-model", File("model.safetensors.index.json"), "--prefix", "n-", "--match", "k_proj\\.weight$"});
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_NE(one.out.find("1 uploaded"), std::string::npos) << one.out;
  EXPECT_TRUE(client_->GetMatrix("n-model.layers.0.self_attn.k_proj.weight").ok());
  auto nothing = Cli({"upload-model", File("model.safetensors.index.json"), "--match", "^nope$"});
  EXPECT_EQ(nothing.exit_code, 2) << nothing.err;
}

// The server keeps MatrixHeader.content_hash (MatrixInfo.content_hash), so a
// rerun finds every tensor resident with the same content.
TEST_F(UploadModelTest, RerunSkipsEverythingByContentHash) {
  WriteSharded();
  auto first = UploadModel();
  ASSERT_EQ(first.exit_code, 0) << first.err << first.out;
  auto q = client_->GetMatrix(q_name_);
  ASSERT_TRUE(q.ok());
  ASSERT_EQ(q->content_hash().rfind("plume64v2:", 0), 0u) << "the server did not keep the content hash";
  auto again = UploadModel();
  EXPECT_EQ(again.exit_code, 0) << again.err << again.out;
  EXPECT_NE(again.out.find("0 uploaded, 3 skipped as already resident, 0 resident with other content"),
            std::string::npos)
      << again.out;
  EXPECT_EQ(Count(again.out, "skipped (resident, same content)"), 3u) << again.out;
}

TEST_F(UploadModelTest, OtherContentIsReplacedOnlyWithReplace) {
  WriteSharded();
  auto first = UploadModel();
  ASSERT_EQ(first.exit_code, 0) << first.err << first.out;
  // New codes for q_proj.
  q_.codes = plume::testing::RandomFp8Codes(200 * 300, Fp8Format::kE4M3, 555);
  WriteShard1();
  auto refused = UploadModel();
  EXPECT_EQ(refused.exit_code, 1) << refused.err << refused.out;
  EXPECT_NE(refused.err.find(q_name_ + ": resident with content hash"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("--replace"), std::string::npos) << refused.err;
  auto replaced = UploadModel({"--replace"});
  ASSERT_EQ(replaced.exit_code, 0) << replaced.err << replaced.out;
  EXPECT_NE(replaced.out.find("replaced"), std::string::npos) << replaced.out;
  ASSERT_NO_FATAL_FAILURE(ExpectGemv(q_name_, q_.Dequantized(), 200, 300));
}

TEST_F(UploadModelTest, ProblemsAreReportedBeforeAnythingIsSent) {
  WriteSharded();
  // a.weight is FP8 without a scale tensor: nothing is uploaded, b.weight neither.
  plume::testing::WriteFile(File("lonely.safetensors"),
                            EncodeRawSafetensors({{"a.weight", q_.Codes()}, {"b.weight", k_.Codes()},
                                                  {"b.weight_scale", k_.Scales("F32")}}));
  auto r = Cli({"upload-model", File("lonely.safetensors")});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("a.weight"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--scale-tensor"), std::string::npos) << r.err;
  auto list = client_->ListMatrices();
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->empty());
}

}  // namespace
