// D[M,N] = c + A[M,K] @ B[N,K]^T with 1x128 A scales and 128x128 or 1x128 B scales, fp32
// accumulation promoted every 128 K. Persistent, warp-specialized: warpgroups 0-1 consume
// (wgmma + promotion + epilogue), warpgroup 2 produces (one thread issuing TMA).
#pragma once
#include <cuda.h>

#include "deepseek_ext/gemm/config.cuh"
#include "deepseek_ext/gemm/consumer.cuh"
#include "deepseek_ext/gemm/params.cuh"
#include "deepseek_ext/gemm/producer.cuh"
#include "deepseek_ext/ptx/mbarrier.cuh"
#include "deepseek_ext/ptx/warpgroup.cuh"
#include "deepseek_ext/shared_memory.cuh"

namespace dx::gemm {

template <typename OutT, int kBlockN, bool kSbPerRow>
__global__ void __launch_bounds__(kThreads, 1)
    fp8_gemm_nt_kernel(const __grid_constant__ CUtensorMap tmap_a,
                       const __grid_constant__ CUtensorMap tmap_b,
                       const __grid_constant__ CUtensorMap tmap_sa,
                       const __grid_constant__ CUtensorMap tmap_sb,
                       const __grid_constant__ CUtensorMap tmap_d, const GemmParams p) {
  constexpr SmemLayout kLayout = layout_for(sizeof(OutT), kBlockN);
  static_assert(kLayout.stages >= 4 && kLayout.request_bytes() <= kMaxSharedBytes, "smem");
  static_assert(kLayout.staging(0) % kSwizzleAtomBytes == 0, "staging alignment");
  uint8_t* smem_raw = dynamic_shared_memory<uint8_t>();
  // Swizzle atoms and TMA boxes need 1024-byte alignment; the launch requests the slack.
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t smem = static_cast<uint32_t>(align_up(raw, kSwizzleAtomBytes));
  uint8_t* smem_ptr = smem_raw + (smem - raw);

  if (threadIdx.x == 0) {
    for (int s = 0; s < kLayout.stages; ++s) {
      ptx::mbarrier_init(smem + kLayout.full_barrier(s), 1);  // the producer's expect_tx arrival
      ptx::mbarrier_init(smem + kLayout.empty_barrier(s), kConsumerWarps);
    }
    ptx::fence_mbarrier_init();
  }
  __syncthreads();

  if (threadIdx.x >= kConsumerThreads) {
    ptx::setmaxnreg_dec<kProducerRegisters>();
    if (threadIdx.x == kConsumerThreads) {
      produce<sizeof(OutT), kBlockN, kSbPerRow>(tmap_a, tmap_b, tmap_sa, tmap_sb, p, smem);
    }
  } else {
    ptx::setmaxnreg_inc<kConsumerRegisters>();
    consume<OutT, kBlockN, kSbPerRow>(tmap_d, p, smem_ptr, smem);
  }
}

}  // namespace dx::gemm
