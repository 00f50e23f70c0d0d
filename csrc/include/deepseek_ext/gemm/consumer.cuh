// Consumer warpgroup: per tile and K block, waits for the stage, reads the K block's scales into
// registers, runs 4 wgmma k32 steps into a fresh fp32 partial sum, releases the stage as soon as
// the wgmmas are done (to the producers of both CTAs of a cluster), and promotes the partial sum
// into the main accumulator with the scales on the CUDA cores; then the epilogue stores the tile.
#pragma once
#include <cuda.h>

#include "deepseek_ext/gemm/config.cuh"
#include "deepseek_ext/gemm/epilogue.cuh"
#include "deepseek_ext/gemm/fragment.cuh"
#include "deepseek_ext/gemm/params.cuh"
#include "deepseek_ext/gemm/pipeline.cuh"
#include "deepseek_ext/gemm/smem_desc.cuh"
#include "deepseek_ext/ptx/cluster.cuh"
#include "deepseek_ext/ptx/mbarrier.cuh"
#include "deepseek_ext/ptx/tma.cuh"
#include "deepseek_ext/ptx/trap.cuh"
#include "deepseek_ext/ptx/warpgroup.cuh"
#include "deepseek_ext/ptx/wgmma.cuh"

namespace dx::gemm {

// The B scales of one K block as a thread's promotion needs them: per fragment column pair (1x128
// scales), or the 128x128 blocks its tile's columns fall in (column c of the tile is in block
// (n_offset + c) / 128 of them).
template <int kBlockN, bool kSbPerRow>
struct BScales {
  float2 cols[kSbPerRow ? kBlockN / 8 : 1];
  float blocks[kScaleBRows];
  int n_offset;

  // Scales of fragment columns 8j + 2*(lane%4) + {0, 1}.
  __device__ __forceinline__ float2 at(int j) const {
    if constexpr (kSbPerRow) {
      return cols[j];
    } else if constexpr (128 % kBlockN == 0) {  // a tile never straddles two scale blocks
      return make_float2(blocks[0], blocks[0]);
    } else {
      const int r = (n_offset + 8 * j) / kQuantGroup;  // 8-column groups never straddle a block
      const float s = r == 0 ? blocks[0] : (r == 1 ? blocks[1] : blocks[2]);
      return make_float2(s, s);
    }
  }
};

// acc += partial * sa[row] * sb[col] over this thread's fragment (64 x kBlockN fp32 over 128
// threads: kBlockN / 2 registers each).
template <int kBlockN, bool kSbPerRow>
__device__ __forceinline__ void promote(float (&acc)[kBlockN / 2], const float (&partial)[kBlockN / 2],
                                        float sa_lo, float sa_hi, const BScales<kBlockN, kSbPerRow>& sb) {
#pragma unroll
  for (int j = 0; j < kBlockN / 8; ++j) {
    const float2 s = sb.at(j);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float sa = h == 0 ? sa_lo : sa_hi;
      const int r = fragment_reg(j, h);
      acc[r] = fmaf(partial[r], sa * s.x, acc[r]);
      acc[r + 1] = fmaf(partial[r + 1], sa * s.y, acc[r + 1]);
    }
  }
}

// The warpgroup copies K blocks [kb0, kb0 + kScaleBChunk) of its tile's 128x128 B scale rows
// into `dst` [kScaleBRows][kScaleBChunk] (once per tile and chunk, instead of every thread
// loading them from global memory every K block).
__device__ __forceinline__ void stage_block_scales(float* dst, const GemmParams& p, const TileWork& w, int kb0,
                                                   int wt, uint32_t barrier_id) {
  ptx::named_barrier_sync(barrier_id, kWarpgroupThreads);  // the previous chunk's readers are done
  const int count = w.kb_end - kb0 < kScaleBChunk ? w.kb_end - kb0 : kScaleBChunk;
  for (int i = wt; i < w.sb_block_rows * kScaleBChunk; i += kWarpgroupThreads) {
    const int r = i / kScaleBChunk, c = i % kScaleBChunk;
    if (c < count) dst[i] = __ldg(p.sb_blocks + static_cast<int64_t>(w.sb_block_row + r) * p.ld_sb_blocks + kb0 + c);
  }
  ptx::named_barrier_sync(barrier_id, kWarpgroupThreads);
}

// d (+)= A[64 x 32] * B[kBlockN x 32]^T for one 32-wide K slice.
template <int kBlockN>
__device__ __forceinline__ void wgmma_k32(float (&d)[kBlockN / 2], uint64_t desc_a, uint64_t desc_b,
                                          bool accumulate) {
  ptx::wgmma_m64nNk32_f32_e4m3<kBlockN>(d, desc_a, desc_b, accumulate);
}

template <typename OutT, int kBlockM, int kBlockN, bool kSbPerRow>
__device__ __forceinline__ void consume(const CUtensorMap& tmap_d, const GemmParams& p, uint8_t* smem_ptr,
                                        uint32_t smem, uint32_t cluster_rank) {
  constexpr SmemLayout kLayout = layout_for(sizeof(OutT), kBlockM, kBlockN);
  constexpr int kAccRegs = kBlockN / 2;
  const int wg = threadIdx.x / kWarpgroupThreads;
  const int wt = threadIdx.x % kWarpgroupThreads;
  const int warp = wt / 32;
  const int lane = wt % 32;
  const uint32_t barrier_id = 1 + wg;  // 0 is __syncthreads
  if (wt == 0) ptx::prefetch_tensor_map(&tmap_d);
  float* sb_staged = reinterpret_cast<float*>(smem_ptr + kLayout.scale_b_blocks(wg));
  const bool clustered = p.sched.multicast != Multicast::kNone;
  RingPosition<kLayout.stages> ring;
  TileCursor cursor;
  TileWork w;
  for (int t = blockIdx.x; p.sched.next(t, cursor, w); t += gridDim.x) {
    float acc[kAccRegs];
#pragma unroll
    for (int i = 0; i < kAccRegs; ++i) acc[i] = 0.0f;
    float partial[kAccRegs];
    BScales<kBlockN, kSbPerRow> sb;
    sb.n_offset = w.n0 % kQuantGroup;
    for (int kb = w.kb_begin; kb < w.kb_end; ++kb) {
      const int chunk_kb = (kb - w.kb_begin) % kScaleBChunk;
      if (!kSbPerRow && chunk_kb == 0) stage_block_scales(sb_staged, p, w, kb, wt, barrier_id);
      ptx::mbarrier_wait_parity(smem + kLayout.full_barrier(ring.stage), ring.phase, ring.stage);
      // Every read of the stage but the wgmmas' happens here, so the stage is free after them.
      const float* sa = reinterpret_cast<const float*>(smem_ptr + kLayout.scale_a(ring.stage)) + wg * kWgRows;
      const float sa_lo = sa[fragment_row(warp, lane, 0)];
      const float sa_hi = sa[fragment_row(warp, lane, 1)];
      if constexpr (kSbPerRow) {
        const float* cols = reinterpret_cast<const float*>(smem_ptr + kLayout.scale_b(ring.stage));
#pragma unroll
        for (int j = 0; j < kBlockN / 8; ++j) sb.cols[j] = *reinterpret_cast<const float2*>(cols + fragment_col(lane, j));
      } else {
#pragma unroll
        for (int r = 0; r < kScaleBRows; ++r) sb.blocks[r] = sb_staged[r * kScaleBChunk + chunk_kb];
      }
      const uint64_t desc_a = smem_desc_k_major_sw128(smem + kLayout.a(ring.stage) + wg * kWgRows * kBlockK);
      const uint64_t desc_b = smem_desc_k_major_sw128(smem + kLayout.b(ring.stage));
      // The previous promotion's reads of `partial` stay before the wgmmas overwrite it.
#pragma unroll
      for (int i = 0; i < kAccRegs; ++i) ptx::fence_operand(partial[i]);
      ptx::wgmma_fence();
#pragma unroll
      for (int s = 0; s < kBlockK / kWgmmaK; ++s) {
        wgmma_k32<kBlockN>(partial, smem_desc_advance_k(desc_a, s), smem_desc_advance_k(desc_b, s), s > 0);
      }
      ptx::wgmma_commit_group();
      ptx::wgmma_wait_group<0>();
#pragma unroll
      for (int i = 0; i < kAccRegs; ++i) ptx::fence_operand(partial[i]);
      // Every lane's reads of this stage are done: one arrival per warp, in each CTA that loads it.
      __syncwarp();
      if (lane == 0) {
        const uint32_t empty = smem + kLayout.empty_barrier(ring.stage);
        ptx::mbarrier_arrive(empty);
        if (clustered) ptx::mbarrier_arrive_cluster(ptx::cluster_map_shared(empty, cluster_rank ^ 1));
      }
      ring.advance();
      promote<kBlockN, kSbPerRow>(acc, partial, sa_lo, sa_hi, sb);
    }
    store_tile<OutT, kBlockN>(tmap_d, acc, p, w, smem_ptr + kLayout.staging(wg), wg, wt);
  }
  // Shared memory must outlive the last TMA store's reads.
  if (wt == 0) ptx::bulk_wait_group<0>();
  ptx::trap_on_index_fault();
}

}  // namespace dx::gemm
