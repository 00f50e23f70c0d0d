// Grouped (expert-contiguous) layout of routed tokens, as deepseek_ext/reference/permute.py
// defines it: experts ascending, (token, slot) pairs in flat order within an expert, every
// expert's segment padded to a multiple of the alignment with rows whose token and group are -1.
//
// A counting sort over chunks of kLayoutChunkPairs pairs (CTA c: pairs [c * kLayoutChunkPairs,
// ...), its warp w: the w-th 128 of them, 4 per lane); chunk_counts is chunk-major
// ([chunk][expert]) so that a chunk's CTA reads and writes one contiguous row:
//   count_experts_kernel  per-chunk histograms -> chunk_counts[c][e], and the totals counts[e]
//   (the host reads counts to size the output)
//   chunk_offsets_kernel  chunk_counts[c][e] -> row of chunk c's first pair of expert e (an
//   exclusive scan over (expert, chunk), experts ascending, chunks ascending), padding rows
//   scatter_pairs_kernel  row of a pair = its chunk's offset + its rank among the chunk's pairs
//   of its expert in flat order
// Row indices fit int32 (checked by the host).
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"
#include "deepseek_ext/permute/params.cuh"
#include "deepseek_ext/shared_memory.cuh"

namespace dx::permute {

constexpr int kPairsPerWarp = kLayoutChunkPairs / kLayoutWarps;
constexpr int kPairsPerLane = kPairsPerWarp / 32;
static_assert(kPairsPerLane * 32 * kLayoutWarps == kLayoutChunkPairs, "a chunk is whole steps of every warp");
constexpr int kOffsetThreads = 1024;  // 32 warps x 32 experts per CTA

DX_HOST_DEVICE int padded_rows(int count, int alignment) {
  return static_cast<int>(align_up(count, alignment));
}

// A pair's sort key: its expert; num_experts for an id outside [-1, num_experts) (the host
// rejects those); num_experts + 1 for -1 and for lanes past the last pair (no row).
__device__ __forceinline__ int pair_key(int64_t pair, int64_t pairs, const int64_t* topk_idx, int num_experts) {
  if (pair >= pairs) return num_experts + 1;
  const int64_t id = topk_idx[pair];
  return id >= 0 && id < num_experts ? static_cast<int>(id) : id == -1 ? num_experts + 1 : num_experts;
}

// Bits of the largest key, num_experts + 1.
DX_HOST_DEVICE int key_bits(int num_experts) {
  int bits = 0;
  while ((num_experts + 1) >> bits) ++bits;
  return bits;
}

// The warp's lanes whose key equals this lane's (itself included): one ballot per key bit.
__device__ __forceinline__ uint32_t same_key_lanes(int key, int bits) {
  uint32_t peers = ~0u;
  for (int b = 0; b < bits; ++b) {
    const bool one = (key >> b) & 1;
    const uint32_t ones = __ballot_sync(~0u, one);
    peers &= one ? ones : ~ones;
  }
  return peers;
}

// First pair of the calling lane's warp in its chunk (the lane's pairs: + 32 * step + lane).
__device__ __forceinline__ int64_t warp_first_pair() {
  return blockIdx.x * int64_t{kLayoutChunkPairs} + threadIdx.x / 32 * kPairsPerWarp + threadIdx.x % 32;
}

// Dynamic shared memory: (num_experts + 1) ints. chunk_counts[c * num_experts + e] = chunk c's
// pairs of expert e; counts[e] += the same, counts[num_experts] += pairs with an id outside
// [-1, num_experts) (counts zeroed by the caller); inverse_map = -1 on slots without an expert.
__global__ void __launch_bounds__(kLayoutThreads)
    count_experts_kernel(const int64_t* __restrict__ topk_idx, int64_t pairs, int num_experts,
                         int* __restrict__ counts, int* __restrict__ chunk_counts, int* __restrict__ inverse_map) {
  int* hist = dynamic_shared_memory<int>();
  for (int e = threadIdx.x; e <= num_experts; e += kLayoutThreads) hist[e] = 0;
  __syncthreads();
  const int bits = key_bits(num_experts);
  const int lane = threadIdx.x % 32;
  const int64_t first = warp_first_pair();
#pragma unroll
  for (int s = 0; s < kPairsPerLane; ++s) {
    const int64_t i = first + 32 * s;
    const int key = pair_key(i, pairs, topk_idx, num_experts);
    if (i < pairs && key >= num_experts) inverse_map[i] = -1;
    const uint32_t peers = same_key_lanes(key, bits);
    // One shared atomic per distinct key of the warp: skewed routings do not serialize.
    if (key <= num_experts && lane == __ffs(peers) - 1) atomicAdd(hist + key, __popc(peers));
  }
  __syncthreads();
  int* chunk_row = chunk_counts + blockIdx.x * int64_t{num_experts};
  for (int e = threadIdx.x; e <= num_experts; e += kLayoutThreads) {
    const int n = hist[e];
    if (e < num_experts) chunk_row[e] = n;
    if (n != 0) atomicAdd(counts + e, n);
  }
}

// CTA b takes experts e = 32 b + lane, warp w a contiguous 32nd of the chunks. In place,
// chunk_counts[c * num_experts + e] becomes start[e] + expert e's pairs in chunks before c, where
// start[e] = rows of the experts before e, each padded to `alignment`; writes e's padding rows.
__global__ void __launch_bounds__(kOffsetThreads)
    chunk_offsets_kernel(const int* __restrict__ counts, int num_experts, int64_t chunks, int alignment,
                         int* __restrict__ chunk_counts, int* __restrict__ row_token, int* __restrict__ m_indices) {
  static_assert(kOffsetThreads == 32 * 32, "one warp per 32nd of the chunks, one lane per expert");
  __shared__ int warp_sums[32][32];  // [warp][expert]
  __shared__ int warp_rows_before[32];
  __shared__ int expert_start[32];
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int first_expert = blockIdx.x * 32;
  const int e = first_expert + lane;
  const int64_t per_warp = ceil_div(chunks, 32);
  const int64_t c_begin = warp * per_warp < chunks ? warp * per_warp : chunks;
  const int64_t c_end = c_begin + per_warp < chunks ? c_begin + per_warp : chunks;
  int sum = 0;
  if (e < num_experts) {
    for (int64_t c = c_begin; c < c_end; ++c) sum += chunk_counts[c * num_experts + e];
  }
  warp_sums[warp][lane] = sum;
  int rows_before = 0;  // padded rows of the experts before this CTA's
  for (int i = threadIdx.x; i < first_expert; i += kOffsetThreads) rows_before += padded_rows(counts[i], alignment);
  for (int offset = 16; offset > 0; offset /= 2) rows_before += __shfl_xor_sync(~0u, rows_before, offset);
  if (lane == 0) warp_rows_before[warp] = rows_before;
  __syncthreads();
  if (warp == 0) {
    int start = warp_rows_before[lane];
    for (int offset = 16; offset > 0; offset /= 2) start += __shfl_xor_sync(~0u, start, offset);
    const int padded = e < num_experts ? padded_rows(counts[e], alignment) : 0;
    int inclusive = padded;
    for (int offset = 1; offset < 32; offset *= 2) {
      const int up = __shfl_up_sync(~0u, inclusive, offset);
      if (lane >= offset) inclusive += up;
    }
    start += inclusive - padded;
    expert_start[lane] = start;
    for (int w = 0; w < 32; ++w) {
      const int n = warp_sums[w][lane];
      warp_sums[w][lane] = start;
      start += n;
    }
  }
  __syncthreads();
  if (e < num_experts) {
    int next = warp_sums[warp][lane];
    for (int64_t c = c_begin; c < c_end; ++c) {
      int& slot = chunk_counts[c * num_experts + e];
      const int n = slot;
      slot = next;
      next += n;
    }
  }
  const int padded_expert = first_expert + warp;
  if (padded_expert < num_experts) {
    const int count = counts[padded_expert];
    int* tokens = row_token + expert_start[warp];
    int* groups = m_indices + expert_start[warp];
    for (int r = count + lane; r < padded_rows(count, alignment); r += 32) tokens[r] = -1, groups[r] = -1;
  }
}

// Dynamic shared memory: kLayoutWarps * num_experts ints. With chunk_offsets from
// chunk_offsets_kernel, writes row_token, m_indices and inverse_map of chunk c's pairs: row =
// chunk offset + pairs of the expert in the chunk's earlier warps + in the warp's earlier steps +
// in the step's earlier lanes.
__global__ void __launch_bounds__(kLayoutThreads)
    scatter_pairs_kernel(const int64_t* __restrict__ topk_idx, int64_t pairs, int topk, int num_experts,
                         const int* __restrict__ chunk_offsets, int* __restrict__ row_token,
                         int* __restrict__ m_indices, int* __restrict__ inverse_map) {
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  int* next_row = dynamic_shared_memory<int>();  // [warp][expert]
  int* own = next_row + warp * num_experts;
  for (int e = lane; e < num_experts; e += 32) own[e] = 0;
  __syncwarp();
  const int bits = key_bits(num_experts);
  const int64_t first = warp_first_pair();
  int key[kPairsPerLane];
#pragma unroll
  for (int s = 0; s < kPairsPerLane; ++s) key[s] = pair_key(first + 32 * s, pairs, topk_idx, num_experts);
  int rank[kPairsPerLane];  // among the warp's pairs of the same expert
#pragma unroll
  for (int s = 0; s < kPairsPerLane; ++s) {
    const uint32_t peers = same_key_lanes(key[s], bits);
    const int leader = __ffs(peers) - 1;
    int before = 0;
    if (lane == leader && key[s] < num_experts) {
      before = own[key[s]];
      own[key[s]] = before + __popc(peers);
    }
    rank[s] = __shfl_sync(~0u, before, leader) + __popc(peers & ((1u << lane) - 1));
    __syncwarp();  // the next step's leader of the same expert may be another lane
  }
  __syncthreads();
  const int* chunk_row = chunk_offsets + blockIdx.x * int64_t{num_experts};
  for (int e = threadIdx.x; e < num_experts; e += kLayoutThreads) {
    int next = chunk_row[e];
    for (int w = 0; w < kLayoutWarps; ++w) {
      const int n = next_row[w * num_experts + e];
      next_row[w * num_experts + e] = next;
      next += n;
    }
  }
  __syncthreads();
#pragma unroll
  for (int s = 0; s < kPairsPerLane; ++s) {
    if (key[s] >= num_experts) continue;
    const int64_t i = first + 32 * s;
    const int row = own[key[s]] + rank[s];
    row_token[row] = static_cast<int>(i / topk);
    m_indices[row] = key[s];
    inverse_map[i] = row;
  }
}

}  // namespace dx::permute
