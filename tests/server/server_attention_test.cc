// The real server, in process on 127.0.0.1:0, driven through the real SDK:
// the AttentionService (K/V uploads, appends, attention, its error codes and
// its share of the budget), on server_test.cc's fixture (server_fixture.h).
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "plume/client/client.h"
#include "plume/reference/api.h"
#include "plume/reference/attention.h"
#include "plume/reference/naive.h"
#include "server/core/attention_service.h"
#include "server/core/kv_store.h"
#include "server/core/matrix_store.h"
#include "server/core/metrics.h"
#include "tests/common/attention_reference.h"
#include "tests/common/wait.h"
#include "tests/server/server_fixture.h"

namespace plume {
namespace {

using namespace server_test;

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
