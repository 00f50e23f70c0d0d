// Combine: the rings in reverse. After the start barrier (which carries the operation header),
// 2C blocks: sender warp s of channel c sends, through ring (c, rank) in s's region, the bf16
// partial of every token it received from s whose source index lies in s's channel c (in the
// expanded layout the fp32 sum of its rows times their weights, local experts ascending), in
// source-token order. Receiver block c walks this rank's channel-c tokens, kWarps at a time (a
// warp per token): each token's partials are the next slots of the rings of the ranks it went
// to, summed from 0 over ranks ascending in fp32, then rounded to bf16 (deepseek_ext/reference/ep.py).
#pragma once
#include <cuda_bf16.h>
#include <cstdint>

#include "deepseek_ext/ep/barrier.cuh"
#include "deepseek_ext/ep/params.cuh"
#include "deepseek_ext/ep/ring.cuh"
#include "deepseek_ext/vec.cuh"

namespace dx::ep {

constexpr int kChunk = 8;       // elements per lane step: one 16-byte bf16 vector
constexpr int kPostEvery = 4;   // a sender publishes its tail at least every kPostEvery slots

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

// Received token i's partial into a ring slot (zeros for a loopback peer without y).
__device__ __forceinline__ void write_partial(const CombineParams& p, const SendSide& side, int64_t i, uint8_t* slot,
                                              int lane, int* rows, float* weights) {
  const int64_t chunks = p.hidden / kChunk;
  auto* dst = reinterpret_cast<uint4*>(slot);
  if (side.y == nullptr) {
    for (int64_t c = lane; c < chunks; c += 32) dst[c] = make_uint4(0, 0, 0, 0);
    return;
  }
  if (side.token_rows == nullptr) {
    for (int64_t c = lane; c < chunks; c += 32) {
      float v[kChunk];
      load_chunk(side.y, p.y_is_fp32, i * p.hidden + c * kChunk, v);
      dst[c] = pack_bf16x8(v);
    }
    return;
  }
  const int row = lane < p.topk ? side.token_rows[i * p.topk + lane] : -1;
  const int num_rows = __popc(__ballot_sync(0xffffffffu, row >= 0));  // rows come first, -1 after
  rows[lane] = row;
  weights[lane] = row >= 0 ? side.row_weight[row] : 0.0f;
  __syncwarp();
  for (int64_t c = lane; c < chunks; c += 32) {
    float acc[kChunk] = {};
    for (int q = 0; q < num_rows; ++q) {
      float v[kChunk];
      load_chunk(side.y, p.y_is_fp32, rows[q] * p.hidden + c * kChunk, v);
#pragma unroll
      for (int e = 0; e < kChunk; ++e) acc[e] = __fadd_rn(acc[e], __fmul_rn(v[e], weights[q]));  // no FMA
    }
    dst[c] = pack_bf16x8(acc);
  }
  __syncwarp();
}

// First received row (sorted by source rank, then source token) at or after (src, token).
__device__ __forceinline__ int64_t first_row_from(const SendSide& side, int64_t src, int64_t token) {
  int64_t lo = 0, hi = side.num_recv[0];
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    const bool before = side.src_rank[mid] < src || (side.src_rank[mid] == src && side.src_token[mid] < token);
    lo = before ? mid + 1 : lo;
    hi = before ? hi : mid;
  }
  return lo;
}

// Sender warp of ring (c, side.rank -> s): partials of the rows from s in s's channel c.
__device__ __forceinline__ void send_partials(const CombineParams& p, const SendSide& side, int c, int s, int lane,
                                              int* rows, float* weights) {
  const RegionLayout& l = p.layout;
  const int64_t tokens = side.num_recv[2 + s];
  int64_t first = 0, end = 0;
  if (lane == 0) {
    first = first_row_from(side, s, channel_begin(tokens, l.channels, c));
    end = first_row_from(side, s, channel_begin(tokens, l.channels, c + 1));
  }
  first = __shfl_sync(0xffffffffu, first, 0);
  end = __shfl_sync(0xffffffffu, end, 0);
  if (first == end) return;  // the receiver expects nothing on this ring
  auto* peer = reinterpret_cast<uint8_t*>(p.peers.data[s]);
  auto* own = reinterpret_cast<uint8_t*>(p.peers.data[side.rank]);
  const int64_t slot_bytes = p.hidden * 2;
  RingEnd ring{ring_counter(peer, l, RingKind::kCombine, RingWord::kTail, c, side.rank, p.num_ranks),
               ring_counter(own, l, RingKind::kCombine, RingWord::kHead, c, s, p.num_ranks),
               ring_slots(peer, l, RingKind::kCombine, c, side.rank, p.num_ranks), slot_bytes,
               l.ring_bytes / slot_bytes, p.tag};
  int64_t* error = reinterpret_cast<int64_t*>(p.local + l.error);
  const int64_t code = encode_error(Phase::kCombineSend, s + 1);
  for (int64_t i = first; i < end; ++i) {
    if (!ring.reserve(error, code, p.timeout_ns, lane)) return;
    write_partial(p, side, i, ring.slot(ring.done), lane, rows, weights);
    ring.done += 1;
    if (ring.done % kPostEvery == 0 || i + 1 == end) ring.post(lane);
  }
}

// Lane d (< R) waits until ring (c, d) holds slot `slot` (false on timeout or an earlier failure).
__device__ __forceinline__ bool wait_slot(const CombineParams& p, const uint64_t* tail, int64_t slot, int64_t& filled,
                                          int d) {
  auto* error = reinterpret_cast<int64_t*>(p.local + p.layout.error);
  const uint64_t deadline = ptx::globaltimer_ns() + p.timeout_ns;
  while (filled <= slot) {
    filled = ring_count(ptx::ld_acquire_sys(tail), p.tag);
    if (filled > slot) break;
    if (has_failed(error)) return false;
    if (ptx::globaltimer_ns() > deadline) {
      record_error(error, encode_error(Phase::kCombineRecv, d + 1));
      return false;
    }
  }
  return true;
}

// Receiver block c: this rank's tokens of channel c, a warp per token, kWarps tokens per step.
__device__ __forceinline__ void reduce_channel(const CombineParams& p, int c) {
  const RegionLayout& l = p.layout;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, R = p.num_ranks;
  const int64_t slot_bytes = p.hidden * 2, num_slots = l.ring_bytes / slot_bytes, chunks = p.hidden / kChunk;
  const bool ring_lane = lane < R;  // lane d follows ring (c, d)
  const uint64_t* tail = ring_lane ? ring_counter(p.local, l, RingKind::kCombine, RingWord::kTail, c, lane, R) : nullptr;
  const uint8_t* slots = ring_lane ? ring_slots(p.local, l, RingKind::kCombine, c, lane, R) : nullptr;
  int64_t read = 0, filled = 0;  // lane d: slots of ring (c, d) read before this step, and known filled
  bool ok = true;
  const int64_t end = channel_begin(p.num_tokens, l.channels, c + 1);
  for (int64_t base = channel_begin(p.num_tokens, l.channels, c); base < end; base += kWarps) {
    unsigned mask = 0;  // lane d: the step's tokens that went to rank d
    for (int j = 0; ring_lane && j < kWarps && base + j < end; ++j) mask |= p.is_token_in_rank[(base + j) * R + lane] << j;
    const bool in = (mask >> warp) & 1;
    const int64_t slot = read + __popc(mask & ((1u << warp) - 1));
    if (in && ok) ok = wait_slot(p, tail, slot, filled, lane);
    const unsigned ranks = __ballot_sync(0xffffffffu, in);
    const uint8_t* mine = in ? slots + (slot % num_slots) * slot_bytes : nullptr;
    const int64_t t = base + warp;
    if (t < end) {
      auto* out = reinterpret_cast<uint4*>(p.out) + t * chunks;
      for (int64_t ch = lane; ch < chunks; ch += 32) {
        float acc[kChunk] = {};
        for (unsigned m = ranks; m; m &= m - 1) {
          const auto* src = reinterpret_cast<const uint4*>(__shfl_sync(0xffffffffu, reinterpret_cast<uintptr_t>(mine), __ffs(m) - 1));
          float v[kChunk];
          unpack_to_float(static_cast<const __nv_bfloat16*>(nullptr), src[ch], v);
#pragma unroll
          for (int e = 0; e < kChunk; ++e) acc[e] = __fadd_rn(acc[e], v[e]);
        }
        out[ch] = pack_bf16x8(acc);
      }
    }
    read += __popc(mask);
    __syncthreads();  // every warp read its slots: free them
    if (warp == 0 && mask != 0) {
      auto* head = ring_counter(reinterpret_cast<uint8_t*>(p.peers.data[lane]), l, RingKind::kCombine, RingWord::kHead,
                                c, p.rank, R);
      ptx::st_release_sys(head, ring_word(p.tag, read, false));
    }
  }
}

__global__ void __launch_bounds__(kThreads, 1) combine_kernel(const CombineParams p) {
  __shared__ int rows[kWarps][kMaxTopk];
  __shared__ float weights[kWarps][kMaxTopk];
  const Ctrl ctrl = ctrl_of(p.local, p.layout);
  GridClock clock = start_grid_clock(ctrl);
  rank_barrier(ctrl, p.peers, p.layout, p.rank, p.num_ranks, Phase::kCombineStart, clock, p.timeout_ns, p.header,
               p.local);
  if (!has_failed(ctrl.error)) {
    const int c = blockIdx.x / 2, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (blockIdx.x % 2 == 1) {
      reduce_channel(p, c);
    } else if (warp < p.num_ranks) {  // ring j: (tx 0, destination j), or in loopback (tx j, destination 0)
      const int tx = p.num_tx > 1 ? warp : 0, dst = p.num_tx > 1 ? 0 : warp;
      send_partials(p, p.tx[tx], c, dst, lane, rows[warp], weights[warp]);
    }
  }
  finish_grid_clock(ctrl, clock);
}

}  // namespace dx::ep
