// Dispatch: every warp of num_sms blocks pushes its tokens straight into the receive regions of
// the ranks holding their experts (each token once per rank), then, after the barrier, lays out
// what this rank received in the canonical order of deepseek_ext/reference/ep.py.
#pragma once
#include <cstdint>

#include "deepseek_ext/ep/barrier.cuh"
#include "deepseek_ext/ep/copy.cuh"
#include "deepseek_ext/ep/params.cuh"
#include "deepseek_ext/ep/recv_index.cuh"
#include "deepseek_ext/shared_memory.cuh"

namespace dx::ep {

__device__ __forceinline__ RecvTables build_recv_tables(const DispatchParams& p, int* smem) {
  const RecvTables t = recv_tables_in(smem, p.num_ranks, p.local_experts);
  if (threadIdx.x == 0) {  // after the barrier's acquire: plain loads see what the sources pushed
    fill_recv_tables(reinterpret_cast<const int32_t*>(p.local + p.layout.counts), p.layout.count_cols, p.num_ranks,
                     p.local_experts, p.alignment, t);
  }
  __syncthreads();
  return t;
}

// Counts rows to every destination: tokens sent, our token count, tokens per its local expert.
__device__ __forceinline__ void push_counts(const DispatchParams& p, int lane) {
  const int cols = static_cast<int>(p.layout.count_cols);
  for (int d = 0; d < p.num_ranks; ++d) {
    auto* row = reinterpret_cast<int32_t*>(reinterpret_cast<uint8_t*>(p.peers.data[d]) + p.layout.counts) +
                static_cast<int64_t>(p.rank) * cols;
    for (int col = lane; col < cols; col += 32) {
      int64_t v;
      if (col == kCountTokens) v = p.tokens_per_rank[d];
      else if (col == kCountSrcTokens) v = p.num_tokens;
      else v = p.tokens_per_expert[static_cast<int64_t>(d) * p.local_experts + col - kCountExperts];
      row[col] = static_cast<int32_t>(v);
    }
  }
}

// One token to every rank that holds one of its experts: data, scales, metadata.
__device__ __forceinline__ void push_token(const DispatchParams& p, int64_t t, int lane) {
  const RegionLayout& l = p.layout;
  const int pos = lane < p.num_ranks ? p.token_slot_in_rank[t * p.num_ranks + lane] : -1;
  const unsigned dsts = __ballot_sync(0xffffffffu, pos >= 0);
  uint8_t* peer = pos >= 0 ? reinterpret_cast<uint8_t*>(p.peers.data[lane]) : nullptr;
  const int64_t row = recv_row(l, p.rank, pos);
  uint8_t* dst_x = pos >= 0 ? peer + l.recv_x + row * l.x_row_bytes : nullptr;
  copy_row_to_many(p.x + t * p.ld_x_bytes, true, dst_x, dsts, p.x_bytes, lane);

  auto* dst_scales = pos >= 0 ? reinterpret_cast<float*>(peer + l.recv_scales) + row * l.scale_cols : nullptr;
  auto* dst_meta = pos >= 0 ? reinterpret_cast<int32_t*>(peer + l.recv_meta) + row * kMetaInts : nullptr;
  int64_t expert = -1;
  float weight = 0.0f;
  int slot_pos = -1;
  if (lane < p.topk) {
    expert = p.topk_idx[t * p.topk + lane];
    weight = p.topk_weights[t * p.topk + lane];
    slot_pos = p.slot_in_expert[t * p.topk + lane];
  }
  for (unsigned m = dsts; m; m &= m - 1) {
    const int d = __ffs(m) - 1;
    auto* scales = reinterpret_cast<float*>(__shfl_sync(0xffffffffu, reinterpret_cast<uintptr_t>(dst_scales), d));
    auto* meta = reinterpret_cast<int32_t*>(__shfl_sync(0xffffffffu, reinterpret_cast<uintptr_t>(dst_meta), d));
    for (int64_t g = lane; g < p.scale_groups; g += 32) scales[g] = p.scales[g * p.ld_scales + t];
    const int64_t first = static_cast<int64_t>(d) * p.local_experts;
    const bool here = expert >= first && expert < first + p.local_experts;
    if (lane < p.topk) {
      meta[kMetaLocalId + lane] = here ? static_cast<int32_t>(expert - first) : -1;
      meta[kMetaWeight + lane] = __float_as_int(here ? weight : 0.0f);
      meta[kMetaPos + lane] = here ? slot_pos : -1;
    }
    if (lane == 0) meta[kMetaSrcToken] = static_cast<int32_t>(t);
  }
}

// Received row i (canonical order) -> token-major outputs, or expanded rows (one per local
// expert of the token, each at its expert segment's place for this source and position).
__device__ __forceinline__ void receive_token(const DispatchParams& p, const RecvTables& tab, int64_t i, int lane) {
  const RegionLayout& l = p.layout;
  const int R = p.num_ranks, k = p.topk;
  const int src = __popc(__ballot_sync(0xffffffffu, lane < R && tab.tok_off[lane + 1] <= i));
  const int64_t row = recv_row(l, src, i - tab.tok_off[src]);
  const auto* meta = reinterpret_cast<const int32_t*>(p.local + l.recv_meta) + row * kMetaInts;
  const uint8_t* src_x = p.local + l.recv_x + row * l.x_row_bytes;
  const float* src_scales = reinterpret_cast<const float*>(p.local + l.recv_scales) + row * l.scale_cols;
  int id = -1, pos = -1;
  float w = 0.0f;
  if (lane < k) {
    id = meta[kMetaLocalId + lane];
    w = __int_as_float(meta[kMetaWeight + lane]);
    pos = meta[kMetaPos + lane];
    p.out_topk_idx[i * k + lane] = id;
    p.out_topk_weights[i * k + lane] = w;
  }
  if (lane == 0) {
    p.out_src_rank[i] = src;
    p.out_src_token[i] = meta[kMetaSrcToken];
  }
  if (p.alignment == 1) {
    copy_row_to_many(src_x, false, p.out_x + i * p.x_bytes, 1u, p.x_bytes, lane);
    for (int64_t g = lane; g < p.scale_groups; g += 32) p.out_scales[g * p.ld_out_scales + i] = src_scales[g];
    return;
  }
  const bool valid = lane < k && id >= 0;
  const unsigned slots = __ballot_sync(0xffffffffu, valid);
  const int64_t out_row = valid ? expanded_row(tab, p.local_experts, src, id, pos) : -1;
  int order = 0;  // this slot's rank among the token's local experts (ascending ids)
  for (unsigned m = slots; m; m &= m - 1) order += __shfl_sync(0xffffffffu, id, __ffs(m) - 1) < id;
  if (valid) {
    p.out_token_rows[i * k + order] = static_cast<int32_t>(out_row);
    p.out_m_indices[out_row] = id;
    p.out_row_token[out_row] = i;
    p.out_row_weight[out_row] = w;
  }
  if (lane < k && lane >= __popc(slots)) p.out_token_rows[i * k + lane] = -1;  // after the token's rows
  copy_row_to_many(src_x, false, valid ? p.out_x + out_row * p.x_bytes : nullptr, slots, p.x_bytes, lane);
  for (unsigned m = slots; m; m &= m - 1) {
    const int64_t r = __shfl_sync(0xffffffffu, out_row, __ffs(m) - 1);
    for (int64_t g = lane; g < p.scale_groups; g += 32) p.out_scales[g * p.ld_out_scales + r] = src_scales[g];
  }
}

// Expanded layout: zero rows after each expert segment's tokens, up to the alignment.
__device__ __forceinline__ void pad_expert(const DispatchParams& p, const RecvTables& tab, int e, int lane) {
  for (int64_t r = tab.exp_base[e] + tab.exp_total[e]; r < tab.exp_base[e + 1]; ++r) {
    zero_row(p.out_x + r * p.x_bytes, p.x_bytes, lane);
    for (int64_t g = lane; g < p.scale_groups; g += 32) p.out_scales[g * p.ld_out_scales + r] = 0.0f;
    if (lane == 0) {
      p.out_m_indices[r] = -1;
      p.out_row_token[r] = -1;
      p.out_row_weight[r] = 0.0f;
    }
  }
}

// Worst-case outputs: metadata past the received rows marks "nothing here".
__device__ __forceinline__ void mark_tails(const DispatchParams& p, int64_t num_recv, int64_t num_rows) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = num_recv * p.topk + first; i < p.cap_tokens * p.topk; i += stride) {
    p.out_topk_idx[i] = -1;
    p.out_topk_weights[i] = 0.0f;
    if (p.alignment > 1) p.out_token_rows[i] = -1;
  }
  for (int64_t i = num_recv + first; i < p.cap_tokens; i += stride) p.out_src_rank[i] = p.out_src_token[i] = -1;
  if (p.alignment == 1) return;
  for (int64_t r = num_rows + first; r < p.cap_rows; r += stride) {
    p.out_m_indices[r] = -1;
    p.out_row_token[r] = -1;
    p.out_row_weight[r] = 0.0f;
  }
}

__global__ void __launch_bounds__(kThreads, 1) dispatch_kernel(const DispatchParams p) {
  int* smem = dynamic_shared_memory<int>();
  const Ctrl c = ctrl_of(p.local, p.layout);
  GridClock clock = start_grid_clock(c);
  const int lane = threadIdx.x % 32;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int64_t num_warps = static_cast<int64_t>(gridDim.x) * kWarps;

  if (p.start_barrier) {  // every rank finished reading what the previous launch sent it
    rank_barrier(c, p.peers, p.layout, p.rank, p.num_ranks, Phase::kDispatchStart, clock, p.timeout_ns, p.header,
                 p.local);
    if (has_failed(c.error)) return finish_grid_clock(c, clock);
  }
  if (p.push_counts && warp == num_warps - 1) push_counts(p, lane);
  if (p.push_data) {
    for (int64_t t = warp; t < p.num_tokens; t += num_warps) push_token(p, t, lane);
  }
  rank_barrier(c, p.peers, p.layout, p.rank, p.num_ranks, Phase::kDispatchEnd, clock, p.timeout_ns);
  if (has_failed(c.error)) return finish_grid_clock(c, clock);

  const RecvTables tab = build_recv_tables(p, smem);
  const int64_t num_recv = tab.tok_off[p.num_ranks];
  const int64_t num_rows = p.alignment > 1 ? tab.exp_base[p.local_experts] : num_recv;
  if (blockIdx.x == 0) {
    if (threadIdx.x == 0) p.num_recv[0] = num_recv, p.num_recv[1] = num_rows;
    for (int e = threadIdx.x; e < p.local_experts; e += blockDim.x)
      p.tokens_per_local_expert[e] = p.alignment > 1 ? tab.exp_base[e + 1] - tab.exp_base[e] : tab.exp_total[e];
  }
  if (p.push_data) {
    for (int64_t i = warp; i < num_recv; i += num_warps) receive_token(p, tab, i, lane);
    if (p.alignment > 1) {
      for (int64_t e = warp; e < p.local_experts; e += num_warps) pad_expert(p, tab, static_cast<int>(e), lane);
    }
    mark_tails(p, num_recv, num_rows);
  }
  finish_grid_clock(c, clock);
}

}  // namespace dx::ep
