// libFuzzer target: the request validators fed protobuf bytes. The first
// byte picks the message; the rest is parsed as it and converted as the
// server converts it. Nothing may crash, and a plan that passes validation
// must be self-consistent.
#include <cstdint>
#include <string_view>

#include "plume/v1/plume.pb.h"
#include "server/core/validation.h"
#include "server/grpc/convert.h"

using namespace plume;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t kind = data[0];
  const auto* body = reinterpret_cast<const char*>(data + 1);
  const int n = static_cast<int>(size - 1);
  core::Limits limits;
  limits.max_rows = 1 << 16;
  limits.max_cols = 1 << 16;
  limits.max_upload_bytes = int64_t{1} << 30;
  switch (kind % 3) {
    case 0: {
      v1::UploadMatrixRequest req;
      if (!req.ParseFromArray(body, n) || !req.has_header()) return 0;
      auto plan = core::ValidateHeader(server::ToCore(req.header()), limits);
      if (plan.ok()) {
        if (plan->shape.rows <= 0 || plan->shape.cols <= 0 || plan->data_bytes <= 0 ||
            plan->data_bytes > limits.max_upload_bytes) {
          __builtin_trap();
        }
        if (plan->prepacked) {
          const int64_t nscales = plan->scale_bytes / 4;
          if (!req.scales().empty() && static_cast<int64_t>(req.scales().size()) == plan->scale_bytes) {
            (void)core::ValidatePackedScales(reinterpret_cast<const float*>(req.scales().data()), nscales);
          }
        }
      }
      return 0;
    }
    case 1: {
      v1::GemvRequest req;
      if (!req.ParseFromArray(body, n)) return 0;
      (void)core::ValidateName(req.matrix(), limits);
      core::MatrixShape shape{7, 40, Fp8Format::kE4M3, ScaleMode::kRow, true};
      auto plan = core::ValidateGemv(server::ToCore(req), shape, limits);
      if (plan.ok()) {
        const int64_t want = plan->batch * shape.cols * DTypeSize(plan->x_dtype);
        if (plan->batch <= 0 || plan->batch > limits.max_vectors_per_request ||
            static_cast<int64_t>(req.input().data().size()) != want) {
          __builtin_trap();
        }
      }
      return 0;
    }
    default:
      (void)core::ValidateName(std::string_view(body, static_cast<size_t>(n)), limits);
      return 0;
  }
}
