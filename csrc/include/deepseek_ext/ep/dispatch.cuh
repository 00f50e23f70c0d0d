// Dispatch: 2C blocks, a sender and a receiver per channel (a contiguous range of the tokens).
// Sender warp d streams the channel's tokens bound for rank d through ring (c, rank) in d's
// region; receiver warp s drains ring (c, s) straight into the outputs: each slot carries the
// token's place among what its source sent here and its place in each local expert, so rows
// land at their final (canonical) position with no second pass (deepseek_ext/reference/ep.py).
#pragma once
#include <cstdint>

#include "deepseek_ext/ep/copy.cuh"
#include "deepseek_ext/ep/params.cuh"
#include "deepseek_ext/ep/recv_index.cuh"
#include "deepseek_ext/ep/ring.cuh"
#include "deepseek_ext/shared_memory.cuh"

namespace dx::ep {

struct SlotParts {
  uint8_t* x;
  float* scales;
  int32_t* meta;
};

__device__ __forceinline__ SlotParts slot_parts(const DispatchParams& p, uint8_t* slot) {
  uint8_t* scales = slot + align_up(p.x_bytes, 16);
  return {slot, reinterpret_cast<float*>(scales), reinterpret_cast<int32_t*>(scales + align_up(p.scale_groups * 4, 16))};
}

// Token t (the pos-th sent to rank d) into a slot of d's ring.
__device__ __forceinline__ void write_slot(const DispatchParams& p, int64_t t, int pos, int d, uint8_t* slot, int lane) {
  const SlotParts s = slot_parts(p, slot);
  copy_row_to_many(p.x + t * p.ld_x_bytes, true, s.x, 1u, p.x_bytes, lane);
  for (int64_t g = lane; g < p.scale_groups; g += 32) s.scales[g] = p.scales[g * p.ld_scales + t];
  if (lane < p.topk) {
    const int64_t expert = p.topk_idx[t * p.topk + lane], first = static_cast<int64_t>(d) * p.local_experts;
    const bool here = expert >= first && expert < first + p.local_experts;
    s.meta[kMetaSlots + lane] = here ? static_cast<int32_t>(expert - first) : -1;
    s.meta[kMetaSlots + p.topk + lane] = __float_as_int(here ? p.topk_weights[t * p.topk + lane] : 0.0f);
    s.meta[kMetaSlots + 2 * p.topk + lane] = here ? p.slot_in_expert[t * p.topk + lane] : -1;
  }
  if (lane == 0) s.meta[kMetaSrcToken] = static_cast<int32_t>(t), s.meta[kMetaPosInRank] = pos;
}

// Sender warp of ring (c, rank -> d): the channel's tokens bound for d, in token order, then the close.
__device__ __forceinline__ void send_tokens(const DispatchParams& p, int c, int d, int lane) {
  if (p.tokens_per_rank[d] == 0) return;  // the receiver skips a source that sends it nothing
  const RegionLayout& l = p.layout;
  auto* peer = reinterpret_cast<uint8_t*>(p.peers.data[d]);
  RingEnd ring{ring_counter(peer, l, RingKind::kDispatch, RingWord::kTail, c, p.rank, p.num_ranks),
               ring_counter(p.local, l, RingKind::kDispatch, RingWord::kHead, c, d, p.num_ranks),
               ring_slots(peer, l, RingKind::kDispatch, c, p.rank, p.num_ranks), p.slot_bytes,
               l.ring_bytes / p.slot_bytes, p.tag};
  int64_t* error = reinterpret_cast<int64_t*>(p.local + l.error);
  const int64_t code = encode_error(Phase::kDispatchSend, d + 1);
  const int64_t end = channel_begin(p.num_tokens, l.channels, c + 1);
  for (int64_t base = channel_begin(p.num_tokens, l.channels, c); base < end; base += 32) {
    const int pos = base + lane < end ? p.token_slot_in_rank[(base + lane) * p.num_ranks + d] : -1;
    const unsigned tokens = __ballot_sync(0xffffffffu, pos >= 0);
    for (unsigned m = tokens; m; m &= m - 1) {
      const int b = __ffs(m) - 1;
      if (!ring.reserve(error, code, p.timeout_ns, lane)) return;  // nothing more is written
      write_slot(p, base + b, __shfl_sync(0xffffffffu, pos, b), d, ring.slot(ring.done), lane);
      ring.done += 1;
    }
    if (tokens) ring.post(lane);
  }
  ring.post(lane, true);
}

// A received slot -> token-major outputs (row i), or expanded rows (one per local expert of the
// token, at its expert segment's place for this source and position).
__device__ __forceinline__ void receive_slot(const DispatchParams& p, const RecvSide& side, const RecvTables& tab,
                                             int src, const uint8_t* slot, int lane) {
  const SlotParts s = slot_parts(p, const_cast<uint8_t*>(slot));
  const int k = p.topk;
  const int64_t i = tab.tok_off[src] + s.meta[kMetaPosInRank];
  int id = -1, pos = -1;
  float w = 0.0f;
  if (lane < k) {
    id = s.meta[kMetaSlots + lane];
    w = __int_as_float(s.meta[kMetaSlots + k + lane]);
    pos = s.meta[kMetaSlots + 2 * k + lane];
    side.out_topk_idx[i * k + lane] = id;
    side.out_topk_weights[i * k + lane] = w;
  }
  if (lane == 0) side.out_src_rank[i] = src, side.out_src_token[i] = s.meta[kMetaSrcToken];
  if (p.alignment == 1) {
    copy_row_to_many(s.x, false, side.out_x + i * p.x_bytes, 1u, p.x_bytes, lane);
    for (int64_t g = lane; g < p.scale_groups; g += 32) side.out_scales[g * side.ld_out_scales + i] = s.scales[g];
    return;
  }
  const bool valid = lane < k && id >= 0;
  const unsigned slots = __ballot_sync(0xffffffffu, valid);
  const int64_t out_row = valid ? expanded_row(tab, p.local_experts, src, id, pos) : -1;
  int order = 0;  // this slot's rank among the token's local experts (ascending ids)
  for (unsigned m = slots; m; m &= m - 1) order += __shfl_sync(0xffffffffu, id, __ffs(m) - 1) < id;
  if (valid) {
    side.out_token_rows[i * k + order] = static_cast<int32_t>(out_row);
    side.out_m_indices[out_row] = id;
    side.out_row_token[out_row] = i;
    side.out_row_weight[out_row] = w;
  }
  if (lane < k && lane >= __popc(slots)) side.out_token_rows[i * k + lane] = -1;  // after the token's rows
  copy_row_to_many(s.x, false, valid ? side.out_x + out_row * p.x_bytes : nullptr, slots, p.x_bytes, lane);
  for (unsigned m = slots; m; m &= m - 1) {
    const int64_t r = __shfl_sync(0xffffffffu, out_row, __ffs(m) - 1);
    for (int64_t g = lane; g < p.scale_groups; g += 32) side.out_scales[g * side.ld_out_scales + r] = s.scales[g];
  }
}

// Receiver warp of ring (c, src -> side.rank): drains it until the sender closes it.
__device__ __forceinline__ void receive_tokens(const DispatchParams& p, const RecvSide& side, const RecvTables& tab,
                                               int c, int src, int lane) {
  const RegionLayout& l = p.layout;
  const auto* counts = reinterpret_cast<const int32_t*>(side.local + l.counts);
  if (counts[src * l.count_cols + kCountTokens] == 0) return;
  auto* sender = reinterpret_cast<uint8_t*>(p.peers.data[src]);
  RingEnd ring{ring_counter(sender, l, RingKind::kDispatch, RingWord::kHead, c, side.rank, p.num_ranks),
               ring_counter(side.local, l, RingKind::kDispatch, RingWord::kTail, c, src, p.num_ranks),
               ring_slots(side.local, l, RingKind::kDispatch, c, src, p.num_ranks), p.slot_bytes,
               l.ring_bytes / p.slot_bytes, p.tag};
  int64_t* error = reinterpret_cast<int64_t*>(p.local + l.error);
  const int64_t code = encode_error(Phase::kDispatchRecv, src + 1);
  while (ring.next(error, code, p.timeout_ns, lane)) {
    for (; ring.done < ring.seen; ++ring.done) receive_slot(p, side, tab, src, ring.slot(ring.done), lane);
    ring.post(lane);
  }
}

// Expanded layout: zero rows after each expert segment's tokens, up to the alignment.
__device__ __forceinline__ void pad_expert(const DispatchParams& p, const RecvSide& side, const RecvTables& tab, int e,
                                           int lane) {
  for (int64_t r = tab.exp_base[e] + tab.exp_total[e]; r < tab.exp_base[e + 1]; ++r) {
    zero_row(side.out_x + r * p.x_bytes, p.x_bytes, lane);
    for (int64_t g = lane; g < p.scale_groups; g += 32) side.out_scales[g * side.ld_out_scales + r] = 0.0f;
    if (lane == 0) side.out_m_indices[r] = -1, side.out_row_token[r] = -1, side.out_row_weight[r] = 0.0f;
  }
}

// Worst-case outputs: metadata past the received rows marks "nothing here" (thread `first` of `stride`).
__device__ __forceinline__ void mark_tails(const DispatchParams& p, const RecvSide& side, const RecvTables& tab,
                                           int64_t first, int64_t stride) {
  const int64_t num_recv = tab.tok_off[p.num_ranks];
  const int64_t num_rows = p.alignment > 1 ? tab.exp_base[p.local_experts] : num_recv;
  for (int64_t i = num_recv * p.topk + first; i < side.cap_tokens * p.topk; i += stride) {
    side.out_topk_idx[i] = -1;
    side.out_topk_weights[i] = 0.0f;
    if (p.alignment > 1) side.out_token_rows[i] = -1;
  }
  for (int64_t i = num_recv + first; i < side.cap_tokens; i += stride) side.out_src_rank[i] = side.out_src_token[i] = -1;
  if (p.alignment == 1) return;
  for (int64_t r = num_rows + first; r < side.cap_rows; r += stride) {
    side.out_m_indices[r] = -1;
    side.out_row_token[r] = -1;
    side.out_row_weight[r] = 0.0f;
  }
}

// Receiver block c: tables of every receiving side, its rings, then its share of padding and tails.
__device__ __forceinline__ void receive_channel(const DispatchParams& p, int c, int* smem) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t ints = recv_tables_ints(p.num_ranks, p.local_experts);
  for (int rx = threadIdx.x; rx < p.num_rx; rx += blockDim.x) {  // the counts arrived before the notify ended
    fill_recv_tables(reinterpret_cast<const int32_t*>(p.rx[rx].local + p.layout.counts), p.layout.count_cols,
                     p.num_ranks, p.local_experts, p.alignment, recv_tables_in(smem + rx * ints, p.num_ranks, p.local_experts));
  }
  __syncthreads();
  if (warp < p.num_ranks) {  // ring j: (rx 0, source j), or in loopback (rx j, source 0)
    const int rx = p.num_rx > 1 ? warp : 0, src = p.num_rx > 1 ? 0 : warp;
    receive_tokens(p, p.rx[rx], recv_tables_in(smem + rx * ints, p.num_ranks, p.local_experts), c, src, lane);
  }
  const int64_t C = p.layout.channels;
  for (int rx = 0; rx < p.num_rx; ++rx) {
    const RecvTables tab = recv_tables_in(smem + rx * ints, p.num_ranks, p.local_experts);
    if (p.alignment > 1) {
      for (int64_t e = c + C * warp; e < p.local_experts; e += C * kWarps) pad_expert(p, p.rx[rx], tab, static_cast<int>(e), lane);
    }
    mark_tails(p, p.rx[rx], tab, c * blockDim.x + threadIdx.x, C * blockDim.x);
  }
}

__global__ void __launch_bounds__(kThreads, 1) dispatch_kernel(const DispatchParams p) {
  const int c = blockIdx.x / 2;
  if (blockIdx.x % 2 == 0) {
    const int warp = threadIdx.x / 32;
    if (warp < p.num_ranks) send_tokens(p, c, warp, threadIdx.x % 32);
  } else {
    receive_channel(p, c, dynamic_shared_memory<int>());
  }
}

}  // namespace dx::ep
