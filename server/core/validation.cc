#include "server/core/validation.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace plume::core {
namespace {

bool ToDType(v1::DType d, DType* out) {
  switch (d) {
    case v1::DTYPE_F32: *out = DType::kF32; return true;
    case v1::DTYPE_F16: *out = DType::kF16; return true;
    case v1::DTYPE_BF16: *out = DType::kBF16; return true;
    case v1::DTYPE_E4M3: *out = DType::kE4M3; return true;
    case v1::DTYPE_E5M2: *out = DType::kE5M2; return true;
    default: return false;
  }
}

std::string DTypeLabel(int d) {
  return v1::DType_IsValid(d) ? v1::DType_Name(static_cast<v1::DType>(d))
                              : absl::StrCat("unknown dtype ", d);
}

// a * b, or -1 when it would exceed 2^62.
int64_t CheckedMul(int64_t a, int64_t b) {
  if (a < 0 || b < 0) return -1;
  if (a != 0 && b > (int64_t{1} << 62) / a) return -1;
  return a * b;
}

}  // namespace

absl::Status ValidateName(std::string_view name, const Limits& limits) {
  if (name.empty()) return absl::InvalidArgumentError("matrix name is empty");
  if (static_cast<int64_t>(name.size()) > limits.max_name_length) {
    return absl::InvalidArgumentError(absl::StrCat("matrix name is ", name.size(),
                                                   " characters long; the limit is ",
                                                   limits.max_name_length));
  }
  if (name.front() == '.') {
    return absl::InvalidArgumentError("matrix name must not start with '.'");
  }
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          "matrix name may hold only letters, digits, '.', '_' and '-'");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<UploadPlan> ValidateHeader(const v1::MatrixHeader& h, const Limits& limits) {
  if (absl::Status s = ValidateName(h.name(), limits); !s.ok()) return s;
  UploadPlan plan;
  if (h.rows() <= 0 || h.cols() <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("rows and cols must be positive, got ", h.rows(), "x", h.cols()));
  }
  if (h.rows() > limits.max_rows || h.cols() > limits.max_cols) {
    return absl::InvalidArgumentError(absl::StrCat("matrix ", h.rows(), "x", h.cols(),
                                                   " exceeds the limit of ", limits.max_rows,
                                                   " rows and ", limits.max_cols, " cols"));
  }
  plan.shape.rows = h.rows();
  plan.shape.cols = h.cols();

  switch (h.format()) {
    case v1::DTYPE_UNSPECIFIED:
    case v1::DTYPE_E4M3: plan.shape.format = Fp8Format::kE4M3; break;
    case v1::DTYPE_E5M2: plan.shape.format = Fp8Format::kE5M2; break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("format must be E4M3 or E5M2, got ", DTypeLabel(h.format())));
  }
  switch (h.scale_mode()) {
    case v1::SCALE_MODE_UNSPECIFIED:
    case v1::SCALE_MODE_ROW: plan.shape.scale_mode = ScaleMode::kRow; break;
    case v1::SCALE_MODE_NONE: plan.shape.scale_mode = ScaleMode::kNone; break;
    case v1::SCALE_MODE_TENSOR: plan.shape.scale_mode = ScaleMode::kTensor; break;
    case v1::SCALE_MODE_BLOCK128: plan.shape.scale_mode = ScaleMode::kBlock128; break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown scale_mode ", h.scale_mode()));
  }
  plan.shape.saturate = !h.non_saturating();

  if (!ToDType(h.source_dtype(), &plan.source_dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "source_dtype must be F32, F16, BF16 or the FP8 format of pre-packed data, got ",
        DTypeLabel(h.source_dtype())));
  }
  if (IsFp8(plan.source_dtype)) {
    if (plan.source_dtype != ToDType(plan.shape.format)) {
      return absl::InvalidArgumentError(
          absl::StrCat("pre-packed source_dtype ", DTypeLabel(h.source_dtype()),
                       " differs from format ", DTypeLabel(static_cast<int>(plan.shape.format))));
    }
    plan.prepacked = true;
    plan.data_bytes = plan.shape.layout().code_bytes();
    plan.scale_bytes = plan.shape.num_scales() * int64_t{sizeof(float)};
  } else {
    plan.data_bytes =
        CheckedMul(CheckedMul(h.rows(), h.cols()), DTypeSize(plan.source_dtype));
  }
  if (plan.data_bytes < 0 || plan.data_bytes > limits.max_upload_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("upload of ", h.rows(), "x", h.cols(), " ", DTypeLabel(h.source_dtype()),
                     " exceeds the upload limit of ", limits.max_upload_bytes, " bytes"));
  }
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

absl::StatusOr<GemvPlan> ValidateGemv(const v1::GemvRequest& req, const MatrixShape& shape,
                                      const Limits& limits) {
  GemvPlan plan;
  const v1::Tensor& in = req.input();
  if (!ToDType(in.dtype(), &plan.x_dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("input dtype must be F32, F16, BF16, E4M3 or E5M2, got ",
                     DTypeLabel(in.dtype())));
  }
  const int rank = in.shape_size();
  if (rank != 1 && rank != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("input must be 1-D [cols] or 2-D [batch, cols], got rank ", rank));
  }
  for (int i = 0; i < rank; ++i) {
    if (in.shape(i) <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("input dimension ", i, " is ", in.shape(i), "; dimensions must be positive"));
    }
  }
  plan.input_is_vector = rank == 1;
  plan.batch = rank == 1 ? 1 : in.shape(0);
  const int64_t cols = in.shape(rank - 1);
  if (cols != shape.cols) {
    return absl::InvalidArgumentError(absl::StrCat("input has ", cols, " columns; matrix \"",
                                                   req.matrix(), "\" has ", shape.cols));
  }
  if (plan.batch > limits.max_batch) {
    return absl::InvalidArgumentError(absl::StrCat("batch of ", plan.batch,
                                                   " vectors exceeds the limit of ",
                                                   limits.max_batch, " per request"));
  }
  const int64_t want = plan.batch * cols * DTypeSize(plan.x_dtype);
  if (static_cast<int64_t>(in.data().size()) != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input data holds ", in.data().size(), " bytes; shape [",
        rank == 1 ? absl::StrCat(cols) : absl::StrCat(plan.batch, ", ", cols), "] of ",
        DTypeLabel(in.dtype()), " needs ", want));
  }
  if (IsFp8(plan.x_dtype)) {
    const float s = req.input_scale();
    if (!std::isfinite(s) || s < 0.0f) {
      return absl::InvalidArgumentError(
          absl::StrCat("input_scale is ", s, "; it must be finite and positive (0 means 1)"));
    }
    plan.x_scale = s == 0.0f ? 1.0f : s;
  }
  switch (req.output_dtype()) {
    case v1::DTYPE_UNSPECIFIED:
    case v1::DTYPE_F32: plan.y_dtype = DType::kF32; break;
    case v1::DTYPE_F16: plan.y_dtype = DType::kF16; break;
    case v1::DTYPE_BF16: plan.y_dtype = DType::kBF16; break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("output_dtype must be F32, F16 or BF16, got ",
                                                     DTypeLabel(req.output_dtype())));
  }
  return plan;
}

}  // namespace plume::core
