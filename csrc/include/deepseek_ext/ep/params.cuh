// Parameters of the expert-parallel kernels and the index math of a rank's IPC region
// (offsets are computed once in Python, deepseek_ext/ep/ipc_backend.py, and passed in).
#pragma once
#include <cuda_bf16.h>
#include <cstdint>

#include "deepseek_ext/common.cuh"

namespace dx::ep {

constexpr int kMaxRanks = 32;  // one lane per rank
constexpr int kMaxTopk = 32;   // one lane per top-k slot
constexpr int kThreads = 512;  // threads per block of the dispatch/combine kernels
constexpr int kWarps = kThreads / 32;

// Received-token metadata row (int32 words): source token, then per slot local id, weight bits,
// index among the source's tokens of that expert.
constexpr int kMetaSrcToken = 0;
constexpr int kMetaLocalId = 1;
constexpr int kMetaWeight = kMetaLocalId + kMaxTopk;
constexpr int kMetaPos = kMetaWeight + kMaxTopk;
constexpr int kMetaInts = 128;  // row stride (512 bytes)

// Counts row a source pushes to each destination (int32 words): tokens sent, source token
// count, then tokens per local expert of the destination.
constexpr int kCountTokens = 0;
constexpr int kCountSrcTokens = 1;
constexpr int kCountExperts = 2;

// Error word (int64, first error wins): phase << 32 | detail (rank waited for + 1, or id).
enum class Phase : int {
  kNone = 0,
  kDispatchStart = 1,
  kDispatchEnd = 2,
  kCombineStart = 3,
  kCombineEnd = 4,
  kGridSync = 5,
  kBadExpertId = 6,
  kDiverged = 7,  // a peer's operation header differs from ours (detail: that rank + 1)
};

// Operation header (deepseek_ext/ep/agreement.py, OpHeader): seq, kind, k, hidden, dtype,
// has_scales, invalid, then padding. Every operation's first rank barrier carries it.
constexpr int kHeaderWords = 8;

DX_HOST_DEVICE int64_t encode_error(Phase phase, int64_t detail) {
  return (static_cast<int64_t>(phase) << 32) | (detail & 0xffffffffll);
}

// Byte offsets of the parts of a rank's region; every rank's region has the same layout.
struct RegionLayout {
  int64_t arrivals;        // uint64 [R]: barrier arrivals, slot s added to by rank s
  int64_t barrier_epoch;   // uint64: barriers this rank completed (local)
  int64_t grid_base;       // uint64: grid-barrier arrivals before this launch (local)
  int64_t grid_arrivals;   // uint64: grid-barrier arrival counter (local)
  int64_t error;           // int64: error word (local)
  int64_t headers;         // int64 [2][R][kHeaderWords]: headers pushed by each rank (by barrier parity)
  int64_t counts;          // int32 [R][count_cols]: counts row pushed by each source
  int64_t recv_x;          // bytes [R][max_tokens][x_row_bytes]: tokens from each source
  int64_t recv_scales;     // fp32 [R][max_tokens][scale_cols]
  int64_t recv_meta;       // int32 [R][max_tokens][kMetaInts]
  int64_t combine;         // bf16 [R][max_tokens][hidden]: partials from each rank
  int64_t count_cols;
  int64_t x_row_bytes;
  int64_t scale_cols;
  int64_t max_tokens;
};

DX_HOST_DEVICE int64_t recv_row(const RegionLayout& l, int src, int64_t pos) {
  return static_cast<int64_t>(src) * l.max_tokens + pos;
}

struct Peers {
  const uint64_t* data;    // [R] region base of every rank (loopback: local allocations)
  const uint64_t* signal;  // [R] region base whose arrival slots a rank adds to (loopback: own)
};

struct DispatchParams {
  int rank, num_ranks, local_experts, topk;
  int64_t num_tokens, x_bytes, scale_groups, alignment, timeout_ns;
  bool start_barrier, push_counts, push_data;  // notify = start + counts; data launch = data
  int64_t header[kHeaderWords];  // compared across ranks at the start barrier
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
  // outputs
  int64_t* num_recv;           // [2]: received tokens, expanded rows
  int64_t* tokens_per_local_expert;  // [L] (padded in the expanded layout)
  uint8_t* out_x;              // [cap_rows, x_bytes]
  float* out_scales;           // M-major, ld_out_scales
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

struct CombineParams {
  int rank, num_ranks, topk;
  int64_t hidden, num_tokens, timeout_ns;
  bool y_is_fp32;
  int64_t header[kHeaderWords];  // compared across ranks at the start barrier
  const void* y;                // [rows, hidden] bf16 or fp32
  const int64_t* num_recv;      // [1] received tokens (device)
  const int64_t* src_rank;      // [N]
  const int64_t* src_token;     // [N]
  const int32_t* token_rows;    // expanded: [N, k] rows per token, local experts ascending; else null
  const float* row_weight;      // expanded: [rows]
  const bool* is_token_in_rank;  // [T, R]: this rank's tokens
  Peers peers;
  uint8_t* local;
  RegionLayout layout;
  __nv_bfloat16* out;           // [T, hidden]
};

}  // namespace dx::ep
