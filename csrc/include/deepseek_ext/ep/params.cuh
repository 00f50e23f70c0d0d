// Parameters of the expert-parallel kernels and the layout of a rank's IPC region (offsets are
// computed once in Python, deepseek_ext/ep/ipc_backend.py, and passed in).
#pragma once
#include <cuda_bf16.h>
#include <cstdint>

#include "deepseek_ext/common.cuh"

namespace dx::ep {

constexpr int kMaxRanks = 16;  // one warp per (channel, peer) ring of a block (one lane per rank)
constexpr int kMaxTopk = 32;   // one lane per top-k slot
constexpr int kThreads = 512;  // threads per block of the expert-parallel kernels
constexpr int kWarps = kThreads / 32;
static_assert(kMaxRanks <= kWarps, "a block holds one warp per ring");

// Counts row a source pushes to each destination (int32 words): tokens sent, source token
// count, then tokens per local expert of the destination.
constexpr int kCountTokens = 0;
constexpr int kCountSrcTokens = 1;
constexpr int kCountExperts = 2;

// Error word (int64, first error wins): phase << 32 | detail (rank waited for + 1, or id).
enum class Phase : int {
  kNone = 0,
  kDispatchStart = 1,
  kDispatchCounts = 2,
  kCombineStart = 3,
  kGridSync = 5,
  kBadExpertId = 6,
  kDiverged = 7,       // a peer's operation header differs from ours (detail: that rank + 1)
  kDispatchSend = 8,   // a ring to that rank stayed full
  kDispatchRecv = 9,   // a ring from that rank stayed empty
  kCombineSend = 10,
  kCombineRecv = 11,
};

// Operation header (deepseek_ext/ep/agreement.py, OpHeader): seq, kind, k, hidden, dtype,
// has_scales, invalid, then padding. Every operation's first rank barrier carries it.
constexpr int kHeaderWords = 8;

DX_HOST_DEVICE int64_t encode_error(Phase phase, int64_t detail) {
  return (static_cast<int64_t>(phase) << 32) | (detail & 0xffffffffll);
}

// A dispatch slot: x row, scales, then int32 metadata: source token, its place among the tokens
// sent to this destination, and per top-k slot the local expert id, weight bits, place in expert.
constexpr int kMetaSrcToken = 0;
constexpr int kMetaPosInRank = 1;
constexpr int kMetaSlots = 2;

DX_HOST_DEVICE int64_t dispatch_slot_bytes(int64_t x_bytes, int64_t scale_groups, int64_t topk) {
  return align_up(x_bytes, 16) + align_up(scale_groups * 4, 16) + align_up((kMetaSlots + 3 * topk) * 4, 16);
}

// Byte offsets of the parts of a rank's region; every rank's region has the same layout.
// Everything before `counts` is control state that reset() zeroes.
struct RegionLayout {
  int64_t arrivals;        // uint64 [R]: barrier arrivals, slot s added to by rank s
  int64_t barrier_epoch;   // uint64: barriers this rank completed (local)
  int64_t grid_base;       // uint64: grid-barrier arrivals before this launch (local)
  int64_t grid_arrivals;   // uint64: grid-barrier arrival counter (local)
  int64_t error;           // int64: error word (local)
  int64_t headers;         // int64 [2][R][kHeaderWords]: headers pushed by each rank (by barrier parity)
  int64_t ring_words;      // uint64 [2 (dispatch, combine)][2 (tail, head)][C][R]: ring counters (ring.cuh)
  int64_t counts;          // int32 [R][count_cols]: counts row pushed by each source
  int64_t rings;           // bytes [2 (dispatch, combine)][C][R][ring_bytes]: ring (c, s) written by rank s
  int64_t count_cols;
  int64_t channels;        // C: one sender and one receiver block each
  int64_t ring_bytes;
};

struct Peers {
  const uint64_t* data;    // [R] region base of every rank (loopback: local allocations)
  const uint64_t* signal;  // [R] region base whose arrival slots a rank adds to (loopback: own)
};

// Host-mapped summary a notify writes for every receiving rank (int64 words after the two
// global ones: the error word and the layout kernel's bad-id word).
constexpr int kInfoGlobal = 2;
DX_HOST_DEVICE int64_t info_words(int num_ranks, int local_experts) { return 2 + 2 * num_ranks + local_experts; }

// One receiving rank: this rank, or (loopback) every virtual rank of the launch.
struct RecvSide {
  int rank;
  uint8_t* local;                    // its region
  int64_t* num_recv;                 // [2 + R]: tokens received, expanded rows, each source's token count
  int64_t* tokens_per_local_expert;  // [L] (padded in the expanded layout)
  int64_t* info;                     // host-mapped (device address): info_words(R, L) of its summary
  uint8_t* out_x;                    // [cap_rows, x_bytes]
  float* out_scales;                 // M-major, ld_out_scales
  int64_t ld_out_scales;
  int64_t* out_topk_idx;       // [cap_tokens, k]
  float* out_topk_weights;     // [cap_tokens, k]
  int64_t* out_src_rank;       // [cap_tokens]
  int64_t* out_src_token;      // [cap_tokens]
  int32_t* out_m_indices;      // expanded: [cap_rows]
  int64_t* out_row_token;      // expanded: [cap_rows]
  float* out_row_weight;       // expanded: [cap_rows]
  int32_t* out_token_rows;     // expanded: [cap_tokens, k]
  int64_t cap_tokens, cap_rows;
};

// Notify (counts, one host-visible summary) and dispatch (the data through the rings) of one
// rank's tokens. num_rx receiving sides: 1, or every virtual rank in loopback (then only rank 0
// sends and the receivers' ring j is (rx j, source 0) instead of (rx 0, source j)).
struct DispatchParams {
  int rank, num_ranks, local_experts, topk, num_rx;
  uint32_t tag;                  // the operation's sequence number + 1 (ring.cuh)
  int64_t num_tokens, x_bytes, scale_groups, alignment, timeout_ns, slot_bytes;
  bool only_agree;               // notify: the header exchange alone (a rank that rejected its inputs)
  int64_t header[kHeaderWords];  // compared across ranks at the start barrier
  const int64_t* input_error;    // the layout kernel's bad-id word, copied into the summary
  int64_t* info;                 // host-mapped global words of the summary
  // inputs (this rank's tokens)
  const uint8_t* x;
  int64_t ld_x_bytes;
  const float* scales;  // M-major: (token, group) at group * ld_scales + token; null for bf16
  int64_t ld_scales;
  const int64_t* topk_idx;      // [T, k]
  const float* topk_weights;    // [T, k]
  const int32_t* token_slot_in_rank;  // [T, R]
  const int32_t* slot_in_expert;      // [T, k]
  const int64_t* tokens_per_rank;     // [R]
  const int64_t* tokens_per_expert;   // [E]
  Peers peers;
  uint8_t* local;
  RegionLayout layout;
  RecvSide rx[kMaxRanks];
};

struct LayoutParams {
  const int64_t* topk_idx;  // [T, k] global ids, -1 = none
  int64_t num_tokens;
  int topk, num_experts, num_ranks;
  int64_t* tokens_per_rank;     // [R]
  int64_t* tokens_per_expert;   // [E]
  bool* is_token_in_rank;       // [T, R]
  int32_t* token_slot_in_rank;  // [T, R]
  int32_t* slot_in_expert;      // [T, k]
  int64_t* error;               // out-of-range ids are recorded here and treated as -1
};

// One sending side of a combine: this rank, or (loopback) every virtual rank, each sending the
// partials of what it received back to rank 0 (y null: zero partials).
struct SendSide {
  int rank;
  const void* y;                // [rows, hidden] bf16 or fp32
  const int64_t* num_recv;      // [2 + R] (RecvSide::num_recv of its dispatch)
  const int64_t* src_rank;      // [N]
  const int64_t* src_token;     // [N]
  const int32_t* token_rows;    // expanded: [N, k] rows per token, local experts ascending; else null
  const float* row_weight;      // expanded: [rows]
};

struct CombineParams {
  int rank, num_ranks, topk, num_tx;
  uint32_t tag;
  int64_t hidden, num_tokens, timeout_ns;
  bool y_is_fp32;
  int64_t header[kHeaderWords];  // compared across ranks at the start barrier
  const bool* is_token_in_rank;  // [T, R]: this rank's tokens
  Peers peers;
  uint8_t* local;
  RegionLayout layout;
  __nv_bfloat16* out;           // [T, hidden]
  SendSide tx[kMaxRanks];
};

}  // namespace dx::ep
