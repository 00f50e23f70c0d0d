// What one launch of the persistent FP8 GEMM reads and writes, per GemmKind: the shapes the
// launcher encodes into TMA maps and the tile schedule (host code; tests/cpp emulates the kernel's
// data flow over exactly these shapes).
#pragma once
#include <algorithm>
#include <cstdint>

#include "deepseek_ext/common.cuh"
#include "deepseek_ext/gemm/config.cuh"
#include "deepseek_ext/gemm/heuristic.h"
#include "deepseek_ext/gemm/scheduler.cuh"

namespace dx::gemm {

struct GemmGeometry {
  int64_t a_rows, lda;              // A map: e4m3 [a_rows, sched.k], row stride lda
  int64_t sa_cols, sa_rows, ld_sa;  // SA map: fp32 [sa_rows, sa_cols], row stride ld_sa (1x128, M-major)
  int64_t b_rows, ldb;              // B map: e4m3 [b_rows, sched.k], row stride ldb
  bool sb_per_row;                  // SB map fp32 [k blocks, sched.n] (row stride ld_sb), or
  int64_t ld_sb;                    // 128x128 scales [groups x ceil(n/128), ld_sb] read directly
  int out_groups;                   // D: [out_groups, sched.m, sched.n] contiguous
  int64_t heuristic_m;              // rows per group the config heuristic assumes (kMMasked: expected_m)
  TileSchedule sched;               // tile shape, rasterization and multicast are set by with_config
};

inline TileSchedule schedule(GemmKind kind, int64_t m, int64_t n, int64_t k, int64_t groups, const int* group_info,
                             int64_t b_groups = 0) {
  return TileSchedule{kind, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), static_cast<int>(groups),
                      0, 0, 0, Multicast::kNone, group_info, static_cast<int>(b_groups)};
}

// D[M,N] = A @ B^T (fp8_gemm_nt).
inline GemmGeometry dense_geometry(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ld_sa, int64_t ldb,
                                   int64_t ld_sb, bool sb_per_row) {
  return {m, lda, m, ceil_div(k, kBlockK), ld_sa, n, ldb, sb_per_row, ld_sb, 1, m,
          schedule(GemmKind::kDense, m, n, k, 1, nullptr)};
}

// A [M,K] contiguous, B [G,N,K] contiguous with 128x128 scales [G, ceil(N/128), Kb].
inline GemmGeometry m_contiguous_geometry(int64_t m, int64_t n, int64_t k, int64_t groups, int64_t ld_sa,
                                          const int* m_indices) {
  const int64_t k_blocks = ceil_div(k, kBlockK);
  return {m, k, m, k_blocks, ld_sa, groups * n, k, false, k_blocks, 1, m,
          schedule(GemmKind::kMContiguous, m, n, k, 1, m_indices, groups)};
}

// A [G,Mmax,K] contiguous (one map of G*Mmax rows), scales [G, Mmax, Kb] M-major with groups
// Kb * ld_sa apart (one map of G*Kb rows); B as for the contiguous form; D [G, Mmax, N].
inline GemmGeometry m_masked_geometry(int64_t groups, int64_t m_max, int64_t n, int64_t k, int64_t ld_sa,
                                      int64_t expected_m, const int* masked_m) {
  const int64_t k_blocks = ceil_div(k, kBlockK);
  return {groups * m_max, k, m_max, groups * k_blocks, ld_sa, groups * n, k, false, k_blocks,
          static_cast<int>(groups), std::min(expected_m, m_max),
          schedule(GemmKind::kMMasked, m_max, n, k, groups, masked_m)};
}

// A [M,K] and B [N,K] contiguous with 1x128 scales along K (M-major); D [G, M, N].
inline GemmGeometry k_grouped_geometry(int64_t groups, int64_t m, int64_t n, int64_t k, int64_t ld_sa,
                                       int64_t ld_sb, const int* k_offsets) {
  return {m, k, m, ceil_div(k, kBlockK), ld_sa, n, k, true, ld_sb, static_cast<int>(groups), m,
          schedule(GemmKind::kKGrouped, m, n, k, groups, k_offsets)};
}

// What the config heuristic sees of the launch.
inline GemmProblem problem_of(const GemmGeometry& g, int out_bytes, int num_sms) {
  const int64_t groups = g.sched.kind == GemmKind::kMContiguous ? 1 : g.sched.groups;
  return {g.sched.kind, g.heuristic_m, g.sched.n, g.sched.k, groups, out_bytes, g.sb_per_row, num_sms};
}

// The geometry with its tile shape, multicast and rasterization fixed.
inline GemmGeometry with_config(GemmGeometry g, const GemmConfig& c, int group_m) {
  g.sched.block_m = c.block_m;
  g.sched.block_n = c.block_n;
  g.sched.multicast = c.multicast;
  g.sched.group_m = group_m;
  return g;
}

}  // namespace dx::gemm
