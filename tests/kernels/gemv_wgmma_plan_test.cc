// The Hopper GEMV's plan (kernels/cuda/src/gemv_wgmma.cu, host code: no GPU
// needed): which shapes take paired stages (blocks of 64 rows whose two warp
// groups take alternate chunks) and how the chunks are split. What the
// kernels compute under each plan is tests/gpu/gpu_gemv_test.cc's job.
#include <gtest/gtest.h>

#include <string>

#include "kernels/cuda/src/gemv_wgmma.h"

namespace plume::cuda::wgmma_gemv {
namespace {

constexpr int kSms = 132;  // an H100 SXM / H200

Plan PlanOf(int64_t rows, int64_t cols, int64_t batch, DType x = DType::kF16,
            ScaleMode mode = ScaleMode::kRow) {
  GemvProblem p;
  p.rows = rows;
  p.cols = cols;
  p.batch = batch;
  p.x_dtype = x;
  p.scale_mode = mode;
  Plan pl;
  EXPECT_EQ(MakePlan(p, kSms, &pl), cudaSuccess) << rows << "x" << cols << " batch " << batch;
  return pl;
}

// Every chunk is some block's, once: splits of chunks_per_split, the last
// shorter; paired splits start on an even chunk.
void ExpectChunksCovered(const Plan& pl, const std::string& what) {
  ASSERT_GE(pl.splits, 1) << what;
  EXPECT_GE(int64_t{pl.splits} * pl.chunks_per_split, pl.chunks) << what;
  EXPECT_LT(int64_t{pl.splits - 1} * pl.chunks_per_split, pl.chunks) << what;
  if (pl.pair && pl.splits > 1) EXPECT_EQ(pl.chunks_per_split % 2, 0) << what;
}

TEST(WgmmaPlan, PairedStagesReplaceATwoWaySplit) {
  // 8192 rows: 64 tiles of 128 would split in two to fill 132 SMs; 128
  // blocks of 64 rows fill them with no split-K finish.
  for (int64_t batch : {1, 8, 16, 32}) {
    const Plan pl = PlanOf(8192, 8192, batch);
    EXPECT_TRUE(pl.pair) << "batch " << batch;
    EXPECT_EQ(pl.tile_rows(), 64);
    EXPECT_EQ(pl.row_tiles, 128);
    EXPECT_EQ(pl.splits, 1);
    ExpectChunksCovered(pl, "8192^2");
  }
  const Plan wide = PlanOf(8192, 28672, 16);
  EXPECT_TRUE(wide.pair);
  EXPECT_EQ(wide.splits, 1);
  // 4096^2: four splits of 32 tiles become two of 64 half tiles.
  const Plan small = PlanOf(4096, 4096, 8);
  EXPECT_TRUE(small.pair);
  EXPECT_EQ(small.row_tiles, 64);
  EXPECT_EQ(small.splits, 2);
  ExpectChunksCovered(small, "4096^2");
}

TEST(WgmmaPlan, TallMatricesRunWholeTilesInTwoWavesNotManyShortBlocks) {
  // 28672 rows: 224 tiles are 1.7 waves on 132 SMs. Splitting each in four
  // fills the last wave better, but 896 blocks of 16 chunks' work each pay a
  // block's fixed cost seven times over; the plan keeps whole tiles.
  for (int64_t batch : {1, 8, 16, 32}) {
    const Plan pl = PlanOf(28672, 8192, batch);
    EXPECT_FALSE(pl.pair) << "batch " << batch;
    EXPECT_EQ(pl.row_tiles, 224);
    EXPECT_EQ(pl.splits, 1);
  }
}

TEST(WgmmaPlan, KeepsWholeTilesWhereNoEvenSplitIsPlanned) {
  // 16384 rows fill the device with 128-row tiles and no split.
  const Plan big = PlanOf(16384, 16384, 16);
  EXPECT_FALSE(big.pair);
  EXPECT_EQ(big.tile_rows(), 128);
  EXPECT_EQ(big.splits, 1);
  // Block scales: the paired kernels carry none.
  EXPECT_FALSE(PlanOf(8192, 8192, 8, DType::kF16, ScaleMode::kBlock128).pair);
  // N = 128 keeps its deeper ring (batch 64 F32 as hi + lo).
  EXPECT_FALSE(PlanOf(8192, 8192, 64, DType::kF32).pair);
  EXPECT_TRUE(PlanOf(8192, 8192, 16, DType::kF32).pair);
}

TEST(WgmmaPlan, BatchSixtyFourPairsOnlyShortStreams) {
  // N = 64 (batch 64 F16, 32 F32 as hi + lo): the paired ring is 3 stages,
  // so a block pairs only where its split is at most 128 chunks long.
  for (DType x : {DType::kF16, DType::kF32}) {
    const int64_t batch = x == DType::kF16 ? 64 : 32;
    const Plan square = PlanOf(8192, 8192, batch, x);  // 64 chunks a block
    EXPECT_EQ(square.n, 64);
    EXPECT_TRUE(square.pair);
    EXPECT_EQ(square.splits, 1);
    const Plan small = PlanOf(4096, 4096, batch, x);  // two splits of 16 chunks
    EXPECT_TRUE(small.pair);
    EXPECT_EQ(small.splits, 2);
    ExpectChunksCovered(small, "4096^2 N = 64");
    const Plan wide = PlanOf(8192, 28672, batch, x);  // 224 chunks: two splits of 128 rows
    EXPECT_FALSE(wide.pair);
    EXPECT_EQ(wide.tile_rows(), 128);
    EXPECT_EQ(wide.splits, 2);
  }
  // 8192 x 16384: 128 chunks, the longest split that pairs.
  EXPECT_TRUE(PlanOf(8192, 16384, 64).pair);
}

TEST(WgmmaPlan, WorkspaceHoldsEverySplitsSums) {
  // Odd chunk counts (a lone last chunk) and paired splits of small shapes:
  // the shapes gpu_gemv_test runs.
  const int64_t shapes[][2] = {{300, 1000}, {300, 1100}, {200, 2040}, {200, 2100},
                               {129, 4095}, {77, 2304},  {4096, 4096}, {8192, 8192}};
  for (const auto& s : shapes) {
    for (int64_t batch : {1, 9, 17, 33, 64}) {
      const Plan pl = PlanOf(s[0], s[1], batch);
      const std::string what = std::to_string(s[0]) + "x" + std::to_string(s[1]) + " batch " +
                               std::to_string(batch);
      ExpectChunksCovered(pl, what);
      EXPECT_GE(int64_t{pl.row_tiles} * pl.tile_rows(), s[0]) << what;
      EXPECT_LT(int64_t{pl.row_tiles - 1} * pl.tile_rows(), s[0]) << what;
      if (pl.splits > 1) {
        EXPECT_GE(pl.total - pl.off_partial,
                  int64_t{pl.splits} * pl.row_tiles * pl.tile_rows() * pl.n * 4)
            << what;
      }
      EXPECT_FALSE(pl.pair && pl.cluster) << what;
    }
  }
  // At least one of them takes paired stages with splits, one a lone chunk.
  EXPECT_TRUE(PlanOf(200, 2040, 9).pair);
  EXPECT_GT(PlanOf(200, 2040, 9).splits, 1);
  const Plan lone = PlanOf(300, 1100, 9);
  EXPECT_TRUE(lone.pair);
  EXPECT_EQ(lone.chunks % 2, 1);
}

}  // namespace
}  // namespace plume::cuda::wgmma_gemv
