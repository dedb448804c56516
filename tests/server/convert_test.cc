// server/grpc/convert.h: plume.v1 messages to the core's structs and back.
// Every field arrives; requests are views of the message's own bytes (no
// copy), and a result is written into the response's own bytes field.
#include "server/grpc/convert.h"

#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/core/validation.h"

namespace plume::server {
namespace {

TEST(ToCore, AGemvRequestIsAViewOfItsMessage) {
  v1::GemvRequest req;
  req.set_matrix("layer0.attn_q-proj");  // longer than a short string's inline buffer
  req.set_request_id(9);
  req.set_output_dtype(v1::DTYPE_BF16);
  req.set_input_scale(0.25f);
  v1::Tensor* in = req.mutable_input();
  in->set_dtype(v1::DTYPE_E5M2);
  in->add_shape(3);
  in->add_shape(40);
  in->set_data(std::string(120, 'x'));

  const core::GemvCall call = ToCore(req);
  EXPECT_EQ(call.matrix, "layer0.attn_q-proj");
  EXPECT_EQ(call.matrix.data(), req.matrix().data());
  EXPECT_EQ(call.output_dtype, static_cast<int>(DType::kBF16));
  EXPECT_EQ(call.input_scale, 0.25f);
  EXPECT_EQ(call.input.dtype, static_cast<int>(DType::kE5M2));
  EXPECT_EQ(std::vector<int64_t>(call.input.shape.begin(), call.input.shape.end()),
            (std::vector<int64_t>{3, 40}));
  EXPECT_EQ(call.input.shape.data(), req.input().shape().data());
  // The vectors are the message's bytes, not a copy of them.
  EXPECT_EQ(call.input.data.data(), req.input().data().data());
  EXPECT_EQ(call.input.data.size(), 120u);
}

TEST(ToCore, AttentionAndAppendKeepEveryField) {
  v1::AttentionRequest req;
  req.set_cache("kv");
  req.set_softmax_scale(0.5f);
  req.set_causal(true);
  req.set_output_dtype(v1::DTYPE_F16);
  req.mutable_query()->set_dtype(v1::DTYPE_F32);
  for (int64_t d : {1, 4, 2, 8}) req.mutable_query()->add_shape(d);
  req.mutable_query()->set_data(std::string(256, 'q'));
  const core::AttentionCall a = ToCore(req);
  EXPECT_EQ(a.cache, "kv");
  EXPECT_EQ(a.softmax_scale, 0.5f);
  EXPECT_TRUE(a.causal);
  EXPECT_EQ(a.output_dtype, static_cast<int>(DType::kF16));
  EXPECT_EQ(a.query.shape.size(), 4u);
  EXPECT_EQ(a.query.data.data(), req.query().data().data());

  v1::AppendKVRequest append;
  append.set_name("kv");
  append.mutable_k()->set_data("kk");
  append.mutable_v()->set_data("vvv");
  append.mutable_v()->set_dtype(v1::DTYPE_BF16);
  const core::AppendKvCall c = ToCore(append);
  EXPECT_EQ(c.name, "kv");
  EXPECT_EQ(c.k.data.data(), append.k().data().data());
  EXPECT_EQ(c.v.data, "vvv");
  EXPECT_EQ(c.v.dtype, static_cast<int>(DType::kBF16));
}

TEST(ToCore, HeadersKeepEveryFieldAndUnknownEnumNumbers) {
  v1::MatrixHeader h;
  h.set_name("w");
  h.set_rows(7);
  h.set_cols(9);
  h.set_source_dtype(v1::DTYPE_E4M3);
  h.set_format(v1::DTYPE_E4M3);
  h.set_scale_mode(v1::SCALE_MODE_BLOCK128X128);
  h.set_non_saturating(true);
  h.set_placement(v1::PLACEMENT_REPLICATED);
  h.mutable_batching()->set_max_batch(3);
  h.mutable_batching()->set_max_queue_delay_us(4);
  h.mutable_batching()->set_max_queue_size(5);
  h.set_content_hash("plume64v2:01");
  const core::MatrixHeader m = ToCore(h);
  EXPECT_EQ(m.name, "w");
  EXPECT_EQ(m.rows, 7);
  EXPECT_EQ(m.cols, 9);
  EXPECT_EQ(m.source_dtype, static_cast<int>(DType::kE4M3));
  EXPECT_EQ(m.format, static_cast<int>(Fp8Format::kE4M3));
  EXPECT_EQ(m.scale_mode, static_cast<int>(ScaleMode::kBlock128x128));
  EXPECT_TRUE(m.non_saturating);
  EXPECT_EQ(m.placement, static_cast<int>(core::Placement::kReplicated));
  EXPECT_EQ(m.max_batch, 3);
  EXPECT_EQ(m.max_queue_delay_us, 4);
  EXPECT_EQ(m.max_queue_size, 5);
  EXPECT_EQ(m.content_hash, "plume64v2:01");
  // A number the wire does not define reaches the validator as it is.
  h.set_scale_mode(static_cast<v1::ScaleMode>(42));
  EXPECT_EQ(ToCore(h).scale_mode, 42);

  v1::KVHeader kv;
  kv.set_name("c");
  kv.set_kv_heads(2);
  kv.set_seq(70);
  kv.set_head_dim(24);
  kv.set_source_dtype(v1::DTYPE_F16);
  kv.set_format(v1::DTYPE_E5M2);
  kv.set_scale_mode(v1::KV_SCALE_MODE_HEAD);
  kv.set_non_saturating(true);
  const core::KvHeader k = ToCore(kv);
  EXPECT_EQ(k.name, "c");
  EXPECT_EQ(k.kv_heads, 2);
  EXPECT_EQ(k.seq, 70);
  EXPECT_EQ(k.head_dim, 24);
  EXPECT_EQ(k.source_dtype, static_cast<int>(DType::kF16));
  EXPECT_EQ(k.format, static_cast<int>(Fp8Format::kE5M2));
  EXPECT_EQ(k.scale_mode, static_cast<int>(KvScaleMode::kHead));
  EXPECT_TRUE(k.non_saturating);
}

TEST(OutputTensorSink, TheResultIsWrittenIntoTheResponsesOwnBytes) {
  v1::GemvResponse resp;
  OutputTensorSink sink(resp.mutable_output());
  core::ResultSink& out = sink;
  const int64_t shape[] = {2, 5};
  char* y = out.Allocate(DType::kF16, shape, 20);
  EXPECT_EQ(resp.output().dtype(), v1::DTYPE_F16);
  EXPECT_EQ(std::vector<int64_t>(resp.output().shape().begin(), resp.output().shape().end()),
            (std::vector<int64_t>{2, 5}));
  ASSERT_EQ(resp.output().data().size(), 20u);
  EXPECT_EQ(y, resp.output().data().data());
  for (int i = 0; i < 20; ++i) y[i] = static_cast<char>('a' + i);
  EXPECT_EQ(resp.output().data(), "abcdefghijklmnopqrst");
}

TEST(ToWire, MatrixInfoKeepsEveryField) {
  core::MatrixInfo info;
  info.name = "w";
  info.rows = 300;
  info.cols = 1000;
  info.format = Fp8Format::kE5M2;
  info.scale_mode = ScaleMode::kBlock128;
  info.source_dtype = DType::kBF16;
  info.non_saturating = true;
  info.padded_cols = 1008;
  info.num_scales = 2400;
  info.resident_bytes = 312000;
  info.created_unix_ms = 1700000000123;
  info.backend = "cpu:0,1";
  info.content_hash = "plume64v2:ff";
  info.placement = {core::Placement::kSharded, {0, 1}, {128, 172}};
  info.gemv_kernels = {{16, DType::kF16, "gemv_e5m2_f16_b16", true}};
  v1::MatrixInfo out;
  ToWire(info, &out);
  EXPECT_EQ(out.name(), "w");
  EXPECT_EQ(out.rows(), 300);
  EXPECT_EQ(out.cols(), 1000);
  EXPECT_EQ(out.format(), v1::DTYPE_E5M2);
  EXPECT_EQ(out.scale_mode(), v1::SCALE_MODE_BLOCK128);
  EXPECT_EQ(out.source_dtype(), v1::DTYPE_BF16);
  EXPECT_TRUE(out.non_saturating());
  EXPECT_EQ(out.layout().padded_cols(), 1008);
  EXPECT_EQ(out.layout().row_stride_bytes(), 1008);
  EXPECT_EQ(out.layout().num_scales(), 2400);
  EXPECT_EQ(out.resident_bytes(), 312000);
  EXPECT_EQ(out.created_unix_ms(), 1700000000123);
  EXPECT_EQ(out.backend(), "cpu:0,1");
  EXPECT_EQ(out.content_hash(), "plume64v2:ff");
  EXPECT_EQ(out.placement(), v1::PLACEMENT_SHARDED);
  EXPECT_EQ(std::vector<int>(out.devices().begin(), out.devices().end()), (std::vector<int>{0, 1}));
  EXPECT_EQ(std::vector<int64_t>(out.shard_rows().begin(), out.shard_rows().end()),
            (std::vector<int64_t>{128, 172}));
  ASSERT_EQ(out.gemv_kernels_size(), 1);
  EXPECT_EQ(out.gemv_kernels(0).max_batch(), 16);
  EXPECT_EQ(out.gemv_kernels(0).activation_dtype(), v1::DTYPE_F16);
  EXPECT_EQ(out.gemv_kernels(0).kernel(), "gemv_e5m2_f16_b16");
  EXPECT_TRUE(out.gemv_kernels(0).measured());
}

TEST(ToWire, KvInfoKeepsEveryField) {
  core::KvInfo info;
  info.name = "c";
  info.kv_heads = 2;
  info.seq = 70;
  info.head_dim = 24;
  info.format = Fp8Format::kE5M2;
  info.scale_mode = KvScaleMode::kTensor;
  info.source_dtype = DType::kF16;
  info.non_saturating = true;
  info.page_tokens = 64;
  info.row_stride_bytes = 32;
  info.page_bytes = 8192;
  info.pages = 2;
  info.resident_bytes = 16392;
  info.created_unix_ms = 5;
  info.backend = "cpu";
  v1::KVInfo out;
  ToWire(info, &out);
  EXPECT_EQ(out.name(), "c");
  EXPECT_EQ(out.kv_heads(), 2);
  EXPECT_EQ(out.seq(), 70);
  EXPECT_EQ(out.head_dim(), 24);
  EXPECT_EQ(out.format(), v1::DTYPE_E5M2);
  EXPECT_EQ(out.scale_mode(), v1::KV_SCALE_MODE_TENSOR);
  EXPECT_EQ(out.source_dtype(), v1::DTYPE_F16);
  EXPECT_TRUE(out.non_saturating());
  EXPECT_EQ(out.layout().page_tokens(), 64);
  EXPECT_EQ(out.layout().row_stride_bytes(), 32);
  EXPECT_EQ(out.layout().page_bytes(), 8192);
  EXPECT_EQ(out.layout().pages(), 2);
  EXPECT_EQ(out.layout().capacity_tokens(), 128);
  EXPECT_EQ(out.resident_bytes(), 16392);
  EXPECT_EQ(out.created_unix_ms(), 5);
  EXPECT_EQ(out.backend(), "cpu");
}

// The core names wire dtypes in its messages as the wire does.
TEST(WireDTypeLabel, NamesEveryDTypeAsTheProtoDoes) {
  for (int d = v1::DType_MIN; d <= v1::DType_MAX; ++d) {
    ASSERT_TRUE(v1::DType_IsValid(d));
    EXPECT_EQ(core::WireDTypeLabel(d), v1::DType_Name(static_cast<v1::DType>(d)));
  }
  EXPECT_EQ(core::WireDTypeLabel(v1::DType_MAX + 1), "unknown dtype 6");
  EXPECT_EQ(core::WireDTypeLabel(-1), "unknown dtype -1");
}

}  // namespace
}  // namespace plume::server
