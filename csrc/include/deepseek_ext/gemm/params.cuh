// Kernel arguments of the FP8 GEMM besides its tensor maps.
#pragma once
#include <cstdint>

#include "deepseek_ext/gemm/scheduler.cuh"

namespace dx::gemm {

struct GemmParams {
  const float* sb_blocks;  // 128x128 B scales [ceil(N/128), ld_sb_blocks] (unused for 1x128)
  int64_t ld_sb_blocks;
  const float* c;          // optional fp32 [out groups, M, N] (contiguous) added to the product
  void* d;                 // D [out groups, M, N] (contiguous): kMMasked's partial tiles are copied out directly
  TileSchedule sched;      // shapes, GEMM kind and tile mapping
};

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

}  // namespace dx::gemm
