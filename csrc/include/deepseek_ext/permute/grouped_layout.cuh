// Grouped (expert-contiguous) layout of routed tokens, as deepseek_ext/reference/permute.py
// defines it: experts ascending, (token, slot) pairs in flat order within an expert, every
// expert's segment padded to a multiple of the alignment with rows whose token and group are -1.
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"

namespace dx::permute {

constexpr int kLayoutThreads = 1024;  // one CTA per expert scans all (token, slot) pairs
constexpr int kCountThreads = 256;

DX_HOST_DEVICE int padded_rows(int count, int alignment) {
  return static_cast<int>(align_up(count, alignment));
}

// counts[e] += pairs routed to expert e; counts[num_experts] += pairs with an id outside
// [-1, num_experts) (the host rejects those); inverse_map = -1 on slots without an expert.
__global__ void __launch_bounds__(kCountThreads)
    count_experts_kernel(const int64_t* __restrict__ topk_idx, int64_t pairs, int num_experts,
                         int* __restrict__ counts, int* __restrict__ inverse_map) {
  for (int64_t i = blockIdx.x * int64_t{kCountThreads} + threadIdx.x; i < pairs;
       i += int64_t{gridDim.x} * kCountThreads) {
    const int64_t e = topk_idx[i];
    if (e >= 0 && e < num_experts) {
      atomicAdd(counts + e, 1);
    } else {
      inverse_map[i] = -1;
      if (e != -1) atomicAdd(counts + num_experts, 1);
    }
  }
}

// Exclusive prefix over the CTA's 32 warps of one value per warp (given by lane 0), and the total;
// every thread gets its warp's prefix. Uses `scratch` (33 ints) between two barriers.
__device__ __forceinline__ int warp_prefix(int warp_value, int* scratch, int& total) {
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = warp_value;
  __syncthreads();
  if (warp == 0) {
    const int own = scratch[lane];
    int inclusive = own;
    for (int offset = 1; offset < 32; offset *= 2) {
      const int up = __shfl_up_sync(~0u, inclusive, offset);
      if (lane >= offset) inclusive += up;
    }
    scratch[lane] = inclusive - own;
    if (lane == 31) scratch[32] = inclusive;
  }
  __syncthreads();
  const int prefix = scratch[warp];
  total = scratch[32];
  __syncthreads();  // scratch is reused by the next call
  return prefix;
}

// CTA e writes expert e's rows: row_token, m_indices and inverse_map of its pairs in flat order
// (a stable ballot scan), then its padding rows. Row indices fit int32 (checked by the host).
__global__ void __launch_bounds__(kLayoutThreads)
    grouped_layout_kernel(const int64_t* __restrict__ topk_idx, int64_t pairs, int topk,
                          const int* __restrict__ counts, int alignment, int* __restrict__ row_token,
                          int* __restrict__ m_indices, int* __restrict__ inverse_map) {
  static_assert(kLayoutThreads == 32 * 32, "warp_prefix scans one value per warp with one warp");
  __shared__ int scratch[33];
  const int e = blockIdx.x;
  const int lane = threadIdx.x % 32;
  int before_e = 0;
  for (int i = threadIdx.x; i < e; i += kLayoutThreads) before_e += padded_rows(counts[i], alignment);
  for (int offset = 16; offset > 0; offset /= 2) before_e += __shfl_xor_sync(~0u, before_e, offset);
  int start;
  warp_prefix(before_e, scratch, start);
  int rank_base = 0;  // pairs of expert e in earlier chunks
  for (int64_t chunk = 0; chunk < pairs; chunk += kLayoutThreads) {
    const int64_t i = chunk + threadIdx.x;
    const bool match = i < pairs && topk_idx[i] == e;
    const uint32_t ballot = __ballot_sync(~0u, match);
    int chunk_matches;
    const int before = warp_prefix(__popc(ballot), scratch, chunk_matches);
    if (match) {
      const int row = start + rank_base + before + __popc(ballot & ((1u << lane) - 1));
      row_token[row] = static_cast<int>(i / topk);
      m_indices[row] = e;
      inverse_map[i] = row;
    }
    rank_base += chunk_matches;
  }
  const int count = counts[e];
  for (int r = count + threadIdx.x; r < padded_rows(count, alignment); r += kLayoutThreads) {
    row_token[start + r] = -1;
    m_indices[start + r] = -1;
  }
}

}  // namespace dx::permute
