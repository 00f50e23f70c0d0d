// The launcher's choice of tile shape and cluster for one GEMM (host code): among the compiled
// variants, fewest waves of tiles over the SMs, then the fullest last wave, then the fewest
// bytes moved from L2 into shared memory (a multicast tile is read once for two CTAs).
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"
#include "deepseek_ext/gemm/config.cuh"
#include "deepseek_ext/gemm/scheduler.cuh"

namespace dx::gemm {

// What the heuristic knows of a launch. m: rows per output group (kMMasked: the expected rows
// per group, kMContiguous: all rows); groups: output groups whose tiles share the SMs.
struct GemmProblem {
  GemmKind kind;
  int64_t m, n, k;
  int64_t groups;
  int out_bytes;
  bool sb_per_row;
  int num_sms;
};

struct ConfigScore {
  int64_t waves;
  int64_t last_wave_tiles;  // tiles in the last wave (a fuller last wave is better)
  int64_t bytes;            // A, B tiles read per K block, summed over tiles

  // Whether this score is strictly better than `o`.
  bool beats(const ConfigScore& o) const {
    if (waves != o.waves) return waves < o.waves;
    if (last_wave_tiles != o.last_wave_tiles) return last_wave_tiles > o.last_wave_tiles;
    return bytes < o.bytes;
  }
};

// Whether config c can run the problem: a compiled variant, and a cluster only for dense GEMMs
// whose shared dimension has an even count of blocks (the pair's two tiles both exist).
inline bool config_applies(const GemmProblem& p, const GemmConfig& c) {
  if (!instantiated(p.out_bytes, p.sb_per_row, c.block_m, c.block_n)) return false;
  if (c.multicast == Multicast::kNone) return true;
  if (p.kind != GemmKind::kDense || p.num_sms < 2) return false;
  const int64_t blocks = c.multicast == Multicast::kA ? ceil_div(p.n, c.block_n) : ceil_div(p.m, c.block_m);
  return blocks % 2 == 0;
}

inline ConfigScore score_config(const GemmProblem& p, const GemmConfig& c) {
  const int64_t tiles = p.groups * ceil_div(p.m, c.block_m) * ceil_div(p.n, c.block_n);
  const int cluster = cluster_size(c.multicast);
  const int64_t slots = p.num_sms / cluster * cluster;
  const int64_t waves = ceil_div(tiles, slots);
  int64_t per_block = int64_t{c.block_m + c.block_n} * kBlockK;
  if (c.multicast == Multicast::kA) per_block -= int64_t{c.block_m} * kBlockK / 2;
  if (c.multicast == Multicast::kB) per_block -= int64_t{c.block_n} * kBlockK / 2;
  return {waves, tiles - (waves - 1) * slots, tiles * ceil_div(p.k, kBlockK) * per_block};
}

// The best applicable config (ties keep the first found: wider tiles, 128 rows, no cluster).
inline GemmConfig choose_config(const GemmProblem& p) {
  GemmConfig best{0, 0, Multicast::kNone};
  ConfigScore best_score{};
  for (int block_m : {128, 64}) {
    for (int block_n = kMaxBlockN; block_n >= kBlockNStep; block_n -= kBlockNStep) {
      for (Multicast multicast : {Multicast::kNone, Multicast::kB, Multicast::kA}) {
        const GemmConfig c{block_m, block_n, multicast};
        if (!config_applies(p, c)) continue;
        const ConfigScore s = score_config(p, c);
        if (best.block_m == 0 || s.beats(best_score)) best = c, best_score = s;
      }
    }
  }
  return best;
}

}  // namespace dx::gemm
