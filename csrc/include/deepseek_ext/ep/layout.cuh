// Dispatch layout of one rank's routing: one column per destination rank and per expert, each
// scanned over the tokens in order by one block, so positions are deterministic.
#pragma once
#include <cstdint>

#include "deepseek_ext/ep/barrier.cuh"
#include "deepseek_ext/ep/params.cuh"

namespace dx::ep {


// Whether token t belongs to column col (ranks first, then experts), and for an expert column
// the slot holding it. Column 0 also marks the -1 (and rejected) slots.
__device__ __forceinline__ bool token_in_column(const LayoutParams& p, int64_t t, int col, int& slot) {
  const int local = p.num_experts / p.num_ranks;
  bool in = false;
  for (int j = 0; j < p.topk; ++j) {
    const int64_t e = p.topk_idx[t * p.topk + j];
    const bool valid = e >= 0 && e < p.num_experts;
    if (col < p.num_ranks) {
      in |= valid && e / local == col;
    } else if (valid && e == col - p.num_ranks) {
      in = true;
      slot = j;
    }
    if (col == 0 && !valid) {
      p.slot_in_expert[t * p.topk + j] = -1;
      if (e < -1 || e >= p.num_experts) record_error(p.error, encode_error(Phase::kBadExpertId, e));
    }
  }
  return in;
}

__global__ void __launch_bounds__(kThreads, 1) layout_kernel(const LayoutParams p) {
  __shared__ int warp_totals[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int col = blockIdx.x; col < p.num_ranks + p.num_experts; col += gridDim.x) {
    int64_t running = 0;
    for (int64_t base = 0; base < p.num_tokens; base += kThreads) {
      const int64_t t = base + threadIdx.x;
      int slot = -1;
      const bool in = t < p.num_tokens && token_in_column(p, t, col, slot);
      const unsigned ballot = __ballot_sync(0xffffffffu, in);
      if (lane == 0) warp_totals[warp] = __popc(ballot);
      __syncthreads();
      int64_t before = running, chunk_total = 0;
      for (int w = 0; w < kWarps; ++w) {
        before += w < warp ? warp_totals[w] : 0;
        chunk_total += warp_totals[w];
      }
      const int64_t pos = before + __popc(ballot & ((1u << lane) - 1));
      if (t < p.num_tokens) {
        if (col < p.num_ranks) {
          p.is_token_in_rank[t * p.num_ranks + col] = in;
          p.token_slot_in_rank[t * p.num_ranks + col] = in ? static_cast<int32_t>(pos) : -1;
        } else if (in) {
          p.slot_in_expert[t * p.topk + slot] = static_cast<int32_t>(pos);
        }
      }
      running += chunk_total;
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      if (col < p.num_ranks) p.tokens_per_rank[col] = running;
      else p.tokens_per_expert[col - p.num_ranks] = running;
    }
  }
}

}  // namespace dx::ep
