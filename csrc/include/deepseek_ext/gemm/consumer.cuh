// Consumer warpgroup: per tile and K block, waits for the stage, runs 4 wgmma k32 steps into a
// fresh fp32 partial sum, promotes it into the main accumulator with the K block's scales on
// the CUDA cores, and releases the stage; then the epilogue stores the tile.
#pragma once
#include <cuda.h>

#include "deepseek_ext/gemm/config.cuh"
#include "deepseek_ext/gemm/epilogue.cuh"
#include "deepseek_ext/gemm/fragment.cuh"
#include "deepseek_ext/gemm/params.cuh"
#include "deepseek_ext/gemm/pipeline.cuh"
#include "deepseek_ext/gemm/smem_desc.cuh"
#include "deepseek_ext/ptx/mbarrier.cuh"
#include "deepseek_ext/ptx/tma.cuh"
#include "deepseek_ext/ptx/wgmma.cuh"

namespace dx::gemm {

// d (+)= A[64 x 32] * B[kBlockN x 32]^T for one 32-wide K slice.
template <int kBlockN>
__device__ __forceinline__ void wgmma_k32(float (&d)[kBlockN / 2], uint64_t desc_a,
                                          uint64_t desc_b, bool accumulate) {
  static_assert(supported_block_n(kBlockN), "BLOCK_N");
  if constexpr (kBlockN == 128) {
    ptx::wgmma_m64n128k32_f32_e4m3(d, desc_a, desc_b, accumulate);
  } else {
    ptx::wgmma_m64n64k32_f32_e4m3(d, desc_a, desc_b, accumulate);
  }
}

// acc += partial * sa[row] * sb[col] over this thread's fragment (64 x kBlockN fp32 over 128
// threads: kBlockN / 2 registers each).
template <int kBlockN, bool kSbPerRow>
__device__ __forceinline__ void promote(float (&acc)[kBlockN / 2],
                                        const float (&partial)[kBlockN / 2],
                                        float sa_lo, float sa_hi, float sb_block,
                                        const float* sb_cols, int lane) {
#pragma unroll
  for (int j = 0; j < kBlockN / 8; ++j) {
    float sb0 = sb_block, sb1 = sb_block;
    if constexpr (kSbPerRow) {
      const float2 s = *reinterpret_cast<const float2*>(sb_cols + fragment_col(lane, j));
      sb0 = s.x;
      sb1 = s.y;
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float sa = h == 0 ? sa_lo : sa_hi;
      const int r = fragment_reg(j, h);
      acc[r] = fmaf(partial[r], sa * sb0, acc[r]);
      acc[r + 1] = fmaf(partial[r + 1], sa * sb1, acc[r + 1]);
    }
  }
}

template <typename OutT, int kBlockN, bool kSbPerRow>
__device__ __forceinline__ void consume(const CUtensorMap& tmap_d, const GemmParams& p,
                                        uint8_t* smem_ptr, uint32_t smem) {
  constexpr SmemLayout kLayout = layout_for(sizeof(OutT), kBlockN);
  constexpr int kAccRegs = kBlockN / 2;
  const int wg = threadIdx.x / kWarpgroupThreads;
  const int wt = threadIdx.x % kWarpgroupThreads;
  const int warp = wt / 32;
  const int lane = wt % 32;
  if (wt == 0) ptx::prefetch_tensor_map(&tmap_d);
  RingPosition<kLayout.stages> ring;
  const int tiles = p.sched.tiles();
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    const TileWork w = p.sched.work(t);
    float acc[kAccRegs];
#pragma unroll
    for (int i = 0; i < kAccRegs; ++i) acc[i] = 0.0f;
    float partial[kAccRegs];
    for (int kb = w.kb_begin; kb < w.kb_end; ++kb) {
      // 128x128 B scales: the row of 128-row blocks holding this tile's columns.
      const float sb_block =
          kSbPerRow ? 1.0f : __ldg(p.sb_blocks + static_cast<int64_t>(w.sb_block_row) * p.ld_sb_blocks + kb);
      ptx::mbarrier_wait_parity(smem + kLayout.full_barrier(ring.stage), ring.phase);
      const float* sa =
          reinterpret_cast<const float*>(smem_ptr + kLayout.scale_a(ring.stage)) + wg * kWgRows;
      const float sa_lo = sa[fragment_row(warp, lane, 0)];
      const float sa_hi = sa[fragment_row(warp, lane, 1)];
      const uint64_t desc_a =
          smem_desc_k_major_sw128(smem + kLayout.a(ring.stage) + wg * kWgRows * kBlockK);
      const uint64_t desc_b = smem_desc_k_major_sw128(smem + kLayout.b(ring.stage));
      ptx::wgmma_fence();
#pragma unroll
      for (int s = 0; s < kBlockK / kWgmmaK; ++s) {
        wgmma_k32<kBlockN>(partial, smem_desc_advance_k(desc_a, s), smem_desc_advance_k(desc_b, s),
                           s > 0);
      }
      ptx::wgmma_commit_group();
      ptx::wgmma_wait_group<0>();
#pragma unroll
      for (int i = 0; i < kAccRegs; ++i) ptx::fence_operand(partial[i]);
      const float* sb_cols = reinterpret_cast<const float*>(smem_ptr + kLayout.scale_b(ring.stage));
      promote<kBlockN, kSbPerRow>(acc, partial, sa_lo, sa_hi, sb_block, sb_cols, lane);
      // Every lane's reads of this stage (wgmma, scales) are done: one arrival per warp.
      __syncwarp();
      if (lane == 0) ptx::mbarrier_arrive(smem + kLayout.empty_barrier(ring.stage));
      ring.advance();
    }
    store_tile<OutT, kBlockN>(tmap_d, acc, p, w, smem_ptr + kLayout.staging(wg), wg, wt);
  }
  // Shared memory must outlive the last TMA store's reads.
  if (wt == 0) ptx::bulk_wait_group<0>();
}

}  // namespace dx::gemm
