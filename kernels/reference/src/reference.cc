// The CPU reference: scales, quantization, dequantization, conversions, and
// GEMV (driver + scalar kernel; vector kernels in gemv_avx2.cc / gemv_avx512.cc).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "gemv_internal.h"
#include "plume/kernels/fp8.h"
#include "plume/kernels/half.h"
#include "plume/kernels/layout.h"
#include "plume/reference/api.h"
#include "plume/reference/internal.h"
#include "plume/reference/thread_pool.h"

namespace plume {

const char* DTypeName(DType t) {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
    case DType::kE4M3: return "e4m3";
    case DType::kE5M2: return "e5m2";
  }
  return "unknown";
}

const char* ScaleModeName(ScaleMode m) {
  switch (m) {
    case ScaleMode::kNone: return "none";
    case ScaleMode::kTensor: return "tensor";
    case ScaleMode::kRow: return "row";
    case ScaleMode::kBlock128: return "block128";
    case ScaleMode::kBlock128x128: return "block128x128";
  }
  return "unknown";
}

namespace ref {
namespace {

ThreadPool& PoolOr(ThreadPool* pool) { return pool ? *pool : ThreadPool::Default(); }

// Values the code paths below are chosen for; anything else (a cast from a
// wire or file value) is refused, never run as another.
bool KnownFormat(Fp8Format f) { return f == Fp8Format::kE4M3 || f == Fp8Format::kE5M2; }
bool KnownMode(ScaleMode m) {
  switch (m) {
    case ScaleMode::kNone:
    case ScaleMode::kTensor:
    case ScaleMode::kRow:
    case ScaleMode::kBlock128:
    case ScaleMode::kBlock128x128: return true;
  }
  return false;
}
bool KnownDType(DType t) {
  switch (t) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kE4M3:
    case DType::kE5M2: return true;
  }
  return false;
}
// Source and result dtypes: the unquantized ones.
bool WideDType(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }

float AmaxFinite(const float* p, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(p[i]);
    if (a <= FLT_MAX && a > m) m = a;  // NaN and inf fail a <= FLT_MAX
  }
  return m;
}

// One definition shared with the GPU quantizer (plume/kernels/fp8.h).
float ScaleFromAmax(float amax, Fp8Format f) { return fp8::ScaleFromAmax(amax, f); }

// Lookup tables for the scalar path.
struct DecodeTables {
  float e4m3[256], e5m2[256];
  DecodeTables() {
    for (int c = 0; c < 256; ++c) {
      e4m3[c] = fp8::DecodeE4M3(static_cast<uint8_t>(c));
      e5m2[c] = fp8::DecodeE5M2(static_cast<uint8_t>(c));
    }
  }
};
const DecodeTables& Tables() {
  static const DecodeTables t;
  return t;
}

}  // namespace

bool ComputeScales(const float* src, int64_t rows, int64_t cols, ScaleMode mode, Fp8Format format,
                   float* scales) {
  if (!KnownFormat(format)) return false;
  switch (mode) {
    case ScaleMode::kNone: return true;
    case ScaleMode::kTensor: {
      float m = 0.0f;
      for (int64_t r = 0; r < rows; ++r) m = std::max(m, AmaxFinite(src + r * cols, cols));
      scales[0] = ScaleFromAmax(m, format);
      return true;
    }
    case ScaleMode::kRow:
      for (int64_t r = 0; r < rows; ++r) scales[r] = ScaleFromAmax(AmaxFinite(src + r * cols, cols), format);
      return true;
    case ScaleMode::kBlock128: {
      const int64_t nb = (cols + kBlockCols - 1) / kBlockCols;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < nb; ++b) {
          const int64_t c0 = b * kBlockCols, n = std::min(kBlockCols, cols - c0);
          scales[r * nb + b] = ScaleFromAmax(AmaxFinite(src + r * cols + c0, n), format);
        }
      return true;
    }
    case ScaleMode::kBlock128x128: {
      const int64_t nb = (cols + kBlockCols - 1) / kBlockCols;
      for (int64_t t = 0; t * kBlockRows < rows; ++t)
        for (int64_t b = 0; b < nb; ++b) {
          const int64_t c0 = b * kBlockCols, n = std::min(kBlockCols, cols - c0);
          float m = 0.0f;
          for (int64_t r = t * kBlockRows; r < std::min(rows, (t + 1) * kBlockRows); ++r)
            m = std::max(m, AmaxFinite(src + r * cols + c0, n));
          scales[t * nb + b] = ScaleFromAmax(m, format);
        }
      return true;
    }
  }
  return false;
}

bool QuantizePack(const void* src, DType src_dtype, int64_t rows, int64_t cols,
                  const QuantizeOptions& opts, uint32_t* words, float* scales, ThreadPool* pool) {
  if (!WideDType(src_dtype) || !KnownFormat(opts.format) || !KnownMode(opts.scale_mode)) return false;
  std::vector<float> converted;
  const float* f = static_cast<const float*>(src);
  // A source that is not float-aligned (F32 rows from the middle of a
  // network chunk) is copied, as F16 and BF16 are converted, rather than
  // read through a misaligned float pointer.
  const bool aligned = reinterpret_cast<uintptr_t>(src) % alignof(float) == 0;
  if (src_dtype != DType::kF32 || !aligned) {
    converted.resize(static_cast<size_t>(rows * cols));
    ToFloat(src, src_dtype, 1.0f, rows * cols, converted.data());
    f = converted.data();
  }
  ComputeScales(f, rows, cols, opts.scale_mode, opts.format, scales);
  const PackedLayout l{rows, cols};
  const int64_t pc = l.padded_cols();
  auto body = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      uint8_t* out = reinterpret_cast<uint8_t*>(words + r * l.words_per_row());
      std::vector<uint8_t> codes(static_cast<size_t>(pc), 0);
      for (int64_t c = 0; c < cols; ++c) {
        const float s = ScaleAt(scales, opts.scale_mode, l, r, c);
        codes[c] = fp8::Encode(f[r * cols + c] / s, opts.format, opts.saturate);
      }
      // Little-endian words: element 4j in bits 0-7 of word j.
      for (int64_t j = 0; j < pc / 4; ++j) {
        const uint32_t w = static_cast<uint32_t>(codes[4 * j]) | static_cast<uint32_t>(codes[4 * j + 1]) << 8 |
                           static_cast<uint32_t>(codes[4 * j + 2]) << 16 |
                           static_cast<uint32_t>(codes[4 * j + 3]) << 24;
        std::memcpy(out + 4 * j, &w, 4);
      }
    }
  };
  PoolOr(pool).ParallelFor(rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(1, cols)), body);
  return true;
}

bool BlockScalesUniformInBands(const MatrixView& w) {
  if (w.scale_mode != ScaleMode::kBlock128 || w.scales == nullptr) return false;
  const int64_t nblk = w.layout().blocks_per_row();
  const size_t bytes = static_cast<size_t>(nblk) * sizeof(float);
  for (int64_t r = 0; r < w.rows; ++r) {
    if (r % kBlockRows == 0) continue;
    if (std::memcmp(w.scales + r * nblk, w.scales + (r - r % kBlockRows) * nblk, bytes) != 0) return false;
  }
  return true;
}

bool Dequantize(const MatrixView& w, float* out) {
  if (!KnownFormat(w.format) || !KnownMode(w.scale_mode)) return false;
  const PackedLayout l = w.layout();
  for (int64_t r = 0; r < l.rows; ++r)
    for (int64_t c = 0; c < l.cols; ++c)
      out[r * l.cols + c] = fp8::Decode(CodeAt(w.words, l, r, c), w.format) *
                            ScaleAt(w.scales, w.scale_mode, l, r, c);
  return true;
}

bool ToFloat(const void* src, DType dtype, float scale, int64_t n, float* dst) {
  switch (dtype) {
    case DType::kF32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return true;
    case DType::kF16: {
      const uint8_t* p = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = HalfBitsToFloat(h);
      }
      return true;
    }
    case DType::kBF16: {
      const uint8_t* p = static_cast<const uint8_t*>(src);
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = Bf16BitsToFloat(h);
      }
      return true;
    }
    case DType::kE4M3:
    case DType::kE5M2: {
      const uint8_t* p = static_cast<const uint8_t*>(src);
      const Fp8Format f = static_cast<Fp8Format>(dtype);
      for (int64_t i = 0; i < n; ++i) dst[i] = fp8::Decode(p[i], f) * scale;
      return true;
    }
  }
  return false;
}

bool FromFloat(const float* src, int64_t n, DType dtype, void* dst) {
  uint8_t* p = static_cast<uint8_t*>(dst);
  switch (dtype) {
    case DType::kF32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return true;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = FloatToHalfBits(src[i]);
        std::memcpy(p + 2 * i, &h, 2);
      }
      return true;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = FloatToBf16Bits(src[i]);
        std::memcpy(p + 2 * i, &h, 2);
      }
      return true;
    case DType::kE4M3:
    case DType::kE5M2: return false;  // results are never FP8
  }
  return false;
}

namespace detail {
namespace {
struct KScalar {
  static constexpr int RowsFor(int B, bool) { return B <= 2 ? 2 : 1; }
  template <Fp8Format F, int R, int B, bool kBlock>
  static void Tile(const uint8_t* w, int64_t pc, const float* x, const float* bs, int64_t nblk,
                   float* out) {
    const float* lut = F == Fp8Format::kE4M3 ? Tables().e4m3 : Tables().e5m2;
    constexpr int L = 16;  // lanes, like the vector kernels
    for (int r = 0; r < R; ++r)
      for (int b = 0; b < B; ++b) {
        const uint8_t* wr = w + r * pc;
        const float* xb = x + b * pc;
        float acc[L] = {};
        const int64_t step = kBlock ? kBlockCols : pc;
        for (int64_t c0 = 0, blk = 0; c0 < pc; c0 += step, ++blk) {
          float part[L] = {};
          const int64_t end = std::min(pc, c0 + step);
          for (int64_t c = c0; c < end; c += L)
            for (int l = 0; l < L; ++l) part[l] += lut[wr[c + l]] * xb[c + l];
          const float s = kBlock ? bs[r * nblk + blk] : 1.0f;
          for (int l = 0; l < L; ++l) acc[l] += part[l] * s;
        }
        float sum = 0.0f;
        for (int l = 0; l < L; ++l) sum += acc[l];
        out[r * B + b] = sum;
      }
  }
};
}  // namespace

void GemvRowsScalar(const PaddedGemv& a, int64_t r0, int64_t r1) { DriveRows<KScalar>(a, r0, r1); }
}  // namespace detail

namespace internal {

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAvx512Vbmi: return "avx512vbmi";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kScalar: return "scalar";
  }
  return "unknown";
}

// clang 14's __builtin_cpu_supports knows no "f16c" (the fuzz preset builds
// with clang); every CPU with AVX2 has F16C.
#if defined(__clang__)
#define PLUME_CPU_HAS_F16C() true
#else
#define PLUME_CPU_HAS_F16C() __builtin_cpu_supports("f16c")
#endif

bool IsaSupported(Isa isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  switch (isa) {
    case Isa::kScalar: return true;
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             PLUME_CPU_HAS_F16C();
    case Isa::kAvx512Vbmi:
      return IsaSupported(Isa::kAvx512) && __builtin_cpu_supports("avx512vbmi");
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             PLUME_CPU_HAS_F16C();
  }
  return false;
#else
  return isa == Isa::kScalar;
#endif
}

Isa BestIsa() {
  static const Isa best = IsaSupported(Isa::kAvx512Vbmi) ? Isa::kAvx512Vbmi
                          : IsaSupported(Isa::kAvx512)   ? Isa::kAvx512
                          : IsaSupported(Isa::kAvx2) ? Isa::kAvx2
                                                     : Isa::kScalar;
  return best;
}

namespace {

// out[c] = x[c] * s[c / 128] over a padded row: the band path's activations.
__attribute__((always_inline)) inline void ScaleByBlocksLoop(const float* __restrict x,
                                                             const float* __restrict s, int64_t nblk,
                                                             int64_t pc, float* __restrict out) {
  for (int64_t blk = 0; blk < nblk; ++blk) {
    const int64_t c0 = blk * kBlockCols, n = std::min(pc, c0 + kBlockCols) - c0;
    const float sb = s[blk];
    for (int64_t i = 0; i < n; ++i) out[c0 + i] = x[c0 + i] * sb;
  }
}
#if defined(__x86_64__) && defined(__GNUC__)
// The same loop, vectorized by the compiler for the GEMV's instruction set.
__attribute__((target("avx512f"))) void ScaleByBlocks512(const float* x, const float* s, int64_t nblk,
                                                        int64_t pc, float* out) {
  ScaleByBlocksLoop(x, s, nblk, pc, out);
}
__attribute__((target("avx2"))) void ScaleByBlocks256(const float* x, const float* s, int64_t nblk,
                                                     int64_t pc, float* out) {
  ScaleByBlocksLoop(x, s, nblk, pc, out);
}
#endif
void ScaleByBlocksBase(const float* x, const float* s, int64_t nblk, int64_t pc, float* out) {
  ScaleByBlocksLoop(x, s, nblk, pc, out);
}
using ScaleByBlocksFn = void (*)(const float*, const float*, int64_t, int64_t, float*);
ScaleByBlocksFn ScaleByBlocksFor(Isa isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (isa == Isa::kAvx512Vbmi || isa == Isa::kAvx512) return ScaleByBlocks512;
  if (isa == Isa::kAvx2) return ScaleByBlocks256;
#endif
  (void)isa;
  return ScaleByBlocksBase;
}

// BLOCK128 whose bands share their scales (MatrixView::uniform_bands): for
// each 128-row band and up to kMaxBatchTile vectors at a time, the
// activations times the band's block scales, then the unscaled kernel over
// the band's rows. That is batch x columns multiplies per 128 rows, where
// scaling each row's block sums costs rows x blocks x batch multiply-adds
// and keeps twice the sums. Every batch takes the same steps, so a vector's
// result does not depend on its batch.
void GemvBands(const detail::PaddedGemv& a, detail::RowsFn fn, ScaleByBlocksFn scale,
               ThreadPool* pool) {
  const int64_t rows = a.w.rows, pc = a.pc, nblk = a.nblk;
  const int64_t bands = (rows + kBlockRows - 1) / kBlockRows;
  auto body = [&](int64_t b0, int64_t b1) {
    // Each thread keeps its buffer between calls, up to kKeptFloats, rather
    // than allocating one per chunk (1.19x against 1.03x ROW's time at
    // 4096x4096, batch 8, in one run each on the development VM, whose
    // spread is about that large: bench/RESULTS-fp8-checkpoints.md).
    // Every element used is written first.
    constexpr size_t kKeptFloats = size_t{1} << 18;  // 1 MiB a thread
    thread_local std::vector<float> kept;
    const size_t need = static_cast<size_t>(std::min<int64_t>(a.batch, detail::kMaxBatchTile) * pc);
    std::vector<float> own;
    std::vector<float>& buf = need <= kKeptFloats ? kept : own;
    if (buf.size() < need) buf.resize(need);
    float* const xs = buf.data();
    for (int64_t band = b0; band < b1; ++band) {
      const int64_t r0 = band * kBlockRows, r1 = std::min(rows, r0 + kBlockRows);
      const float* s = a.w.scales + r0 * nblk;
      for (int64_t v0 = 0; v0 < a.batch; v0 += detail::kMaxBatchTile) {
        const int64_t nv = std::min<int64_t>(detail::kMaxBatchTile, a.batch - v0);
        for (int64_t v = 0; v < nv; ++v) scale(a.xp + (v0 + v) * pc, s, nblk, pc, xs + v * pc);
        detail::PaddedGemv t = a;
        t.w.scale_mode = ScaleMode::kNone;
        t.xp = xs;
        t.batch = nv;
        t.y = a.y + v0 * rows;
        fn(t, r0, r1);
      }
    }
  };
  // As GemvF32Isa's grain: chunks of at least ~256K multiply-adds.
  const int64_t per_band = kBlockRows * pc * std::min<int64_t>(a.batch, detail::kMaxBatchTile);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / per_band);
  if (bands <= grain) {
    body(0, bands);
  } else {
    PoolOr(pool).ParallelFor(bands, grain, body);
  }
}

}  // namespace

bool GemvF32Isa(Isa isa, const MatrixView& w, const float* x, int64_t batch, float* y,
                ThreadPool* pool) {
  if (!KnownFormat(w.format) || !KnownMode(w.scale_mode)) return false;
  const PackedLayout l = w.layout();
  if (l.rows <= 0 || batch <= 0) return true;
  if (w.scale_mode == ScaleMode::kBlock128x128) {
    // Served as BLOCK128 (ResidentScaleMode): each row takes its band's
    // scales. Backends expand once at upload; a direct call does it here.
    std::vector<float> rows(static_cast<size_t>(NumScales(ScaleMode::kBlock128, l.rows, l.cols)));
    ExpandBlockScales(l.rows, l.cols, w.scales, rows.data());
    MatrixView v = w;
    v.scales = rows.data();
    v.scale_mode = ScaleMode::kBlock128;
    v.uniform_bands = true;
    return GemvF32Isa(isa, v, x, batch, y, pool);
  }
  // Larger batches are FMA-bound: the decode is shared by the batch tile, and
  // the shift-decode kernel keeps fewer registers live (see NOTES.md).
  if (isa == Isa::kAvx512Vbmi && batch > detail::kVbmiMaxBatch) isa = Isa::kAvx512;
  detail::PaddedGemv a;
  a.w = w;
  a.codes = reinterpret_cast<const uint8_t*>(w.words);
  a.pc = l.padded_cols();
  a.nblk = l.blocks_per_row();
  a.batch = batch;
  a.y = y;
  // Zero-padded copy of x, so kernels can read full padded rows (the padding
  // codes are zero and 0 * 0 adds nothing).
  std::vector<float> xp(static_cast<size_t>(batch * a.pc), 0.0f);
  for (int64_t b = 0; b < batch; ++b)
    std::memcpy(xp.data() + b * a.pc, x + b * l.cols, static_cast<size_t>(l.cols) * 4);
  a.xp = xp.data();
  detail::RowsFn fn = nullptr;
  switch (isa) {
    case Isa::kAvx512Vbmi: fn = detail::GemvRowsAvx512Vbmi; break;
    case Isa::kAvx512: fn = detail::GemvRowsAvx512; break;
    case Isa::kAvx2: fn = detail::GemvRowsAvx2; break;
    case Isa::kScalar: fn = detail::GemvRowsScalar; break;
  }
  if (fn == nullptr) return false;  // an Isa value outside the enum
  if (w.scale_mode == ScaleMode::kBlock128 && w.uniform_bands) {
    GemvBands(a, fn, ScaleByBlocksFor(isa), pool);
    return true;
  }
  const int64_t groups = (l.rows + detail::kRowGroup - 1) / detail::kRowGroup;
  auto body = [&](int64_t g0, int64_t g1) {
    fn(a, g0 * detail::kRowGroup, std::min(l.rows, g1 * detail::kRowGroup));
  };
  // Work per group of 8 rows ~ 8 * pc * batch multiply-adds; keep chunks >= ~256K.
  const int64_t per_group = detail::kRowGroup * a.pc * std::min<int64_t>(batch, 8);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / per_group);
  if (groups <= grain) {
    body(0, groups);
  } else {
    PoolOr(pool).ParallelFor(groups, grain, body);
  }
  return true;
}

}  // namespace internal

bool GemvF32(const MatrixView& w, const float* x, int64_t batch, float* y, ThreadPool* pool) {
  return internal::GemvF32Isa(internal::BestIsa(), w, x, batch, y, pool);
}

bool Gemv(const GemvProblem& p, ThreadPool* pool) {
  const MatrixView& w = p;
  if (!KnownFormat(p.format) || !KnownMode(p.scale_mode) || !KnownDType(p.x_dtype) ||
      !WideDType(p.y_dtype)) {
    return false;
  }
  const int64_t rows = p.rows, cols = p.cols, batch = p.batch;
  std::vector<float> xf;
  const float* xs = static_cast<const float*>(p.x);
  if (p.x_dtype != DType::kF32) {
    xf.resize(static_cast<size_t>(batch * cols));
    ToFloat(p.x, p.x_dtype, p.x_scale, batch * cols, xf.data());
    xs = xf.data();
  }
  if (p.y_dtype == DType::kF32) return GemvF32(w, xs, batch, static_cast<float*>(p.y), pool);
  std::vector<float> yf(static_cast<size_t>(batch * rows));
  return GemvF32(w, xs, batch, yf.data(), pool) && FromFloat(yf.data(), batch * rows, p.y_dtype, p.y);
}

const char* GemvIsa() { return internal::IsaName(internal::BestIsa()); }

}  // namespace ref
}  // namespace plume
