#include "server/core/validation.h"

#include <cmath>
#include <iterator>
#include <limits>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "server/core/sizes.h"

namespace plume::core {
namespace {

// The wire's DType numbers are core's DType values; 0 is unspecified.
constexpr int kUnspecified = 0;

bool ToDType(int d, DType* out) {
  switch (d) {
    case static_cast<int>(DType::kF32):
    case static_cast<int>(DType::kF16):
    case static_cast<int>(DType::kBF16):
    case static_cast<int>(DType::kE4M3):
    case static_cast<int>(DType::kE5M2): *out = static_cast<DType>(d); return true;
    default: return false;
  }
}

std::string DTypeLabel(int d) { return WireDTypeLabel(d); }

// a * b, or -1 when it would exceed 2^62 (sizes.h).
int64_t CheckedMul(int64_t a, int64_t b) { return sizes::Mul(a, b).value_or(-1); }

// The FP8 format of a header: E4M3 (also when unspecified) or E5M2.
absl::StatusOr<Fp8Format> ParseFormat(int d) {
  switch (d) {
    case kUnspecified:
    case static_cast<int>(DType::kE4M3): return Fp8Format::kE4M3;
    case static_cast<int>(DType::kE5M2): return Fp8Format::kE5M2;
    default:
      return absl::InvalidArgumentError(absl::StrCat("format must be E4M3 or E5M2, got ", DTypeLabel(d)));
  }
}

// A result dtype: F32 (also when unspecified), F16 or BF16.
absl::StatusOr<DType> ParseOutputDType(int d) {
  switch (d) {
    case kUnspecified:
    case static_cast<int>(DType::kF32): return DType::kF32;
    case static_cast<int>(DType::kF16): return DType::kF16;
    case static_cast<int>(DType::kBF16): return DType::kBF16;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("output_dtype must be F32, F16 or BF16, got ", DTypeLabel(d)));
  }
}

}  // namespace

std::string WireDTypeLabel(int dtype) {
  static constexpr const char* kNames[] = {"DTYPE_UNSPECIFIED", "DTYPE_F32", "DTYPE_F16",
                                           "DTYPE_BF16",        "DTYPE_E4M3", "DTYPE_E5M2"};
  if (dtype >= 0 && dtype < static_cast<int>(std::size(kNames))) return kNames[dtype];
  return absl::StrCat("unknown dtype ", dtype);
}

absl::Status ValidateName(std::string_view name, const Limits& limits, std::string_view what) {
  if (name.empty()) return absl::InvalidArgumentError(absl::StrCat(std::string(what), " name is empty"));
  if (static_cast<int64_t>(name.size()) > limits.max_name_length) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(what), " name is ", name.size(),
                                                   " characters long; the limit is ",
                                                   limits.max_name_length));
  }
  if (name.front() == '.') {
    return absl::InvalidArgumentError(absl::StrCat(std::string(what), " name must not start with '.'"));
  }
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat(std::string(what), " name may hold only letters, digits, '.', '_' and '-'"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateLimits(const Limits& l) {
  for (const auto& [flag, value, max] :
       {std::tuple{"--max_rows", l.max_rows, kMaxDimensionLimit},
        std::tuple{"--max_cols", l.max_cols, kMaxDimensionLimit},
        std::tuple{"--max_vectors_per_request", l.max_vectors_per_request, kMaxDimensionLimit},
        std::tuple{"--max_upload_bytes", l.max_upload_bytes, kMaxByteLimit},
        std::tuple{"max_name_length", l.max_name_length, int64_t{4096}},
        std::tuple{"max_kv_heads", l.max_kv_heads, kMaxDimensionLimit},
        std::tuple{"--max_head_dim", l.max_head_dim, kMaxDimensionLimit},
        std::tuple{"--max_kv_tokens", l.max_kv_seq, kMaxDimensionLimit},
        std::tuple{"--max_attention_rows", l.max_attention_rows, kMaxDimensionLimit}}) {
    if (value < 1 || value > max) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, " is ", value, "; it must be 1 to ", max));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateResponseBytes(int64_t payload_bytes, const Limits& limits,
                                   std::string_view what) {
  const bool server_limit = limits.max_response_bytes > 0 &&
                            limits.max_response_bytes < kMaxResponseBytesLimit;
  const int64_t limit = server_limit ? limits.max_response_bytes : kMaxResponseBytesLimit;
  if (payload_bytes >= 0 && payload_bytes <= limit - kResponseOverheadBytes) {
    return absl::OkStatus();
  }
  return absl::ResourceExhaustedError(absl::StrCat(
      std::string(what), " would be ",
      payload_bytes < 0 ? std::string("over 2^62") : absl::StrCat(payload_bytes), " bytes; ",
      server_limit ? "the server's message limit (--max_message_bytes) is "
                   : "a message can hold at most ",
      limit, " bytes (less ", kResponseOverheadBytes, " for its framing)"));
}

absl::StatusOr<UploadPlan> ValidateHeader(const MatrixHeader& h, const Limits& limits) {
  if (absl::Status s = ValidateName(h.name, limits); !s.ok()) return s;
  UploadPlan plan;
  if (h.rows <= 0 || h.cols <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("rows and cols must be positive, got ", h.rows, "x", h.cols));
  }
  if (h.rows > limits.max_rows || h.cols > limits.max_cols) {
    return absl::InvalidArgumentError(absl::StrCat("matrix ", h.rows, "x", h.cols,
                                                   " exceeds the limit of ", limits.max_rows,
                                                   " rows and ", limits.max_cols, " cols"));
  }
  plan.shape.rows = h.rows;
  plan.shape.cols = h.cols;

  auto format = ParseFormat(h.format);
  if (!format.ok()) return format.status();
  plan.shape.format = *format;
  switch (h.scale_mode) {
    case kUnspecified: plan.shape.scale_mode = ScaleMode::kRow; break;
    case static_cast<int>(ScaleMode::kRow):
    case static_cast<int>(ScaleMode::kNone):
    case static_cast<int>(ScaleMode::kTensor):
    case static_cast<int>(ScaleMode::kBlock128):
    case static_cast<int>(ScaleMode::kBlock128x128):
      plan.shape.scale_mode = static_cast<ScaleMode>(h.scale_mode);
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown scale_mode ", h.scale_mode));
  }
  plan.shape.saturate = !h.non_saturating;
  switch (h.placement) {
    case static_cast<int>(Placement::kAuto):
    case static_cast<int>(Placement::kSingle):
    case static_cast<int>(Placement::kSharded):
    case static_cast<int>(Placement::kReplicated):
      plan.shape.placement = static_cast<Placement>(h.placement);
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown placement ", h.placement));
  }

  if (!ToDType(h.source_dtype, &plan.source_dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "source_dtype must be F32, F16, BF16 or the FP8 format of pre-packed data, got ",
        DTypeLabel(h.source_dtype)));
  }
  // Every byte count of the matrix (codes with row padding, scales, what it
  // holds resident), checked: with raised limits they could overflow.
  const auto packed = sizes::MatrixBytesOf(h.rows, h.cols, plan.shape.scale_mode);
  if (!packed) {
    return absl::ResourceExhaustedError(absl::StrCat("matrix ", h.rows, "x", h.cols,
                                                     " would need more than 2^62 bytes"));
  }
  if (IsFp8(plan.source_dtype)) {
    if (plan.source_dtype != ToDType(plan.shape.format)) {
      return absl::InvalidArgumentError(
          absl::StrCat("pre-packed source_dtype ", DTypeLabel(h.source_dtype),
                       " differs from format ", DTypeLabel(static_cast<int>(plan.shape.format))));
    }
    plan.prepacked = true;
    plan.data_bytes = packed->code_bytes;
    plan.scale_bytes = packed->scale_bytes;
  } else {
    plan.data_bytes =
        sizes::SourceBytes(h.rows, h.cols, DTypeSize(plan.source_dtype)).value_or(-1);
  }
  if (plan.data_bytes < 0 || plan.data_bytes > limits.max_upload_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("upload of ", h.rows, "x", h.cols, " ", DTypeLabel(h.source_dtype),
                     " exceeds the upload limit of ", limits.max_upload_bytes, " bytes"));
  }
  for (const auto& [field, value, max] :
       {std::tuple{"max_batch", h.max_batch, kMaxBatchLimit},
        std::tuple{"max_queue_delay_us", h.max_queue_delay_us, kMaxQueueDelayUsLimit},
        std::tuple{"max_queue_size", h.max_queue_size, kMaxQueueSizeLimit}}) {
    if (value < 0 || value > max) {
      return absl::InvalidArgumentError(absl::StrCat("batching.", field, " is ", value,
                                                     "; it must be 0 (the server default) to ",
                                                     max));
    }
  }
  if (h.content_hash.size() > kMaxContentHashBytes ||
      h.content_hash.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                         "0123456789:._+/=-") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("content_hash must be at most ", kMaxContentHashBytes,
                     " of [A-Za-z0-9:._+/=-], got ", h.content_hash.size(), " bytes"));
  }
  plan.content_hash = h.content_hash;
  plan.batching.max_batch = h.max_batch;
  plan.batching.max_queue_delay = std::chrono::microseconds(h.max_queue_delay_us);
  plan.batching.max_queue_size = h.max_queue_size;
  return plan;
}

absl::Status ValidatePackedScales(const float* scales, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(scales[i]) || !(scales[i] > 0.0f)) {
      return absl::InvalidArgumentError(
          absl::StrCat("scale ", i, " is ", scales[i], "; scales must be finite and positive"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<GemvPlan> ValidateGemv(const GemvCall& req, const MatrixShape& shape,
                                      const Limits& limits) {
  GemvPlan plan;
  const TensorView& in = req.input;
  if (!ToDType(in.dtype, &plan.x_dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("input dtype must be F32, F16, BF16, E4M3 or E5M2, got ",
                     DTypeLabel(in.dtype)));
  }
  const int rank = static_cast<int>(in.shape.size());
  if (rank != 1 && rank != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("input must be 1-D [cols] or 2-D [batch, cols], got rank ", rank));
  }
  for (int i = 0; i < rank; ++i) {
    if (in.shape[i] <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("input dimension ", i, " is ", in.shape[i], "; dimensions must be positive"));
    }
  }
  plan.input_is_vector = rank == 1;
  plan.batch = rank == 1 ? 1 : in.shape[0];
  const int64_t cols = in.shape[rank - 1];
  if (cols != shape.cols) {
    return absl::InvalidArgumentError(absl::StrCat("input has ", cols, " columns; matrix \"",
                                                   std::string(req.matrix), "\" has ", shape.cols));
  }
  if (plan.batch > limits.max_vectors_per_request) {
    return absl::InvalidArgumentError(absl::StrCat("batch of ", plan.batch,
                                                   " vectors exceeds the limit of ",
                                                   limits.max_vectors_per_request,
                                                   " per request (--max_vectors_per_request)"));
  }
  const int64_t want = CheckedMul(CheckedMul(plan.batch, cols), DTypeSize(plan.x_dtype));
  if (want < 0 || static_cast<int64_t>(in.data.size()) != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input data holds ", in.data.size(), " bytes; shape [",
        rank == 1 ? absl::StrCat(cols) : absl::StrCat(plan.batch, ", ", cols), "] of ",
        DTypeLabel(in.dtype), " needs ", want));
  }
  if (IsFp8(plan.x_dtype)) {
    const float s = req.input_scale;
    if (!std::isfinite(s) || s < 0.0f) {
      return absl::InvalidArgumentError(
          absl::StrCat("input_scale is ", s, "; it must be finite and positive (0 means 1)"));
    }
    plan.x_scale = s == 0.0f ? 1.0f : s;
  }
  auto y_dtype = ParseOutputDType(req.output_dtype);
  if (!y_dtype.ok()) return y_dtype.status();
  plan.y_dtype = *y_dtype;
  // Checked before any work: batch x rows results of y_dtype.
  const int64_t out_bytes =
      CheckedMul(CheckedMul(plan.batch, shape.rows), DTypeSize(plan.y_dtype));
  if (absl::Status s = ValidateResponseBytes(
          out_bytes, limits,
          absl::StrCat("Gemv response of ", plan.batch, " x ", shape.rows, " ",
                       DTypeLabel(static_cast<int>(plan.y_dtype))));
      !s.ok()) {
    return s;
  }
  return plan;
}

// ---------------------------------------------------------------- K/V caches

namespace {

// A float tensor (F32, F16 or BF16) of `rank` positive dimensions whose data
// holds exactly its elements. `what` names it in messages.
absl::StatusOr<DType> ValidateFloatTensor(const TensorView& t, std::string_view what, int rank,
                                          std::string_view dims) {
  DType dt;
  if (!ToDType(t.dtype, &dt) || IsFp8(dt)) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(what), " dtype must be F32, F16 or BF16, got ", DTypeLabel(t.dtype)));
  }
  if (static_cast<int>(t.shape.size()) != rank) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(what), " must be ", rank, "-D ", std::string(dims), ", got rank ",
                     t.shape.size()));
  }
  int64_t n = 1;
  for (int i = 0; i < rank; ++i) {
    if (t.shape[i] <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(std::string(what), " dimension ", i, " is ", t.shape[i],
                                                     "; dimensions must be positive"));
    }
    n = CheckedMul(n, t.shape[i]);
  }
  const int64_t want = CheckedMul(n, DTypeSize(dt));
  if (want < 0 || static_cast<int64_t>(t.data.size()) != want) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(what), " data holds ", t.data.size(),
                                                   " bytes; its shape and dtype need ", want));
  }
  return dt;
}

}  // namespace

absl::StatusOr<KvUploadPlan> ValidateKvHeader(const KvHeader& h, const Limits& limits) {
  if (absl::Status s = ValidateName(h.name, limits, "kv cache"); !s.ok()) return s;
  KvUploadPlan plan;
  if (h.kv_heads <= 0 || h.seq <= 0 || h.head_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("kv_heads, seq and head_dim must be positive, got ",
                                                   h.kv_heads, ", ", h.seq, ", ", h.head_dim));
  }
  if (h.kv_heads > limits.max_kv_heads || h.head_dim > limits.max_head_dim ||
      h.seq > limits.max_kv_seq) {
    return absl::InvalidArgumentError(absl::StrCat(
        "K/V [", h.kv_heads, ", ", h.seq, ", ", h.head_dim, "] exceeds the limits of ",
        limits.max_kv_heads, " kv heads, ", limits.max_kv_seq, " tokens and head_dim ",
        limits.max_head_dim));
  }
  plan.shape.kv_heads = h.kv_heads;
  plan.shape.head_dim = h.head_dim;
  plan.seq = h.seq;
  auto format = ParseFormat(h.format);
  if (!format.ok()) return format.status();
  plan.shape.format = *format;
  switch (h.scale_mode) {
    case kUnspecified: plan.shape.scale_mode = KvScaleMode::kTokenBlock; break;
    case static_cast<int>(KvScaleMode::kTokenBlock):
    case static_cast<int>(KvScaleMode::kNone):
    case static_cast<int>(KvScaleMode::kTensor):
    case static_cast<int>(KvScaleMode::kHead):
      plan.shape.scale_mode = static_cast<KvScaleMode>(h.scale_mode);
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown kv scale_mode ", h.scale_mode));
  }
  plan.shape.saturate = !h.non_saturating;
  if (!ToDType(h.source_dtype, &plan.source_dtype) || IsFp8(plan.source_dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("K/V source_dtype must be F32, F16 or BF16, got ",
                                                   DTypeLabel(h.source_dtype)));
  }
  if (!sizes::KvBytesOf(h.kv_heads, h.head_dim, plan.shape.scale_mode, h.seq)) {
    return absl::ResourceExhaustedError(absl::StrCat("K/V cache [", h.kv_heads, ", ", h.seq, ", ",
                                                     h.head_dim, "] would need more than 2^62 bytes"));
  }
  plan.side_bytes = CheckedMul(CheckedMul(CheckedMul(h.kv_heads, h.seq), h.head_dim),
                               DTypeSize(plan.source_dtype));
  if (plan.side_bytes < 0 || plan.side_bytes > limits.max_upload_bytes / 2) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "K/V upload of 2 x [", h.kv_heads, ", ", h.seq, ", ", h.head_dim, "] ",
        DTypeLabel(h.source_dtype), " exceeds the upload limit of ", limits.max_upload_bytes, " bytes"));
  }
  return plan;
}

absl::StatusOr<KvAppendPlan> ValidateKvAppend(const AppendKvCall& req, const KvShape& shape,
                                              int64_t seq, const Limits& limits) {
  const std::string_view dims = "[kv_heads, tokens, head_dim]";
  auto kd = ValidateFloatTensor(req.k, "k", 3, dims);
  if (!kd.ok()) return kd.status();
  auto vd = ValidateFloatTensor(req.v, "v", 3, dims);
  if (!vd.ok()) return vd.status();
  if (*kd != *vd) return absl::InvalidArgumentError("k and v must have the same dtype");
  for (int i = 0; i < 3; ++i) {
    if (req.k.shape[i] != req.v.shape[i]) {
      return absl::InvalidArgumentError(absl::StrCat("k and v shapes differ in dimension ", i, ": ",
                                                     req.k.shape[i], " vs ", req.v.shape[i]));
    }
  }
  if (req.k.shape[0] != shape.kv_heads || req.k.shape[2] != shape.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "k/v are [", req.k.shape[0], ", ", req.k.shape[1], ", ", req.k.shape[2],
        "]; kv cache \"", std::string(req.name), "\" needs [", shape.kv_heads, ", tokens, ",
        shape.head_dim, "]"));
  }
  KvAppendPlan plan;
  plan.tokens = req.k.shape[1];
  plan.src_dtype = *kd;
  if (plan.tokens > limits.max_kv_seq - seq) {
    return absl::InvalidArgumentError(absl::StrCat("appending ", plan.tokens, " tokens to ", seq,
                                                   " exceeds the limit of ", limits.max_kv_seq,
                                                   " tokens per cache"));
  }
  if (!sizes::KvBytesOf(shape.kv_heads, shape.head_dim, shape.scale_mode, seq + plan.tokens)) {
    return absl::ResourceExhaustedError(absl::StrCat("kv cache \"", std::string(req.name), "\" with ",
                                                     seq + plan.tokens,
                                                     " tokens would need more than 2^62 bytes"));
  }
  return plan;
}

absl::StatusOr<AttentionPlan> ValidateAttention(const AttentionCall& req, const KvShape& shape,
                                                int64_t seq, const Limits& limits) {
  AttentionPlan plan;
  auto qd = ValidateFloatTensor(req.query, "query", 4, "[batch, heads, q_len, head_dim]");
  if (!qd.ok()) return qd.status();
  plan.q_dtype = *qd;
  const TensorView& q = req.query;
  plan.batch = q.shape[0];
  plan.heads = q.shape[1];
  plan.q_len = q.shape[2];
  if (q.shape[3] != shape.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("query head_dim is ", q.shape[3], "; kv cache \"",
                                                   std::string(req.cache), "\" has head_dim ", shape.head_dim));
  }
  if (plan.heads % shape.kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("query heads (", plan.heads,
                                                   ") must be a multiple of the cache's kv_heads (",
                                                   shape.kv_heads, ")"));
  }
  const int64_t rows = CheckedMul(CheckedMul(plan.batch, plan.heads), plan.q_len);
  if (rows < 0 || rows > limits.max_attention_rows) {
    return absl::InvalidArgumentError(absl::StrCat("batch x heads x q_len = ", plan.batch, " x ",
                                                   plan.heads, " x ", plan.q_len,
                                                   " exceeds the limit of ", limits.max_attention_rows,
                                                   " query rows per request"));
  }
  plan.causal = req.causal;
  if (plan.causal && plan.q_len > seq) {
    return absl::InvalidArgumentError(absl::StrCat("causal attention with q_len ", plan.q_len,
                                                   " needs at least as many cached tokens; kv cache \"",
                                                   std::string(req.cache), "\" has ", seq));
  }
  const float s = req.softmax_scale;
  if (!std::isfinite(s)) {
    return absl::InvalidArgumentError(absl::StrCat("softmax_scale is ", s, "; it must be finite (0 means 1/sqrt(head_dim))"));
  }
  plan.scale = s != 0.0f ? s : static_cast<float>(1.0 / std::sqrt(static_cast<double>(shape.head_dim)));
  auto out_dtype = ParseOutputDType(req.output_dtype);
  if (!out_dtype.ok()) return out_dtype.status();
  plan.out_dtype = *out_dtype;
  // The output has the query's shape, in out_dtype.
  const int64_t out_bytes =
      CheckedMul(CheckedMul(rows, shape.head_dim), DTypeSize(plan.out_dtype));
  if (absl::Status s = ValidateResponseBytes(
          out_bytes, limits,
          absl::StrCat("Attention response of ", rows, " query rows x ", shape.head_dim, " ",
                       DTypeLabel(static_cast<int>(plan.out_dtype))));
      !s.ok()) {
    return s;
  }
  return plan;
}

}  // namespace plume::core
