// Persistent tile scheduler: CTA `cta` of `ctas` walks tiles cta, cta+ctas, ...; tile indices
// map to (m_block, n_block) in groups of `group_m` M blocks so that CTAs running at the same
// time share A rows and B columns in L2. TileSchedule maps a tile index of any GemmKind (dense
// or one of the grouped MoE forms) to the rows, columns, groups and K blocks it covers.
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"
#include "deepseek_ext/gemm/config.cuh"

namespace dx::gemm {

struct TileCoord {
  int m_block;
  int n_block;
};

struct TileGrid {
  int m_blocks;
  int n_blocks;
  int group_m;  // >= 1

  DX_HOST_DEVICE int tiles() const { return m_blocks * n_blocks; }

  // Tile `t` (0 <= t < tiles()): M varies fastest inside a group of group_m M blocks, then N,
  // then the group. The last group may hold fewer M blocks.
  DX_HOST_DEVICE TileCoord coord(int t) const {
    const int tiles_per_group = group_m * n_blocks;
    const int group = t / tiles_per_group;
    const int first_m = group * group_m;
    const int rows = m_blocks - first_m < group_m ? m_blocks - first_m : group_m;
    const int local = t - group * tiles_per_group;
    return {first_m + local % rows, local / rows};
  }
};

// Which GEMM the persistent kernel runs; the tile mapping differs, the pipeline does not.
enum class GemmKind : int {
  kDense = 0,        // one [M, N] output
  kMContiguous = 1,  // groups along M: 128-row blocks of A each belong to one group of B or are padding
  kMMasked = 2,      // groups [G, Mmax]: only the first masked_m[g] rows of group g are computed
  kKGrouped = 3,     // groups along K: output g contracts over K blocks [offsets[g], offsets[g+1]) / 128
};

// What one tile computes. Rows of the output are group-local (the output is [out_groups, m, n]).
struct TileWork {
  int group;         // group of B and its scales (-1: a contiguous padding block, all zeros)
  int out_group;     // output group the tile is stored to (third coordinate of the D map)
  int m0, n0;        // first row / column of the tile in its output group
  int a_row, b_row;  // first rows of the tile in the 2-D maps of A [rows, K] and B [rows, K]
  int sa_row;        // row of A's scale map [rows = K blocks (x groups), M] holding K block 0
  int sb_block_row;  // row of the 128x128 B scales [groups x ceil(N/128), Kb] for this tile
  int kb_begin, kb_end;  // K blocks to accumulate (empty: the tile is zero, or c)
  int rows;          // rows of the tile that are computed; later rows are written as zeros
};

// The tile schedule of every GemmKind. group_info is read on the device (and by host tests):
// kMContiguous: m_indices [m] (group of each row, -1 on padding); kMMasked: masked_m [groups];
// kKGrouped: K offsets [groups + 1] (multiples of 128, offsets[groups] == k). m is the rows of
// one output group (kMMasked: Mmax), k the contraction length (kKGrouped: the total).
struct TileSchedule {
  GemmKind kind;
  int m, n, k;
  int groups;           // 1 for kDense and kMContiguous
  int block_n;
  int group_m;          // rasterization: M blocks per L2 group (>= 1)
  int expected_blocks;  // kMMasked: M blocks per group scheduled first (1..m blocks)
  const int* group_info;

  DX_HOST_DEVICE int m_blocks() const { return static_cast<int>(ceil_div(m, kBlockM)); }
  DX_HOST_DEVICE int n_blocks() const { return static_cast<int>(ceil_div(n, block_n)); }
  DX_HOST_DEVICE int k_blocks() const { return static_cast<int>(ceil_div(k, kBlockK)); }
  DX_HOST_DEVICE int tiles() const { return groups * m_blocks() * n_blocks(); }

  // (output group, m block, n block) of tile t. kMMasked first walks every group's first
  // expected_blocks M blocks (where the rows most likely are, so they spread over all CTAs), then
  // the remaining M blocks ascending across groups (mostly zero-only tiles).
  DX_HOST_DEVICE void locate(int t, int& g, TileCoord& c) const {
    const int per_group = m_blocks() * n_blocks();
    if (kind != GemmKind::kMMasked) {
      g = t / per_group;
      c = TileGrid{m_blocks(), n_blocks(), group_m}.coord(t - g * per_group);
      return;
    }
    const int first = expected_blocks * n_blocks();
    if (t < groups * first) {
      g = t / first;
      c = TileGrid{expected_blocks, n_blocks(), group_m}.coord(t - g * first);
      return;
    }
    const int u = t - groups * first;
    const int per_m_block = groups * n_blocks();
    g = (u % per_m_block) / n_blocks();
    c = TileCoord{expected_blocks + u / per_m_block, u % n_blocks()};
  }

  DX_HOST_DEVICE TileWork work(int t) const {
    int g;
    TileCoord c;
    locate(t, g, c);
    TileWork w;
    w.m0 = c.m_block * kBlockM;
    w.n0 = c.n_block * block_n;
    w.out_group = g;
    w.group = g;
    w.a_row = w.m0;
    w.b_row = w.n0;
    w.sa_row = 0;
    w.kb_begin = 0;
    w.kb_end = k_blocks();
    w.rows = kBlockM;
    const int n_scale_blocks = static_cast<int>(ceil_div(n, kQuantGroup));
    if (kind == GemmKind::kMContiguous) {
      w.group = group_info[w.m0];  // the block's first row names its group (padding follows rows)
      if (w.group < 0) w.kb_end = 0;
    } else if (kind == GemmKind::kMMasked) {
      w.a_row = g * m + w.m0;
      w.sa_row = g * k_blocks();
      w.rows = group_info[g] - w.m0;
      if (w.rows <= 0) {
        w.rows = 0;
        w.kb_end = 0;
      }
    } else if (kind == GemmKind::kKGrouped) {
      w.kb_begin = group_info[g] / kBlockK;
      w.kb_end = group_info[g + 1] / kBlockK;
    }
    const int b_group = w.group < 0 ? 0 : w.group;
    if (kind == GemmKind::kMContiguous || kind == GemmKind::kMMasked) w.b_row += b_group * n;
    w.sb_block_row = b_group * n_scale_blocks + w.n0 / kQuantGroup;
    return w;
  }

  // Whether row r (0 <= r < kBlockM) of tile w holds a product; other rows are stored as zeros.
  DX_HOST_DEVICE bool row_computed(const TileWork& w, int r) const {
    if (r >= w.rows) return false;
    return kind != GemmKind::kMContiguous || group_info[w.m0 + r] == w.group;
  }
};

// Blocks of `size` along a dimension of `extent` elements.
DX_HOST_DEVICE int blocks_of(int64_t extent, int size) {
  return static_cast<int>(ceil_div(extent, size));
}

// Persistent grid: never more CTAs than tiles, never more than the SMs granted.
DX_HOST_DEVICE int persistent_ctas(int tiles, int num_sms) { return tiles < num_sms ? tiles : num_sms; }

// Tile width: 64 when 128-wide tiles would leave SMs idle (few tiles, or a poor last wave).
// Estimated time = waves x width, 64-wide tiles charged 25% more per column (A is read twice as
// often and the per-tile costs are spread over half the work).
DX_HOST_DEVICE int choose_block_n(int64_t m, int64_t n, int num_sms) {
  const int64_t m_blocks = ceil_div(m, kBlockM);
  const int64_t waves_wide = ceil_div(m_blocks * ceil_div(n, 128), num_sms);
  const int64_t waves_narrow = ceil_div(m_blocks * ceil_div(n, 64), num_sms);
  return waves_narrow * 64 * 5 < waves_wide * 128 * 4 ? 64 : 128;
}

}  // namespace dx::gemm
