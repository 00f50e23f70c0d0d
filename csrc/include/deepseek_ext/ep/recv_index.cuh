// Where received tokens land: prefix tables built from the counts rows every source pushed, and
// the row of a received token in the expanded (expert-contiguous) layout.
// __host__ __device__ so tests/cpp/ep_index_math.cu checks them on the CPU.
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"
#include "deepseek_ext/ep/params.cuh"

namespace dx::ep {

struct RecvTables {
  int* tok_off;    // [R + 1]: first received row of each source
  int* exp_total;  // [L]: tokens per local expert
  int* exp_base;   // [L + 1]: first expanded row of each local expert (segments padded)
  int* src_off;    // [R][L]: rows of each local expert received from earlier sources
};

DX_HOST_DEVICE int64_t recv_tables_ints(int num_ranks, int local_experts) {
  return (num_ranks + 1) + local_experts + (local_experts + 1) + static_cast<int64_t>(num_ranks) * local_experts;
}

// Carves the tables out of `ints` (recv_tables_ints of them).
DX_HOST_DEVICE RecvTables recv_tables_in(int* ints, int num_ranks, int local_experts) {
  const int R = num_ranks, L = local_experts;
  return {ints, ints + R + 1, ints + R + 1 + L, ints + R + 1 + L + L + 1};
}

// counts: R rows of count_cols int32 (kCountTokens, kCountSrcTokens, then per local expert).
DX_HOST_DEVICE void fill_recv_tables(const int32_t* counts, int64_t count_cols, int num_ranks, int local_experts,
                                     int64_t alignment, const RecvTables& t) {
  t.tok_off[0] = 0;
  for (int s = 0; s < num_ranks; ++s) t.tok_off[s + 1] = t.tok_off[s] + counts[s * count_cols + kCountTokens];
  t.exp_base[0] = 0;
  for (int e = 0; e < local_experts; ++e) {
    int total = 0;
    for (int s = 0; s < num_ranks; ++s) {
      t.src_off[s * local_experts + e] = total;
      total += counts[s * count_cols + kCountExperts + e];
    }
    t.exp_total[e] = total;
    t.exp_base[e + 1] = t.exp_base[e] + static_cast<int>(align_up(total, alignment));
  }
}

// Expanded row of a token from `src` holding local expert `id`, the `pos`-th of src's tokens
// routed to that expert: its expert's segment, after earlier sources' tokens of the expert.
DX_HOST_DEVICE int64_t expanded_row(const RecvTables& t, int local_experts, int src, int id, int pos) {
  return static_cast<int64_t>(t.exp_base[id]) + t.src_off[src * local_experts + id] + pos;
}

}  // namespace dx::ep
