// Internals of the CPU reference exposed for tests and benchmarks: forcing a
// particular vector ISA for GemvF32.
#pragma once

#include <cstdint>

#include "plume/reference/api.h"

namespace plume::ref::internal {

// kAvx512Vbmi: AVX-512 plus VBMI (byte-table FP8 decode; Ice Lake, Zen 4 and later).
enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Vbmi = 3 };

const char* IsaName(Isa isa);
// Whether this build has the path and this CPU can run it.
bool IsaSupported(Isa isa);
// The ISA GemvF32 picks on this machine.
Isa BestIsa();
// GemvF32 with a forced ISA (must be supported).
bool GemvF32Isa(Isa isa, const MatrixView& w, const float* x, int64_t batch, float* y,
                ThreadPool* pool);

}  // namespace plume::ref::internal
