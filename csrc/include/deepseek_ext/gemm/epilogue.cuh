// Epilogue of one consumer warpgroup: D[64 x kBlockN] = acc (+ c), converted to the output type,
// written to swizzled shared memory, then stored by a 3-D TMA box [1 group, 64 rows, strip
// columns] (which clips rows >= M and columns >= N inside the output group).
#pragma once
#include <cuda.h>
#include <cuda_bf16.h>

#include "deepseek_ext/gemm/config.cuh"
#include "deepseek_ext/gemm/fragment.cuh"
#include "deepseek_ext/gemm/params.cuh"
#include "deepseek_ext/gemm/staging.cuh"
#include "deepseek_ext/ptx/tma.cuh"
#include "deepseek_ext/ptx/warpgroup.cuh"

namespace dx::gemm {

__device__ __forceinline__ void store_pair(uint8_t* dst, float lo, float hi, __nv_bfloat16*) {
  *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(lo, hi);
}
__device__ __forceinline__ void store_pair(uint8_t* dst, float lo, float hi, float*) {
  *reinterpret_cast<float2*>(dst) = make_float2(lo, hi);
}

// Tile w's rows [wg*64, wg*64 + 64) of this consumer warpgroup; wt: thread index inside it.
// Rows the schedule marks as not computed (padding, beyond masked_m) are stored as zeros.
template <typename OutT, int kBlockN>
__device__ __forceinline__ void store_tile(const CUtensorMap& tmap_d, const float (&acc)[kBlockN / 2],
                                           const GemmParams& p, const TileWork& w, uint8_t* staging,
                                           int wg, int wt) {
  constexpr int kOutBytes = sizeof(OutT);
  const TileSchedule& s = p.sched;
  const uint32_t barrier_id = 1 + wg;  // 0 is __syncthreads
  const int warp = wt / 32;
  const int lane = wt % 32;
  const int m0 = w.m0 + wg * kWgRows;
  const float* c = p.c == nullptr ? nullptr : p.c + static_cast<int64_t>(w.out_group) * s.m * s.n;
  bool computed[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) computed[h] = s.row_computed(w, wg * kWgRows + fragment_row(warp, lane, h));
  // The previous tile's TMA store must have finished reading the staging buffer.
  if (wt == 0) ptx::bulk_wait_group_read<0>();
  ptx::named_barrier_sync(barrier_id, kWarpgroupThreads);
#pragma unroll
  for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = fragment_row(warp, lane, h);
      const int col = fragment_col(lane, j);
      float lo = computed[h] ? acc[fragment_reg(j, h)] : 0.0f;
      float hi = computed[h] ? acc[fragment_reg(j, h) + 1] : 0.0f;
      if (c != nullptr && m0 + row < s.m && w.n0 + col < s.n) {  // N % 16 == 0: hi is in bounds too
        const float2 add =
            __ldg(reinterpret_cast<const float2*>(c + static_cast<int64_t>(m0 + row) * s.n + w.n0 + col));
        lo += add.x;
        hi += add.y;
      }
      store_pair(staging + staging_offset(row, col, kOutBytes), lo, hi, static_cast<OutT*>(nullptr));
    }
  }
  // Each writer orders its generic-proxy stores before the TMA (async proxy) reads them.
  ptx::fence_proxy_async_shared();
  ptx::named_barrier_sync(barrier_id, kWarpgroupThreads);
  if (wt == 0 && m0 < s.m) {
    const uint32_t src = smem_u32(staging);
#pragma unroll
    for (int st = 0; st < strips(kOutBytes, kBlockN); ++st) {
      const int col0 = w.n0 + st * strip_cols(kOutBytes);
      if (col0 < s.n) ptx::tma_store_3d(&tmap_d, col0, m0, w.out_group, src + st * strip_bytes());
    }
    ptx::bulk_commit_group();
  }
}

}  // namespace dx::gemm
