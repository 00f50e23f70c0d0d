// Epilogue of one consumer warpgroup: D[64 x kBlockN] = acc (+ c), converted to the output type,
// written to shared memory in TMA-store boxes (staging.cuh), then stored by 3-D TMA boxes
// [1 group, 64 rows, box columns] (which clip rows >= M and columns >= N inside the output
// group). A kMMasked tile whose rows end inside the warpgroup's 64 is copied out row by row
// instead, so that no row past masked_m is written.
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

// The first `rows` rows of the staged 64 x kBlockN tile -> D, 16 bytes per thread and step.
template <int kOutBytes, int kBlockN>
__device__ __forceinline__ void copy_rows_out(const uint8_t* staging, const GemmParams& p, const TileWork& w,
                                              int m0, int rows, int wt) {
  constexpr int kChunks = kBlockN * kOutBytes / 16;  // per row
  constexpr int kChunkCols = 16 / kOutBytes;
  const TileSchedule& s = p.sched;
  uint8_t* d = static_cast<uint8_t*>(p.d);
  for (int i = wt; i < rows * kChunks; i += kWarpgroupThreads) {
    const int row = i / kChunks, col = i % kChunks * kChunkCols;
    if (w.n0 + col >= s.n) continue;  // N % 16 == 0: a chunk is wholly inside or outside
    const int64_t at = (static_cast<int64_t>(w.out_group) * s.m + m0 + row) * s.n + w.n0 + col;
    *reinterpret_cast<uint4*>(d + at * kOutBytes) =
        *reinterpret_cast<const uint4*>(staging + staging_offset(row, col, kOutBytes, kBlockN));
  }
}

// Tile w's rows [wg*64, wg*64 + 64) of this consumer warpgroup; wt: thread index inside it.
// Rows the schedule marks as not computed are stored as zeros (kMContiguous padding) or not
// stored (kMMasked rows >= masked_m).
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
  const int rows = w.rows - wg * kWgRows;  // computed rows of this warpgroup's 64 (kMMasked: all it writes)
  if (s.kind == GemmKind::kMMasked && rows <= 0) return;
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
      store_pair(staging + staging_offset(row, col, kOutBytes, kBlockN), lo, hi, static_cast<OutT*>(nullptr));
    }
  }
  // Each writer orders its generic-proxy stores before the TMA (async proxy) reads them.
  ptx::fence_proxy_async_shared();
  ptx::named_barrier_sync(barrier_id, kWarpgroupThreads);
  if (s.kind == GemmKind::kMMasked && rows < kWgRows) {
    copy_rows_out<kOutBytes, kBlockN>(staging, p, w, m0, rows, wt);
    return;
  }
  if (wt == 0 && m0 < s.m) {
    const uint32_t src = smem_u32(staging);
#pragma unroll
    for (int box = 0; box < boxes(kOutBytes, kBlockN); ++box) {
      const int col0 = w.n0 + box * box_cols(kOutBytes, kBlockN);
      if (col0 < s.n) ptx::tma_store_3d(&tmap_d, col0, m0, w.out_group, src + box * box_bytes_total(kOutBytes, kBlockN));
    }
    ptx::bulk_commit_group();
  }
}

}  // namespace dx::gemm
