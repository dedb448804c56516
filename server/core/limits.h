// Request limits enforced by server/core. Each one is a server flag.
#pragma once

#include <cstdint>

namespace plume::core {

struct Limits {
  int64_t max_rows = int64_t{1} << 20;          // rows of one matrix
  int64_t max_cols = int64_t{1} << 20;          // cols of one matrix
  int64_t max_batch = 4096;                     // vectors in one Gemv request
  int64_t max_upload_bytes = int64_t{16} << 30; // source bytes of one upload
  int64_t max_name_length = 128;
};

}  // namespace plume::core
