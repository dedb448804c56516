// The Hopper flash prefill over FP16 images at head dim 512 (sm_90a), where
// one warp group's output rows no longer fit its registers (64 rows x 512
// FP32 is 256 a thread). A block takes 64 query rows of one kv head and its
// two consumer warp groups split the head dim: consumer c holds Q's and O's
// dims [256c, 256c + 256). Per 32-token tile (attention_prefill_image.h):
//  - each consumer runs its half of S = Q K^T (wgmma m64n32k16 over its 16
//    k16 steps of K's image), leaves it in shared memory in its own
//    fragment order and adds the other's: both hold the same S (x + y is
//    y + x in IEEE arithmetic), so both run the same softmax and get the
//    same P, max and sum;
//  - each runs O += P V for its dims (wgmma m64n256k16, its 256 rows of the
//    V^T image).
// The producer, the ring, the image pass and the pipelining (the next
// tile's Q K^T issued with this tile's P V, its exchange and softmax while
// P V runs) are the other kernel's (attention_prefill_images.cuh). Included
// by attention_prefill_images.cu and the CPU emulation
// (tests/emu/prefill_images_emu_test.cc) only.
#pragma once

#include "attention_prefill_images.cuh"

namespace plume::cuda {
namespace {

template <int kD>
struct WideShape {
  static constexpr int kTile = TileTokens(kD);  // tokens per K / V tile
  static constexpr int kHalf = kD / 2;          // head dims per consumer
  static constexpr int kImg = ImageHalves(kD);
  static constexpr int kStages = 2;
  // A split ring (TileRing): tile j + 2's K image loads once Q K^T of tile j
  // is done. 0.74-0.77x the time at S = 8192 on an H100, where the K image
  // waited for P V of tile j before.
  static constexpr bool kSplit = true;
  static constexpr int kQHalves = kWgRows * kD;  // both consumers' halves of Q
  static constexpr int kS = kTile / 2;           // S accumulators per thread
  static constexpr int kSteps = kTile / 16;      // k16 steps of P V
  static constexpr int kAcc = kHalf / 2;         // O accumulators per thread
  // The S exchange: [tile parity][consumer][element][thread] floats.
  static constexpr int kXchFloats = 2 * 2 * kS * 128;
  static constexpr size_t kSmem =
      size_t{kQHalves} * 2 + size_t{kStages} * 2 * kImg * 2 + size_t{kXchFloats} * 4 + 128;
};

// Grid: group kv heads x row tiles of 64 (PlaceBlock). kEarlyRescale: O is
// rescaled in ConsumeTiles' pre_pv, not in its next.
template <int kD, bool kEarlyRescale = PLUME_PREFILL_EARLY_RESCALE != 0>
__global__ void __launch_bounds__(kThreads, 1) PrefillImagesWideKernel(const FaArgs a, const WgImages w) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || defined(PLUME_CUDA_EMULATION)
  using S = WideShape<kD>;
  constexpr int kTile = S::kTile, kStages = S::kStages, kHalf = S::kHalf;
  PLUME_DYNAMIC_SMEM(wg_smem_raw);
  PLUME_SHARED TileRing<kStages, S::kSplit> bars;
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(wg_smem_raw) + 127) & ~uintptr_t{127});
  __half* qs = reinterpret_cast<__half*>(smem);  // [consumer][64 rows x kHalf]
  __half* ring = qs + S::kQHalves;               // [stage][K image, V image]
  float* xch = reinterpret_cast<float*>(ring + kStages * 2 * S::kImg);

  const int tid = threadIdx.x, wg = WarpGroup(), wtid = tid & 127;
  const BlockPlace b = PlaceBlock(a, w, kWgRows, kTile);
  const int hl = b.hl, kvh = b.kvh, lr0 = b.lr0, nrows = b.nrows, tiles = b.tiles;
  const int64_t vis_min = b.vis_min;

  if (tid == 0) InitRing(bars);
  __syncthreads();

  if (wg == 0) {
    SetMaxRegsDec<kProducerRegs>();
    if (wtid == 0) ProduceTiles<kStages, S::kImg>(bars, ring, w.img + static_cast<int64_t>(hl) * w.tiles * 2 * S::kImg, tiles);
  } else {
    SetMaxRegsInc<kConsumerRegs>();
    const int cw = wg - 1;
    const int d0 = cw * kHalf;  // this consumer's first head dim
    const int wq = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, t = lane & 3;
    __half* q_mine = qs + cw * kWgRows * kHalf;
    LoadQ<kHalf>(a, kvh, lr0, 0, nrows, d0, q_mine, wtid);
    NamedBarrier(2 + cw, 128);

    const int ra = 16 * wq + g, rb = ra + 8;  // this lane's rows in the block
    const int64_t vis_a = ra < nrows ? FaLastVisible(a, lr0 + ra) : -1;
    const int64_t vis_b = rb < nrows ? FaLastVisible(a, lr0 + rb) : -1;
    const float4* scales = reinterpret_cast<const float4*>(w.scales) + static_cast<int64_t>(hl) * w.tiles;

    float o[S::kAcc];
#pragma unroll
    for (int i = 0; i < S::kAcc; ++i) o[i] = 0.0f;
    SoftmaxState st;
    float s[S::kS];
    uint32_t p[S::kSteps][4];
    const uint32_t q_addr = SmemAddr(q_mine);
    const uint32_t ring_addr = SmemAddr(ring);
    const auto stage = [&](int j) { return ring_addr + (j % kStages) * 4 * S::kImg; };
    float4 sc = scales[0];
    ConsumeTiles(
        bars, tiles, tiles, lane,
        [&](int j) {  // this consumer's k16 steps of the K image
#pragma unroll
          for (int k = 0; k < kHalf / 16; ++k) {
            WgmmaSs32(s, Desc(q_addr + k * StepBytes(kWgRows)),
                      Desc(stage(j) + (d0 / 16 + k) * StepBytes(kTile)), k > 0 ? 1 : 0);
          }
        },
        [&](int j) {  // this consumer's rows of the V^T image
#pragma unroll
          for (int kk = 0; kk < S::kSteps; ++kk) {
            Wgmma<kHalf>::Run(o, p[kk], Desc(stage(j) + 2 * S::kImg + d0 * 32 + kk * StepBytes(kD)), 1);
          }
        },
        [&](int j, float& fa, float& fb) {
          // S = this consumer's half + the other's (tile parity picks the
          // buffer: a consumer rewrites its half two tiles later, after the
          // other has passed the barrier of the tile between).
          float* mine = xch + ((j & 1) * 2 + cw) * S::kS * 128 + wtid;
          const float* other = xch + ((j & 1) * 2 + (1 - cw)) * S::kS * 128 + wtid;
#pragma unroll
          for (int i = 0; i < S::kS; ++i) mine[i * 128] = s[i];
          NamedBarrier(4, 256);
#pragma unroll
          for (int i = 0; i < S::kS; ++i) s[i] += other[i * 128];
          const int64_t t0 = static_cast<int64_t>(j) * kTile;
          TileSoftmax(s, sc, a.scale_log2, t0 + kTile - 1 > vis_min, t0, t, vis_a, vis_b, st, fa, fb);
          sc = scales[min(j + 1, w.tiles - 1)];  // the next tile's, in flight meanwhile
        },
        [&](float fa, float fb) {
          if constexpr (!kEarlyRescale) RescaleO(o, fa, fb);
          PackP(s, p);
        },
        [&] { FenceOperands(s); },
        [&] {
          FenceOperands(o);
          FenceOperands(p);
        },
        [&](float fa, float fb) {
          if constexpr (kEarlyRescale) RescaleO(o, fa, fb);
        });
    StoreO(a, o, st, kvh, lr0, nrows, ra, rb, d0, t);
  }
#endif
}

}  // namespace
}  // namespace plume::cuda
