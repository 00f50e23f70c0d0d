// Producer: one thread walks the CTA's tiles and K blocks, waits for a free ring stage and
// fills it with TMA loads of A, B and the scales, all completing on the stage's full barrier.
// In a 2-CTA cluster each CTA loads its half of the shared tile into both CTAs (multicast), so a
// stage is refilled only once the consumers of both CTAs released it.
// Tiles with no K blocks (padding blocks, empty K groups) load nothing.
#pragma once
#include <cuda.h>

#include "deepseek_ext/gemm/config.cuh"
#include "deepseek_ext/gemm/params.cuh"
#include "deepseek_ext/gemm/pipeline.cuh"
#include "deepseek_ext/ptx/mbarrier.cuh"
#include "deepseek_ext/ptx/tma.cuh"
#include "deepseek_ext/ptx/trap.cuh"

namespace dx::gemm {

template <int kOutBytes, int kBlockM, int kBlockN, bool kSbPerRow>
__device__ __forceinline__ void produce(const CUtensorMap& tmap_a, const CUtensorMap& tmap_b,
                                        const CUtensorMap& tmap_sa, const CUtensorMap& tmap_sb,
                                        const GemmParams& p, uint32_t smem, uint32_t cluster_rank) {
  constexpr SmemLayout kLayout = layout_for(kOutBytes, kBlockM, kBlockN);
  // Out-of-bounds box elements are zero-filled and still counted, so every stage is full size.
  constexpr uint32_t kStageBytes = kLayout.tile_a_bytes() + kLayout.tile_b_bytes() + kBlockM * 4 +
                                   (kSbPerRow ? kBlockN * 4 : 0);
  constexpr uint16_t kBothCtas = 0b11;
  const Multicast multicast = p.sched.multicast;
  // The rows this CTA loads of a shared tile (the other half comes from its peer).
  const int half_a = multicast == Multicast::kA ? static_cast<int>(cluster_rank) * kBlockM / 2 : 0;
  const int half_b = multicast == Multicast::kB ? static_cast<int>(cluster_rank) * kBlockN / 2 : 0;
  ptx::prefetch_tensor_map(&tmap_a);
  ptx::prefetch_tensor_map(&tmap_b);
  ptx::prefetch_tensor_map(&tmap_sa);
  if constexpr (kSbPerRow) ptx::prefetch_tensor_map(&tmap_sb);
  RingPosition<kLayout.stages> ring;
  TileCursor cursor;
  TileWork w;
  for (int t = blockIdx.x; p.sched.next(t, cursor, w); t += gridDim.x) {
    for (int kb = w.kb_begin; kb < w.kb_end; ++kb) {
      // Parity phase^1: the first pass finds every stage free (the "previous" phase counts as done).
      ptx::mbarrier_wait_parity(smem + kLayout.empty_barrier(ring.stage), ring.phase ^ 1, ring.stage);
      const uint32_t full = smem + kLayout.full_barrier(ring.stage);
      ptx::mbarrier_arrive_expect_tx(full, kStageBytes);
      const uint32_t a = smem + kLayout.a(ring.stage) + half_a * kBlockK;
      const uint32_t b = smem + kLayout.b(ring.stage) + half_b * kBlockK;
      if (multicast == Multicast::kA) {
        ptx::tma_load_2d_multicast(a, &tmap_a, kb * kBlockK, w.a_row + half_a, full, kBothCtas);
      } else {
        ptx::tma_load_2d(a, &tmap_a, kb * kBlockK, w.a_row, full);
      }
      if (multicast == Multicast::kB) {
        ptx::tma_load_2d_multicast(b, &tmap_b, kb * kBlockK, w.b_row + half_b, full, kBothCtas);
      } else {
        ptx::tma_load_2d(b, &tmap_b, kb * kBlockK, w.b_row, full);
      }
      ptx::tma_load_2d(smem + kLayout.scale_a(ring.stage), &tmap_sa, w.m0, w.sa_row + kb, full);
      if constexpr (kSbPerRow) {
        ptx::tma_load_2d(smem + kLayout.scale_b(ring.stage), &tmap_sb, w.n0, kb, full);
      }
      ring.advance();
    }
  }
  ptx::trap_on_index_fault();
}

}  // namespace dx::gemm
