// Combine: every received token's partial result (bf16; in the expanded layout the fp32 sum of
// its rows times their weights, local experts ascending) goes straight into its source rank's
// combine region; after the barrier each rank sums its tokens' partials over ranks ascending.
#pragma once
#include <cuda_bf16.h>
#include <cstdint>

#include "deepseek_ext/ep/barrier.cuh"
#include "deepseek_ext/ep/params.cuh"
#include "deepseek_ext/vec.cuh"

namespace dx::ep {

constexpr int kChunk = 8;  // elements per lane step: one 16-byte bf16 vector

// 8 elements of a bf16 or fp32 row as fp32 (read-only input).
__device__ __forceinline__ void load_chunk(const void* y, bool is_fp32, int64_t offset, float (&v)[kChunk]) {
  if (is_fp32) {
    const float* p = static_cast<const float*>(y) + offset;
    float lo[4], hi[4];
    load16_as_float(p, lo);
    load16_as_float(p + 4, hi);
#pragma unroll
    for (int e = 0; e < 4; ++e) v[e] = lo[e], v[e + 4] = hi[e];
  } else {
    load16_as_float(static_cast<const __nv_bfloat16*>(y) + offset, v);
  }
}

__device__ __forceinline__ uint4 pack_bf16x8(const float (&v)[kChunk]) {
  uint32_t w[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const uint32_t lo = __bfloat16_as_ushort(__float2bfloat16_rn(v[2 * e]));
    const uint32_t hi = __bfloat16_as_ushort(__float2bfloat16_rn(v[2 * e + 1]));
    w[e] = lo | (hi << 16);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// Received token i -> its partial in the combine region of its source rank (row = its index there).
__device__ __forceinline__ void push_partial(const CombineParams& p, int64_t i, int lane, int* rows, float* weights) {
  const int64_t chunks = p.hidden / kChunk;
  auto* peer = reinterpret_cast<uint8_t*>(p.peers.data[p.src_rank[i]]);
  auto* dst = reinterpret_cast<uint4*>(peer + p.layout.combine) + recv_row(p.layout, p.rank, p.src_token[i]) * chunks;
  if (p.token_rows == nullptr) {
    for (int64_t c = lane; c < chunks; c += 32) {
      float v[kChunk];
      load_chunk(p.y, p.y_is_fp32, i * p.hidden + c * kChunk, v);
      dst[c] = pack_bf16x8(v);
    }
    return;
  }
  const int row = lane < p.topk ? p.token_rows[i * p.topk + lane] : -1;
  const int num_rows = __popc(__ballot_sync(0xffffffffu, row >= 0));  // rows come first, -1 after
  rows[lane] = row;
  weights[lane] = row >= 0 ? p.row_weight[row] : 0.0f;
  __syncwarp();
  for (int64_t c = lane; c < chunks; c += 32) {
    float acc[kChunk] = {};
    for (int q = 0; q < num_rows; ++q) {
      float v[kChunk];
      load_chunk(p.y, p.y_is_fp32, rows[q] * p.hidden + c * kChunk, v);
#pragma unroll
      for (int e = 0; e < kChunk; ++e) acc[e] = __fadd_rn(acc[e], __fmul_rn(v[e], weights[q]));  // no FMA
    }
    dst[c] = pack_bf16x8(acc);
  }
  __syncwarp();
}

// This rank's token t: 0 + partial of each rank it went to, ranks ascending, in fp32 -> bf16.
__device__ __forceinline__ void reduce_token(const CombineParams& p, int64_t t, int lane) {
  const int64_t chunks = p.hidden / kChunk;
  const unsigned ranks = __ballot_sync(0xffffffffu, lane < p.num_ranks && p.is_token_in_rank[t * p.num_ranks + lane]);
  const auto* region = reinterpret_cast<const uint4*>(p.local + p.layout.combine);
  auto* out = reinterpret_cast<uint4*>(p.out) + t * chunks;
  for (int64_t c = lane; c < chunks; c += 32) {
    float acc[kChunk] = {};
    for (unsigned m = ranks; m; m &= m - 1) {
      float v[kChunk];
      unpack_to_float(static_cast<const __nv_bfloat16*>(nullptr), region[recv_row(p.layout, __ffs(m) - 1, t) * chunks + c], v);
#pragma unroll
      for (int e = 0; e < kChunk; ++e) acc[e] = __fadd_rn(acc[e], v[e]);
    }
    out[c] = pack_bf16x8(acc);
  }
}

__global__ void __launch_bounds__(kThreads, 1) combine_kernel(const CombineParams p) {
  __shared__ int rows[kWarps][kMaxTopk];
  __shared__ float weights[kWarps][kMaxTopk];
  const Ctrl c = ctrl_of(p.local, p.layout);
  GridClock clock = start_grid_clock(c);
  const int lane = threadIdx.x % 32, warp_in_block = threadIdx.x / 32;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarps + warp_in_block;
  const int64_t num_warps = static_cast<int64_t>(gridDim.x) * kWarps;

  rank_barrier(c, p.peers, p.layout, p.rank, p.num_ranks, Phase::kCombineStart, clock, p.timeout_ns, p.header,
               p.local);
  if (has_failed(c.error)) return finish_grid_clock(c, clock);
  const int64_t num_recv = *p.num_recv;
  for (int64_t i = warp; i < num_recv; i += num_warps) push_partial(p, i, lane, rows[warp_in_block], weights[warp_in_block]);
  rank_barrier(c, p.peers, p.layout, p.rank, p.num_ranks, Phase::kCombineEnd, clock, p.timeout_ns);
  if (has_failed(c.error)) return finish_grid_clock(c, clock);
  for (int64_t t = warp; t < p.num_tokens; t += num_warps) reduce_token(p, t, lane);
  finish_grid_clock(c, clock);
}

}  // namespace dx::ep
