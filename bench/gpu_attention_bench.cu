// GPU attention benchmark, in one run: the read ceiling, plume's decode at
// seq 1k/8k/32k/128k with heads 32 / kv_heads 8, D = 64, 128, 256, batch 1,
// 4, 16 and 64 (one cache, the batch's queries against it; `decode-1launch`
// rows merge the splits in the decode's last blocks instead of the combine
// kernel), and plume's prefill (kAuto: on sm_90 the Hopper prefill over FP16
// images) at one head S=8192 D=512 and at S=4096 heads 32 causal, D = 64,
// 128, 256; on sm_90 kPrefill beside it as `prefill-flash` (the flash
// prefill with no images: wgmma at D = 128, mma.sync elsewhere) and the
// mma.sync prefill at D = 128. --only decode|prefill runs one half. Caches
// are E4M3 with TOKEN_BLOCK scales (the default), random codes, in as many
// copies as keep the bytes read per launch out of L2. Each launch is
// bracketed by CUDA events; medians over --iters launches. --dims, --seqs
// and --batches (comma lists) keep those decode shapes alone, for profiling.
// bench/sdpa_attention.py times PyTorch SDPA (FP16 K/V) on the same shapes;
// bench/run_gpu_attention_bench.sh runs both on a GPU machine.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gpu_bench_common.cuh"
#include "plume/cuda/attention.h"

namespace {

using plume::DType;
using plume::Fp8Format;
using plume::KvLayout;
using plume::KvScaleMode;
using plume::cuda::AttentionProblem;
using plume::cuda::DecodePath;

// Every page's TOKEN_BLOCK scales (K then V, kv_heads each) set to `v`.
__global__ void SetPageScales(uint8_t* slab, int64_t pages, int64_t page_bytes, int64_t codes_bytes,
                              int kv_heads, float v) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < pages * 2 * kv_heads;
       i += int64_t{gridDim.x} * blockDim.x) {
    float* s = reinterpret_cast<float*>(slab + i / (2 * kv_heads) * page_bytes + 2 * codes_bytes);
    s[i % (2 * kv_heads)] = v;
  }
}

// Copies of one cache on the device, each a slab of pages with its table.
struct Caches {
  KvLayout layout;
  int64_t seq = 0;
  std::vector<void*> slabs, tables;
  ~Caches() {
    for (void* p : slabs) cudaFree(p);
    for (void* p : tables) cudaFree(p);
  }
  int64_t code_bytes() const { return 2 * seq * layout.kv_heads * layout.row_bytes(); }
};

void MakeCaches(Caches& c, int64_t kv_heads, int64_t dim, int64_t seq, int copies, cudaStream_t s) {
  c.layout = KvLayout{kv_heads, dim, KvScaleMode::kTokenBlock};
  c.seq = seq;
  const int64_t pages = KvLayout::pages_for(seq);
  const int64_t pb = c.layout.page_bytes();
  for (int i = 0; i < copies; ++i) {
    void *slab = nullptr, *table = nullptr;
    CHECK_CUDA(cudaMalloc(&slab, static_cast<size_t>(pages * pb)));
    CHECK_CUDA(cudaMalloc(&table, static_cast<size_t>(pages) * sizeof(void*)));
    FillCodes<<<kFillBlocks, 256, 0, s>>>(static_cast<uint32_t*>(slab), pages * pb / 4, 7 + i, true);
    SetPageScales<<<256, 256, 0, s>>>(static_cast<uint8_t*>(slab), pages, pb, c.layout.codes_bytes(),
                                      static_cast<int>(kv_heads), 0.02f);
    CHECK_CUDA(cudaGetLastError());
    std::vector<void*> ptrs;
    for (int64_t p = 0; p < pages; ++p) ptrs.push_back(static_cast<uint8_t*>(slab) + p * pb);
    CHECK_CUDA(cudaMemcpy(table, ptrs.data(), ptrs.size() * sizeof(void*), cudaMemcpyHostToDevice));
    c.slabs.push_back(slab);
    c.tables.push_back(table);
  }
  CHECK_CUDA(cudaStreamSynchronize(s));
}

struct Result {
  std::string kind, path;
  int64_t seq, batch, heads, kv_heads, head_dim, q_len;
  bool causal;
  double us, bytes, flops;
};
std::vector<Result> g_results;
double g_read_gbps = 0.0;

void Print(const Result& r) {
  std::printf("  %-8s %-8s seq=%-6lld b=%-2lld heads=%lld/%lld D=%lld q_len=%-5lld %-6s %10.2f us",
              r.kind.c_str(), r.path.c_str(), static_cast<long long>(r.seq),
              static_cast<long long>(r.batch), static_cast<long long>(r.heads),
              static_cast<long long>(r.kv_heads), static_cast<long long>(r.head_dim),
              static_cast<long long>(r.q_len), r.causal ? "causal" : "full", r.us);
  if (r.bytes > 0) {
    const double gbps = r.bytes / r.us / 1e3;
    std::printf(" %8.1f GB/s", gbps);
    if (g_read_gbps > 0) std::printf(" (%.0f%% of read)", 100.0 * gbps / g_read_gbps);
  }
  if (r.flops > 0) std::printf(" %7.1f TFLOP/s", r.flops / r.us / 1e6);
  std::printf("\n");
  std::fflush(stdout);
}

// Times attention of [batch, heads, q_len, D] F16 queries against the caches.
Result Run(Timer& timer, cudaStream_t s, const Caches& c, const char* kind, int64_t batch, int64_t heads,
           int64_t q_len, bool causal, DecodePath path,
           plume::cuda::AttentionKernel kernel = plume::cuda::AttentionKernel::kAuto,
           bool one_launch = false) {
  const int64_t dim = c.layout.head_dim;
  const int64_t n = batch * heads * q_len * dim;
  void *q = nullptr, *out = nullptr, *ws = nullptr;
  CHECK_CUDA(cudaMalloc(&q, static_cast<size_t>(n) * 2));
  CHECK_CUDA(cudaMalloc(&out, static_cast<size_t>(n) * 2));
  FillHalf<<<kFillBlocks, 256, 0, s>>>(static_cast<__half*>(q), n, 3);
  CHECK_CUDA(cudaGetLastError());
  AttentionProblem p;
  p.layout = c.layout;
  p.format = Fp8Format::kE4M3;
  p.seq = c.seq;
  p.q = q;
  p.q_dtype = DType::kF16;
  p.batch = batch;
  p.heads = heads;
  p.q_len = q_len;
  p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
  p.causal = causal;
  p.out = out;
  p.out_dtype = DType::kF16;
  p.path = path;
  p.kernel = kernel;
  p.one_launch = one_launch;
  int dev = 0;
  CHECK_CUDA(cudaGetDevice(&dev));
  const int64_t ws_bytes = plume::cuda::AttentionWorkspaceBytes(p, dev);
  if (ws_bytes <= 0) {
    std::fprintf(stderr, "attention: unsupported problem\n");
    std::exit(1);
  }
  CHECK_CUDA(cudaMalloc(&ws, static_cast<size_t>(ws_bytes)));
  CHECK_CUDA(cudaMemset(ws, 0, static_cast<size_t>(ws_bytes)));  // the counters, once
  const int copies = static_cast<int>(c.tables.size());
  const double us = timer.Median([&](int i) {
    p.pages = static_cast<const uint8_t* const*>(c.tables[i % copies]);
    CHECK_CUDA(plume::cuda::Attention(p, ws, ws_bytes, s));
  });
  cudaFree(q);
  cudaFree(out);
  cudaFree(ws);
  const int64_t visible2 = causal ? q_len * (2 * c.seq - q_len + 1) : 2 * q_len * c.seq;  // 2x visible pairs
  Result r{kind, plume::cuda::DecodePathName(path), c.seq, batch, heads, c.layout.kv_heads, dim, q_len,
           causal, us, static_cast<double>(c.code_bytes()),
           2.0 * static_cast<double>(batch * heads * dim) * static_cast<double>(visible2)};
  if (std::string(kind).rfind("prefill", 0) == 0) r.bytes = 0;
  if (std::string(kind).rfind("decode", 0) == 0) r.flops = 0;
  g_results.push_back(r);
  Print(r);
  return r;
}

void WriteJson(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) {
    std::perror(path.c_str());
    std::exit(1);
  }
  std::fprintf(f, "{\"read_ceiling_gbps\": %.3f, \"results\": [\n", g_read_gbps);
  for (size_t i = 0; i < g_results.size(); ++i) {
    const Result& r = g_results[i];
    std::fprintf(f,
                 "  {\"kind\": \"%s\", \"path\": \"%s\", \"seq\": %lld, \"batch\": %lld, \"heads\": %lld, "
                 "\"kv_heads\": %lld, \"head_dim\": %lld, \"q_len\": %lld, \"causal\": %s, "
                 "\"median_us\": %.3f, \"kv_bytes\": %.0f, \"flops\": %.0f}%s\n",
                 r.kind.c_str(), r.path.c_str(), static_cast<long long>(r.seq),
                 static_cast<long long>(r.batch), static_cast<long long>(r.heads),
                 static_cast<long long>(r.kv_heads), static_cast<long long>(r.head_dim),
                 static_cast<long long>(r.q_len), r.causal ? "true" : "false", r.us, r.bytes, r.flops,
                 i + 1 < g_results.size() ? "," : "");
  }
  std::fprintf(f, "]}\n");
  std::fclose(f);
}

}  // namespace

int main(int argc, char** argv) {
  std::string json;
  int iters = 50;
  std::string only;  // "decode" or "prefill": that half of the bench alone
  std::vector<int64_t> dims, seqs, batches;  // decode shapes kept (empty: all)
  const auto list = [](const char* v) {
    std::vector<int64_t> out;
    for (const char* p = v; *p != '\0';) {
      char* end = nullptr;
      out.push_back(std::strtoll(p, &end, 10));
      if (end == p || out.back() <= 0) return std::vector<int64_t>{};
      p = *end == ',' ? end + 1 : end;
    }
    return out;
  };
  const auto keep = [](const std::vector<int64_t>& l, int64_t v) {
    return l.empty() || std::find(l.begin(), l.end(), v) != l.end();
  };
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json" && i + 1 < argc) {
      json = argv[++i];
    } else if (a == "--iters" && i + 1 < argc) {
      iters = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--only" && i + 1 < argc && (std::string(argv[i + 1]) == "decode" ||
                                                  std::string(argv[i + 1]) == "prefill")) {
      only = argv[++i];
    } else if ((a == "--dims" || a == "--seqs" || a == "--batches") && i + 1 < argc &&
               !list(argv[i + 1]).empty()) {
      (a == "--dims" ? dims : a == "--seqs" ? seqs : batches) = list(argv[++i]);
    } else {
      std::fprintf(stderr,
                   "usage: gpu_attention_bench [--json PATH] [--iters N] [--only decode|prefill] "
                   "[--dims D,..] [--seqs S,..] [--batches B,..]\n");
      return 2;
    }
  }
  int dev = 0, cc_major = 0, cc_minor = 0, sms = 0;
  CHECK_CUDA(cudaGetDevice(&dev));
  CHECK_CUDA(cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, dev));
  CHECK_CUDA(cudaDeviceGetAttribute(&cc_minor, cudaDevAttrComputeCapabilityMinor, dev));
  CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  std::vector<DecodePath> paths = {DecodePath::kSoftware};
  if (cc_major * 10 + cc_minor >= 89) paths.insert(paths.begin(), DecodePath::kNative);
  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreate(&s));
  Timer timer(s, iters);

  // The read ceiling: 1 GiB read once per launch.
  {
    const int64_t bytes = int64_t{1} << 30;
    void* buf = nullptr;
    uint32_t* sink = nullptr;
    CHECK_CUDA(cudaMalloc(&buf, static_cast<size_t>(bytes)));
    CHECK_CUDA(cudaMalloc(&sink, 4));
    FillCodes<<<kFillBlocks, 256, 0, s>>>(static_cast<uint32_t*>(buf), bytes / 4, 1, true);
    const double us = timer.Median([&](int) {
      ReadKernel<<<sms * 4, 512, 0, s>>>(static_cast<const uint4*>(buf), bytes / 16, sink);
    });
    g_read_gbps = static_cast<double>(bytes) / us / 1e3;
    std::printf("read ceiling: %.1f GB/s (1 GiB, %.1f us)\n", g_read_gbps, us);
    cudaFree(buf);
    cudaFree(sink);
  }

  if (only != "prefill") std::printf("decode (E4M3, TOKEN_BLOCK, F16 queries and outputs, causal):\n");
  for (int64_t dim : {128, 64, 256}) {
    if (only == "prefill") break;
    if (!keep(dims, dim)) continue;
    for (int64_t seq : {1024, 8192, 32768, 131072}) {
      if (!keep(seqs, seq)) continue;
      Caches c;
      const int64_t one = 2 * seq * 8 * dim;
      const int copies =
          static_cast<int>(std::min<int64_t>(32, std::max<int64_t>(1, (int64_t{512} << 20) / one)));
      MakeCaches(c, 8, dim, seq, copies, s);
      for (int64_t batch : {1, 4, 16, 64}) {
        if (!keep(batches, batch)) continue;
        for (DecodePath path : paths) Run(timer, s, c, "decode", batch, 32, 1, true, path);
        // The splits merged by the decode's last blocks, one launch (the
        // default merges them with the combine kernel, a second launch).
        Run(timer, s, c, "decode-1launch", batch, 32, 1, true, DecodePath::kNative,
            plume::cuda::AttentionKernel::kAuto, true);
      }
    }
  }

  if (only != "decode") std::printf("prefill (E4M3, TOKEN_BLOCK, F16 queries and outputs):\n");
  if (only != "decode") {
    Caches c;
    MakeCaches(c, 1, 512, 8192, 1, s);
    for (DecodePath path : paths) {
      Run(timer, s, c, "prefill", 1, 1, 8192, false, path);
      if (cc_major == 9) {
        Run(timer, s, c, "prefill-flash", 1, 1, 8192, false, path,
            plume::cuda::AttentionKernel::kPrefill);
      }
    }
  }
  // 32 heads, S=4096, causal, at D = 64, 128, 256; on sm_90 the flash
  // prefills with no images beside kAuto's, same run.
  for (int64_t dim : {64, 128, 256}) {
    if (only == "decode") break;
    Caches c;
    MakeCaches(c, 32, dim, 4096, 1, s);
    for (DecodePath path : paths) {
      Run(timer, s, c, "prefill", 1, 32, 4096, true, path);
      if (cc_major == 9 && dim == 128) {
        Run(timer, s, c, "prefill-mma.sync", 1, 32, 4096, true, path,
            plume::cuda::AttentionKernel::kPrefillMmaSync);
      }
      if (cc_major == 9) {
        Run(timer, s, c, "prefill-flash", 1, 32, 4096, true, path,
            plume::cuda::AttentionKernel::kPrefill);
      }
    }
  }
  if (!json.empty()) WriteJson(json);
  CHECK_CUDA(cudaStreamDestroy(s));
  return 0;
}
