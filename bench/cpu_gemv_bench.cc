// Times plume::ref::GemvF32 (the CPU backend) on packed FP8 matrices.
//
//   plume_cpu_gemv_bench [--json] [--iters N] [--threads T] [--isa scalar|avx2|avx512|avx512vbmi]
//                        [--shape RxC] [--batch B] [--format e4m3|e5m2]
//                        [--scale none|tensor|row|block128|block128x128] [--no-huge-pages]
//
// Without --shape/--batch it runs 8192x8192 and 4096x4096 at batch 1 and 8,
// E4M3, ROW scales. Each case: warm-up, then the median (and min) over
// N timed calls; GB/s counts the packed FP8 weight bytes read once per call.
// Each case also times the "read ceiling": summing the same weight bytes on
// the same threads (no decode, no FMA), the memory-bound limit of the GEMV.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include <immintrin.h>

#include <sys/mman.h>
#include <random>
#include <string>
#include <vector>

#include "plume/reference/api.h"
#include "plume/reference/internal.h"
#include "plume/reference/thread_pool.h"

namespace {

struct Case {
  int64_t rows, cols, batch;
};

struct Result {
  Case c;
  double median_ms, min_ms, gbps;
  double read_ms;  // read ceiling for the same weight bytes
};

double NowMs() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The "read ceiling": the time to read a buffer once and sum its bytes on
// all threads of the pool (equal halves), AVX-512 when the CPU has it. An
// FP8 GEMV reads the same bytes, so this bounds it from below.
__attribute__((target("avx512f,avx512bw"))) uint64_t SumBytesAvx512(const uint8_t* p, size_t n) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  const __m512i z = _mm512_setzero_si512();
  size_t i = 0;
  for (; i + 256 <= n; i += 256) {
    a0 = _mm512_add_epi64(a0, _mm512_sad_epu8(_mm512_load_si512(p + i), z));
    a1 = _mm512_add_epi64(a1, _mm512_sad_epu8(_mm512_load_si512(p + i + 64), z));
    a2 = _mm512_add_epi64(a2, _mm512_sad_epu8(_mm512_load_si512(p + i + 128), z));
    a3 = _mm512_add_epi64(a3, _mm512_sad_epu8(_mm512_load_si512(p + i + 192), z));
  }
  uint64_t s = _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)));
  for (; i < n; ++i) s += p[i];
  return s;
}

uint64_t SumBytes(const uint8_t* p, size_t n) {
  if (__builtin_cpu_supports("avx512bw")) return SumBytesAvx512(p, n);
  uint64_t s = 0;
  for (size_t i = 0; i < n; ++i) s += p[i];
  return s;
}

// Median time of `n` parallel reads of buf[0, bytes) (64-byte aligned).
double ReadCeilingMs(plume::ThreadPool& pool, const uint8_t* buf, size_t bytes, int n) {
  const int64_t parts = pool.size();
  const size_t part = (bytes / parts + 255) / 256 * 256;
  std::vector<uint64_t> sums(static_cast<size_t>(parts));
  std::vector<double> t;
  for (int i = 0; i < n + 5; ++i) {
    const double t0 = NowMs();
    pool.ParallelFor(parts, 1, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        const size_t lo = std::min(bytes, static_cast<size_t>(k) * part);
        const size_t hi = std::min(bytes, lo + part);
        sums[static_cast<size_t>(k)] += SumBytes(buf + lo, hi - lo);
      }
    });
    if (i >= 5) t.push_back(NowMs() - t0);
  }
  volatile uint64_t sink = 0;
  for (uint64_t v : sums) sink = sink + v;
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  using namespace plume;
  bool json = false;
  bool nohuge = false;
  int iters = 0;
  int threads = 0;
  std::string isa_name;
  std::vector<Case> cases;
  int64_t shape_r = 0, shape_c = 0, batch = 0;
  Fp8Format fmt = Fp8Format::kE4M3;
  ScaleMode mode = ScaleMode::kRow;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "missing value for %s\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--json") json = true;
    else if (a == "--no-huge-pages") nohuge = true;
    else if (a == "--iters") iters = std::atoi(next().c_str());
    else if (a == "--threads") threads = std::atoi(next().c_str());
    else if (a == "--isa") isa_name = next();
    else if (a == "--shape") {
      const std::string s = next();
      if (std::sscanf(s.c_str(), "%ldx%ld", &shape_r, &shape_c) != 2) return 2;
    } else if (a == "--batch") batch = std::atoll(next().c_str());
    else if (a == "--format") fmt = next() == "e5m2" ? Fp8Format::kE5M2 : Fp8Format::kE4M3;
    else if (a == "--scale") {
      const std::string s = next();
      mode = s == "none" ? ScaleMode::kNone : s == "tensor" ? ScaleMode::kTensor
             : s == "block128" ? ScaleMode::kBlock128
             : s == "block128x128" ? ScaleMode::kBlock128x128 : ScaleMode::kRow;
    } else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  if (shape_r > 0) {
    if (batch > 0) cases.push_back({shape_r, shape_c, batch});
    else cases = {{shape_r, shape_c, 1}, {shape_r, shape_c, 8}};
  } else {
    const std::vector<int64_t> bs = batch > 0 ? std::vector<int64_t>{batch} : std::vector<int64_t>{1, 8};
    for (int64_t n : {8192, 4096})
      for (int64_t b : bs) cases.push_back({n, n, b});
  }
  ref::internal::Isa isa = ref::internal::BestIsa();
  if (isa_name == "scalar") isa = ref::internal::Isa::kScalar;
  if (isa_name == "avx2") isa = ref::internal::Isa::kAvx2;
  if (isa_name == "avx512") isa = ref::internal::Isa::kAvx512;
  if (isa_name == "avx512vbmi") isa = ref::internal::Isa::kAvx512Vbmi;
  if (!ref::internal::IsaSupported(isa)) {
    std::fprintf(stderr, "ISA %s not supported here\n", ref::internal::IsaName(isa));
    return 1;
  }
  ThreadPool pool(threads);

  std::vector<Result> results;
  std::mt19937 rng(1234);
  for (const Case& c : cases) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> src(static_cast<size_t>(c.rows * c.cols));
    for (float& v : src) v = nd(rng);
    PackedLayout l{c.rows, c.cols};
    // Weights in 2 MiB-aligned memory with transparent huge pages requested
    // (what a server holding large matrices would do; fewer TLB misses).
    const size_t wbytes = (static_cast<size_t>(l.code_bytes()) + (2u << 20) - 1) / (2u << 20) * (2u << 20);
    uint32_t* wmem = static_cast<uint32_t*>(std::aligned_alloc(2u << 20, wbytes));
    if (!nohuge) madvise(wmem, wbytes, MADV_HUGEPAGE);
    std::memset(wmem, 0, wbytes);
    std::unique_ptr<uint32_t, decltype(&std::free)> wguard(wmem, &std::free);
    uint32_t* words_ptr = wmem;
    std::vector<float> scales(static_cast<size_t>(std::max<int64_t>(1, NumScales(mode, c.rows, c.cols))));
    ref::QuantizeOptions qo;
    qo.format = fmt;
    qo.scale_mode = mode;
    ref::QuantizePack(src.data(), DType::kF32, c.rows, c.cols, qo, words_ptr, scales.data(), &pool);
    src.clear();
    src.shrink_to_fit();
    // BLOCK128X128 is timed as the server holds it: BLOCK128, each row with
    // its band's scales (ResidentScaleMode), expanded once here, and the
    // CPU backend's band hint (MatrixView::uniform_bands).
    std::vector<float> row_scales;
    if (mode == ScaleMode::kBlock128x128) {
      row_scales.resize(static_cast<size_t>(NumScales(ScaleMode::kBlock128, c.rows, c.cols)));
      ExpandBlockScales(c.rows, c.cols, scales.data(), row_scales.data());
    }
    MatrixView w{words_ptr, row_scales.empty() ? scales.data() : row_scales.data(), l.rows, l.cols,
                 fmt, ResidentScaleMode(mode)};
    w.uniform_bands = ref::BlockScalesUniformInBands(w);
    std::vector<float> x(static_cast<size_t>(c.batch * c.cols)), y(static_cast<size_t>(c.batch * c.rows));
    for (float& v : x) v = nd(rng);

    const double bytes = static_cast<double>(l.code_bytes());
    int n = iters > 0 ? iters : std::clamp(static_cast<int>(2e9 / bytes), 20, 200);
    for (int i = 0; i < 5; ++i) ref::internal::GemvF32Isa(isa, w, x.data(), c.batch, y.data(), &pool);
    std::vector<double> t;
    t.reserve(n);
    for (int i = 0; i < n; ++i) {
      const double t0 = NowMs();
      ref::internal::GemvF32Isa(isa, w, x.data(), c.batch, y.data(), &pool);
      t.push_back(NowMs() - t0);
    }
    std::sort(t.begin(), t.end());
    const double med = t[t.size() / 2];
    const double rd = ReadCeilingMs(pool, reinterpret_cast<const uint8_t*>(words_ptr),
                                    static_cast<size_t>(l.code_bytes()), n);
    results.push_back({c, med, t.front(), bytes / (med * 1e-3) / 1e9, rd});
    if (!json)
      std::printf("read ceiling        %5ldx%-5ld          : median %8.3f ms                  %6.1f GB/s (%d runs, %d threads)\n",
                  c.rows, c.cols, rd, bytes / (rd * 1e-3) / 1e9, n, pool.size());
    if (!json)
      std::printf("gemv_f32 %s %s %s %5ldx%-5ld batch %-2ld : median %8.3f ms  min %8.3f ms  %6.1f GB/s (%d runs, %d threads)\n",
                  ref::internal::IsaName(isa), DTypeName(ToDType(fmt)), ScaleModeName(mode), c.rows,
                  c.cols, c.batch, med, t.front(), results.back().gbps, n, pool.size());
  }
  if (json) {
    std::printf("{\"isa\": \"%s\", \"threads\": %d, \"format\": \"%s\", \"scale_mode\": \"%s\", \"results\": [",
                ref::internal::IsaName(isa), pool.size(), DTypeName(ToDType(fmt)), ScaleModeName(mode));
    for (size_t i = 0; i < results.size(); ++i) {
      const Result& r = results[i];
      std::printf("%s{\"rows\": %ld, \"cols\": %ld, \"batch\": %ld, \"median_ms\": %.4f, \"min_ms\": %.4f, \"weight_gbps\": %.2f, \"read_ceiling_ms\": %.4f}",
                  i ? ", " : "", r.c.rows, r.c.cols, r.c.batch, r.median_ms, r.min_ms, r.gbps, r.read_ms);
    }
    std::printf("]}\n");
  }
  return 0;
}
