// Notify: the first launch of a dispatch, on one block. The operation header goes to every peer
// with the start barrier; then each rank's counts row (tokens sent, its token count, tokens per
// local expert) goes to every destination, and after a second barrier every receiving rank's
// summary (received tokens, expanded rows, counts per source and per expert, the error words)
// is written to host-mapped memory, which the host reads after its one wait.
#pragma once
#include <cstdint>

#include "deepseek_ext/ep/barrier.cuh"
#include "deepseek_ext/ep/params.cuh"
#include "deepseek_ext/ep/recv_index.cuh"
#include "deepseek_ext/shared_memory.cuh"

namespace dx::ep {

// Counts rows to every destination: tokens sent, our token count, tokens per its local expert.
__device__ __forceinline__ void push_counts(const DispatchParams& p) {
  const int cols = static_cast<int>(p.layout.count_cols);
  for (int i = threadIdx.x; i < p.num_ranks * cols; i += blockDim.x) {
    const int d = i / cols, col = i % cols;
    int64_t v;
    if (col == kCountTokens) v = p.tokens_per_rank[d];
    else if (col == kCountSrcTokens) v = p.num_tokens;
    else v = p.tokens_per_expert[static_cast<int64_t>(d) * p.local_experts + col - kCountExperts];
    auto* row = reinterpret_cast<int32_t*>(reinterpret_cast<uint8_t*>(p.peers.data[d]) + p.layout.counts);
    row[static_cast<int64_t>(p.rank) * cols + col] = static_cast<int32_t>(v);
  }
}

// One receiving rank's summary, on the device (num_recv, tokens_per_local_expert) and in its
// host-mapped words: num_recv, num_rows, tokens from each source, each source's token count,
// tokens per local expert (padded in the expanded layout).
__device__ __forceinline__ void summarize(const DispatchParams& p, const RecvSide& side, const RecvTables& t) {
  const int R = p.num_ranks, L = p.local_experts;
  const auto* counts = reinterpret_cast<const int32_t*>(side.local + p.layout.counts);
  const int64_t num_recv = t.tok_off[R];
  const int64_t num_rows = p.alignment > 1 ? t.exp_base[L] : num_recv;
  for (int i = threadIdx.x; i < info_words(R, L); i += blockDim.x) {
    int64_t v;
    if (i < 2) v = i == 0 ? num_recv : num_rows;
    else if (i < 2 + R) v = counts[(i - 2) * p.layout.count_cols + kCountTokens];
    else if (i < 2 + 2 * R) v = counts[(i - 2 - R) * p.layout.count_cols + kCountSrcTokens];
    else v = p.alignment > 1 ? t.exp_base[i - 2 * R - 1] - t.exp_base[i - 2 * R - 2] : t.exp_total[i - 2 * R - 2];
    side.info[i] = v;
    if (i < 2) side.num_recv[i] = v;
    else if (i >= 2 + R && i < 2 + 2 * R) side.num_recv[i - R] = v;
    else if (i >= 2 + 2 * R) side.tokens_per_local_expert[i - 2 - 2 * R] = v;
  }
}

__global__ void __launch_bounds__(kThreads, 1) notify_kernel(const DispatchParams p) {
  int* smem = dynamic_shared_memory<int>();
  const Ctrl c = ctrl_of(p.local, p.layout);
  GridClock clock = start_grid_clock(c);
  rank_barrier(c, p.peers, p.layout, p.rank, p.num_ranks, Phase::kDispatchStart, clock, p.timeout_ns, p.header,
               p.local);
  if (!has_failed(c.error) && !p.only_agree) {
    push_counts(p);
    rank_barrier(c, p.peers, p.layout, p.rank, p.num_ranks, Phase::kDispatchCounts, clock, p.timeout_ns);
    if (!has_failed(c.error)) {
      const RecvTables t = recv_tables_in(smem, p.num_ranks, p.local_experts);
      for (int rx = 0; rx < p.num_rx; ++rx) {
        if (threadIdx.x == 0) {  // after the barrier's acquire: plain loads see what the sources pushed
          fill_recv_tables(reinterpret_cast<const int32_t*>(p.rx[rx].local + p.layout.counts), p.layout.count_cols,
                           p.num_ranks, p.local_experts, p.alignment, t);
        }
        __syncthreads();
        summarize(p, p.rx[rx], t);
        __syncthreads();
      }
    }
  }
  if (threadIdx.x == 0) {
    p.info[0] = *reinterpret_cast<const volatile int64_t*>(c.error);
    p.info[1] = *p.input_error;
  }
  finish_grid_clock(c, clock);
}

}  // namespace dx::ep
