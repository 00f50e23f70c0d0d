// D[M,N] = c + A[M,K] @ B[N,K]^T with 1x128 A scales and 128x128 or 1x128 B scales, fp32
// accumulation promoted every 128 K. Persistent, warp-specialized: warpgroups 0..kBlockM/64-1
// consume (wgmma + promotion + epilogue), the last warpgroup produces (one thread issuing TMA).
// With p.sched.multicast set, CTAs run in clusters of two that share their A or B tiles.
#pragma once
#include <cuda.h>

#include "deepseek_ext/gemm/config.cuh"
#include "deepseek_ext/gemm/consumer.cuh"
#include "deepseek_ext/gemm/params.cuh"
#include "deepseek_ext/gemm/producer.cuh"
#include "deepseek_ext/ptx/cluster.cuh"
#include "deepseek_ext/ptx/mbarrier.cuh"
#include "deepseek_ext/ptx/warpgroup.cuh"
#include "deepseek_ext/shared_memory.cuh"

namespace dx::gemm {

template <typename OutT, int kBlockM, int kBlockN, bool kSbPerRow>
__global__ void __launch_bounds__(kernel_threads(kBlockM), 1)
    fp8_gemm_nt_kernel(const __grid_constant__ CUtensorMap tmap_a,
                       const __grid_constant__ CUtensorMap tmap_b,
                       const __grid_constant__ CUtensorMap tmap_sa,
                       const __grid_constant__ CUtensorMap tmap_sb,
                       const __grid_constant__ CUtensorMap tmap_d, const GemmParams p) {
  constexpr SmemLayout kLayout = layout_for(sizeof(OutT), kBlockM, kBlockN);
  constexpr int kConsumerThreads = consumer_warpgroups(kBlockM) * kWarpgroupThreads;
  static_assert(instantiated(sizeof(OutT), kSbPerRow, kBlockM, kBlockN), "a variant the launcher may choose");
  static_assert(kLayout.request_bytes() <= kMaxSharedBytes, "smem");
  static_assert(kLayout.staging(0) % kSwizzleAtomBytes == 0, "staging alignment");
  uint8_t* smem_raw = dynamic_shared_memory<uint8_t>();
  // Swizzle atoms and TMA boxes need 1024-byte alignment; the launch requests the slack.
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t smem = static_cast<uint32_t>(align_up(raw, kSwizzleAtomBytes));
  uint8_t* smem_ptr = smem_raw + (smem - raw);
  const bool clustered = p.sched.multicast != Multicast::kNone;
  const uint32_t cluster_rank = clustered ? ptx::cluster_ctarank() : 0;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kLayout.stages; ++s) {
      ptx::mbarrier_init(smem + kLayout.full_barrier(s), 1);  // the producer's expect_tx arrival
      // One arrival per consumer warp of every CTA whose producer writes into this stage.
      ptx::mbarrier_init(smem + kLayout.empty_barrier(s), kConsumerThreads / 32 * cluster_size(p.sched.multicast));
    }
    ptx::fence_mbarrier_init();
  }
  // The peer's barriers must be initialized before this CTA multicasts into them or arrives there.
  if (clustered) {
    __syncwarp();  // barrier.cluster is .aligned: each warp reconverged after thread 0's init
    ptx::cluster_sync();
  } else {
    __syncthreads();
  }

  if (threadIdx.x >= kConsumerThreads) {
    // One consumer warpgroup already has every register the launch gives; two need the producer's.
    if constexpr (consumer_warpgroups(kBlockM) > 1) ptx::setmaxnreg_dec<kProducerRegisters>();
    if (threadIdx.x == kConsumerThreads) {
      produce<sizeof(OutT), kBlockM, kBlockN, kSbPerRow>(tmap_a, tmap_b, tmap_sa, tmap_sb, p, smem, cluster_rank);
    }
  } else {
    if constexpr (consumer_warpgroups(kBlockM) > 1) ptx::setmaxnreg_inc<kConsumerRegisters>();
    consume<OutT, kBlockM, kBlockN, kSbPerRow>(tmap_d, p, smem_ptr, smem, cluster_rank);
  }
  // The peer may still arrive on this CTA's barriers until it is done.
  if (clustered) {
    __syncwarp();  // reconverged after the producer thread and the last bulk wait
    ptx::cluster_sync();
  }
}

}  // namespace dx::gemm
