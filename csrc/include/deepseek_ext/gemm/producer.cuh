// Producer: one thread walks the CTA's tiles and K blocks, waits for a free ring stage and
// fills it with TMA loads of A, B and the scales, all completing on the stage's full barrier.
// Tiles with no K blocks (padding blocks, masked-out rows, empty K groups) load nothing.
#pragma once
#include <cuda.h>

#include "deepseek_ext/gemm/config.cuh"
#include "deepseek_ext/gemm/params.cuh"
#include "deepseek_ext/gemm/pipeline.cuh"
#include "deepseek_ext/ptx/mbarrier.cuh"
#include "deepseek_ext/ptx/tma.cuh"

namespace dx::gemm {

template <int kOutBytes, int kBlockN, bool kSbPerRow>
__device__ __forceinline__ void produce(const CUtensorMap& tmap_a, const CUtensorMap& tmap_b,
                                        const CUtensorMap& tmap_sa, const CUtensorMap& tmap_sb,
                                        const GemmParams& p, uint32_t smem) {
  constexpr SmemLayout kLayout = layout_for(kOutBytes, kBlockN);
  // Out-of-bounds box elements are zero-filled and still counted, so every stage is full size.
  constexpr uint32_t kStageBytes = SmemLayout::kTileABytes + kLayout.tile_b_bytes() +
                                   SmemLayout::kScaleABytes + (kSbPerRow ? kLayout.scale_b_bytes() : 0);
  ptx::prefetch_tensor_map(&tmap_a);
  ptx::prefetch_tensor_map(&tmap_b);
  ptx::prefetch_tensor_map(&tmap_sa);
  if constexpr (kSbPerRow) ptx::prefetch_tensor_map(&tmap_sb);
  RingPosition<kLayout.stages> ring;
  const int tiles = p.sched.tiles();
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    const TileWork w = p.sched.work(t);
    for (int kb = w.kb_begin; kb < w.kb_end; ++kb) {
      // Parity phase^1: the first pass finds every stage free (the "previous" phase counts as done).
      ptx::mbarrier_wait_parity(smem + kLayout.empty_barrier(ring.stage), ring.phase ^ 1);
      const uint32_t full = smem + kLayout.full_barrier(ring.stage);
      ptx::mbarrier_arrive_expect_tx(full, kStageBytes);
      ptx::tma_load_2d(smem + kLayout.a(ring.stage), &tmap_a, kb * kBlockK, w.a_row, full);
      ptx::tma_load_2d(smem + kLayout.b(ring.stage), &tmap_b, kb * kBlockK, w.b_row, full);
      ptx::tma_load_2d(smem + kLayout.scale_a(ring.stage), &tmap_sa, w.m0, w.sa_row + kb, full);
      if constexpr (kSbPerRow) {
        ptx::tma_load_2d(smem + kLayout.scale_b(ring.stage), &tmap_sb, w.n0, kb, full);
      }
      ring.advance();
    }
  }
}

}  // namespace dx::gemm
