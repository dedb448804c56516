#include "server/grpc/convert.h"

#include <string>

namespace plume::server {

// The wire's enum numbers are the core's values; calls.h relies on it.
#define PLUME_SAME_VALUE(wire, core_value)                                      \
  static_assert(static_cast<int>(wire) == static_cast<int>(core_value), \
                "plume.v1 and core differ: " #wire)
PLUME_SAME_VALUE(v1::DTYPE_F32, DType::kF32);
PLUME_SAME_VALUE(v1::DTYPE_F16, DType::kF16);
PLUME_SAME_VALUE(v1::DTYPE_BF16, DType::kBF16);
PLUME_SAME_VALUE(v1::DTYPE_E4M3, DType::kE4M3);
PLUME_SAME_VALUE(v1::DTYPE_E5M2, DType::kE5M2);
PLUME_SAME_VALUE(v1::DTYPE_E4M3, Fp8Format::kE4M3);
PLUME_SAME_VALUE(v1::DTYPE_E5M2, Fp8Format::kE5M2);
PLUME_SAME_VALUE(v1::SCALE_MODE_NONE, ScaleMode::kNone);
PLUME_SAME_VALUE(v1::SCALE_MODE_TENSOR, ScaleMode::kTensor);
PLUME_SAME_VALUE(v1::SCALE_MODE_ROW, ScaleMode::kRow);
PLUME_SAME_VALUE(v1::SCALE_MODE_BLOCK128, ScaleMode::kBlock128);
PLUME_SAME_VALUE(v1::SCALE_MODE_BLOCK128X128, ScaleMode::kBlock128x128);
PLUME_SAME_VALUE(v1::KV_SCALE_MODE_NONE, KvScaleMode::kNone);
PLUME_SAME_VALUE(v1::KV_SCALE_MODE_TENSOR, KvScaleMode::kTensor);
PLUME_SAME_VALUE(v1::KV_SCALE_MODE_HEAD, KvScaleMode::kHead);
PLUME_SAME_VALUE(v1::KV_SCALE_MODE_TOKEN_BLOCK, KvScaleMode::kTokenBlock);
PLUME_SAME_VALUE(v1::PLACEMENT_AUTO, core::Placement::kAuto);
PLUME_SAME_VALUE(v1::PLACEMENT_SINGLE, core::Placement::kSingle);
PLUME_SAME_VALUE(v1::PLACEMENT_SHARDED, core::Placement::kSharded);
PLUME_SAME_VALUE(v1::PLACEMENT_REPLICATED, core::Placement::kReplicated);
#undef PLUME_SAME_VALUE

core::TensorView ToCore(const v1::Tensor& t) {
  return {t.dtype(), absl::MakeConstSpan(t.shape().data(), static_cast<size_t>(t.shape_size())),
          t.data()};
}

core::MatrixHeader ToCore(const v1::MatrixHeader& h) {
  core::MatrixHeader c;
  c.name = h.name();
  c.rows = h.rows();
  c.cols = h.cols();
  c.source_dtype = h.source_dtype();
  c.format = h.format();
  c.scale_mode = h.scale_mode();
  c.non_saturating = h.non_saturating();
  c.placement = h.placement();
  c.max_batch = h.batching().max_batch();
  c.max_queue_delay_us = h.batching().max_queue_delay_us();
  c.max_queue_size = h.batching().max_queue_size();
  c.content_hash = h.content_hash();
  return c;
}

core::KvHeader ToCore(const v1::KVHeader& h) {
  core::KvHeader c;
  c.name = h.name();
  c.kv_heads = h.kv_heads();
  c.seq = h.seq();
  c.head_dim = h.head_dim();
  c.source_dtype = h.source_dtype();
  c.format = h.format();
  c.scale_mode = h.scale_mode();
  c.non_saturating = h.non_saturating();
  return c;
}

core::GemvCall ToCore(const v1::GemvRequest& req) {
  return {req.matrix(), ToCore(req.input()), req.output_dtype(), req.input_scale()};
}

core::AttentionCall ToCore(const v1::AttentionRequest& req) {
  return {req.cache(), ToCore(req.query()), req.softmax_scale(), req.causal(), req.output_dtype()};
}

core::AppendKvCall ToCore(const v1::AppendKVRequest& req) {
  return {req.name(), ToCore(req.k()), ToCore(req.v())};
}

void ToWire(const core::MatrixInfo& info, v1::MatrixInfo* out) {
  out->set_name(info.name);
  out->set_rows(info.rows);
  out->set_cols(info.cols);
  out->set_format(static_cast<v1::DType>(info.format));
  out->set_scale_mode(static_cast<v1::ScaleMode>(info.scale_mode));
  out->set_source_dtype(static_cast<v1::DType>(info.source_dtype));
  out->set_non_saturating(info.non_saturating);
  v1::PackedLayout* layout = out->mutable_layout();
  layout->set_padded_cols(info.padded_cols);
  layout->set_row_stride_bytes(info.padded_cols);  // one byte per code
  layout->set_num_scales(info.num_scales);
  out->set_resident_bytes(info.resident_bytes);
  out->set_created_unix_ms(info.created_unix_ms);
  out->set_backend(info.backend);
  out->set_content_hash(info.content_hash);
  out->set_placement(static_cast<v1::Placement>(info.placement.kind));
  for (int d : info.placement.devices) out->add_devices(d);
  for (int64_t r : info.placement.shard_rows) out->add_shard_rows(r);
  for (const core::GemvKernelChoice& c : info.gemv_kernels) {
    v1::GemvKernelChoice* k = out->add_gemv_kernels();
    k->set_max_batch(c.max_batch);
    k->set_activation_dtype(static_cast<v1::DType>(c.x_dtype));
    k->set_kernel(c.kernel);
    k->set_measured(c.measured);
  }
}

void ToWire(const core::KvInfo& info, v1::KVInfo* out) {
  out->set_name(info.name);
  out->set_kv_heads(info.kv_heads);
  out->set_seq(info.seq);
  out->set_head_dim(info.head_dim);
  out->set_format(static_cast<v1::DType>(info.format));
  out->set_scale_mode(static_cast<v1::KVScaleMode>(info.scale_mode));
  out->set_source_dtype(static_cast<v1::DType>(info.source_dtype));
  out->set_non_saturating(info.non_saturating);
  v1::KVLayout* layout = out->mutable_layout();
  layout->set_page_tokens(info.page_tokens);
  layout->set_row_stride_bytes(info.row_stride_bytes);
  layout->set_page_bytes(info.page_bytes);
  layout->set_pages(info.pages);
  layout->set_capacity_tokens(info.pages * info.page_tokens);
  out->set_resident_bytes(info.resident_bytes);
  out->set_created_unix_ms(info.created_unix_ms);
  out->set_backend(info.backend);
}

char* OutputTensorSink::Allocate(DType dtype, absl::Span<const int64_t> shape, size_t bytes) {
  out_->set_dtype(static_cast<v1::DType>(dtype));
  out_->mutable_shape()->Add(shape.begin(), shape.end());
  std::string* data = out_->mutable_data();
  data->resize(bytes);
  return data->data();
}

}  // namespace plume::server
