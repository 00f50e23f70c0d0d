// Persistent tile scheduler: CTA `cta` of `ctas` walks tiles cta, cta+ctas, ...; tile indices
// map to (m_block, n_block) in groups of `group_m` M blocks so that CTAs running at the same
// time share A rows and B columns in L2. TileSchedule maps a tile index of any GemmKind (dense
// or one of the grouped MoE forms) to the rows, columns, groups and K blocks it covers; with
// 2-CTA clusters, tiles 2p and 2p+1 (the two CTAs of a cluster) share their A or B tile.
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"
#include "deepseek_ext/gemm/config.cuh"
#include "deepseek_ext/ptx/trap.cuh"

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
  kMMasked = 2,      // groups [G, Mmax]: only the first masked_m[g] rows of group g are computed and written
  kKGrouped = 3,     // groups along K: output g contracts over K blocks [offsets[g], offsets[g+1]) / 128
};

constexpr int kContiguousBlockRows = 128;  // kMContiguous: m_indices name one group per 128-row block

// What one tile computes. Rows of the output are group-local (the output is [out_groups, m, n]).
struct TileWork {
  int group;         // group of B and its scales (-1: a contiguous padding block, all zeros)
  int out_group;     // output group the tile is stored to (third coordinate of the D map)
  int m0, n0;        // first row / column of the tile in its output group
  int a_row, b_row;  // first rows of the tile in the 2-D maps of A [rows, K] and B [rows, K]
  int sa_row;        // row of A's scale map [rows = K blocks (x groups), M] holding K block 0
  int sb_block_row;  // row of the 128x128 B scales [groups x ceil(N/128), Kb] for this tile
  int sb_block_rows; // ... and how many rows from there belong to the tile's columns (1..3)
  int kb_begin, kb_end;  // K blocks to accumulate (empty: the tile is zero, or c)
  int rows;          // rows of the tile that are computed; kMMasked writes no row past them
};

// Where a CTA's walk over the masked tiles stands: the tiles of groups before `group` number
// `first_tile`; group `group` has `m_blocks` M blocks holding rows < masked_m.
struct TileCursor {
  int group = 0;
  int first_tile = 0;
  int m_blocks = -1;  // not yet read
};

// The tile schedule of every GemmKind. group_info is read on the device (and by host tests):
// kMContiguous: m_indices [m] (group of each row in [0, b_groups), -1 on padding; one group per
// 128-row block, its rows first); kMMasked: masked_m [groups] (each in [0, m]); kKGrouped: K
// offsets [groups + 1] (multiples of 128, offsets[groups] == k, made by the host). m is the rows
// of one output group (kMMasked: Mmax), k the contraction length (kKGrouped: the total). The
// m_indices and masked_m values are checked where they are read: a bad one fails the launch
// (ptx/trap.cuh; the kernel's roles end with ptx::trap_on_index_fault()).
struct TileSchedule {
  GemmKind kind;
  int m, n, k;
  int groups;           // 1 for kDense and kMContiguous
  int block_m, block_n;
  int group_m;          // rasterization: M blocks per L2 group (>= 1)
  Multicast multicast;  // kDense only: tiles 2p, 2p+1 share A (differ in N) or B (differ in M)
  const int* group_info;
  int b_groups;         // kMContiguous: groups of B

  DX_HOST_DEVICE int m_blocks() const { return static_cast<int>(ceil_div(m, block_m)); }
  DX_HOST_DEVICE int n_blocks() const { return static_cast<int>(ceil_div(n, block_n)); }
  DX_HOST_DEVICE int k_blocks() const { return static_cast<int>(ceil_div(k, kBlockK)); }
  // Every tile of every kind but kMMasked, whose walk (next) visits only the M blocks holding rows.
  DX_HOST_DEVICE int tiles() const { return groups * m_blocks() * n_blocks(); }

  // Rows of masked group g: masked_m[g] (a bad one is recorded, and clamped so that nothing is
  // read or written out of bounds before the launch fails).
  DX_HOST_DEVICE int masked_rows(int g) const {
    const int rows = group_info[g];
    if (rows >= 0 && rows <= m) return rows;
    ptx::record_index_fault(ptx::IndexFault::kRange, "masked_m", g, rows, 0, m);
    return rows < 0 ? 0 : m;
  }

  // M blocks of masked group g that hold rows.
  DX_HOST_DEVICE int masked_m_blocks(int g) const { return static_cast<int>(ceil_div(masked_rows(g), block_m)); }

  // The group of contiguous row `row`: m_indices[row] (a bad one is recorded, and read as
  // padding so that nothing is read out of bounds before the launch fails).
  DX_HOST_DEVICE int contiguous_group(int row) const {
    const int group = group_info[row];
    if (group >= -1 && group < b_groups) return group;
    ptx::record_index_fault(ptx::IndexFault::kRange, "m_indices", row, group, -1, b_groups - 1);
    return -1;
  }

  // Tile t of this CTA's walk (t ascending between calls with one cursor): false past the last.
  DX_HOST_DEVICE bool next(int t, TileCursor& cursor, TileWork& w) const {
    int g;
    TileCoord c;
    if (kind == GemmKind::kMMasked) {
      while (true) {
        if (cursor.group >= groups) return false;
        if (cursor.m_blocks < 0) cursor.m_blocks = masked_m_blocks(cursor.group);
        const int count = cursor.m_blocks * n_blocks();
        if (t < cursor.first_tile + count) break;
        cursor.first_tile += count;
        cursor.group += 1;
        cursor.m_blocks = -1;
      }
      g = cursor.group;
      c = TileGrid{cursor.m_blocks, n_blocks(), group_m}.coord(t - cursor.first_tile);
    } else {
      if (t >= tiles()) return false;
      const int per_group = m_blocks() * n_blocks();
      g = t / per_group;
      c = coord(t - g * per_group);
    }
    w = work(g, c);
    return true;
  }

  // (m block, n block) of tile t of a group; a cluster's pair of tiles differs in one of them.
  DX_HOST_DEVICE TileCoord coord(int t) const {
    if (multicast == Multicast::kNone) return TileGrid{m_blocks(), n_blocks(), group_m}.coord(t);
    const int rank = t & 1;  // = %cluster_ctarank: 1-D grid, clusters (2,1,1), gridDim.x even
    if (multicast == Multicast::kA) {
      const TileCoord pair = TileGrid{m_blocks(), n_blocks() / 2, group_m}.coord(t >> 1);
      return {pair.m_block, 2 * pair.n_block + rank};
    }
    const int pair_group_m = group_m > 1 ? group_m / 2 : 1;
    const TileCoord pair = TileGrid{m_blocks() / 2, n_blocks(), pair_group_m}.coord(t >> 1);
    return {2 * pair.m_block + rank, pair.n_block};
  }

  DX_HOST_DEVICE TileWork work(int g, TileCoord c) const {
    TileWork w;
    w.m0 = c.m_block * block_m;
    w.n0 = c.n_block * block_n;
    w.out_group = g;
    w.group = g;
    w.a_row = w.m0;
    w.b_row = w.n0;
    w.sa_row = 0;
    w.kb_begin = 0;
    w.kb_end = k_blocks();
    w.rows = block_m;
    const int n_scale_blocks = static_cast<int>(ceil_div(n, kQuantGroup));
    if (kind == GemmKind::kMContiguous) {
      w.group = contiguous_group(w.m0);  // the tile's first row names its group (padding follows rows)
      if (w.group < 0) w.kb_end = 0;
    } else if (kind == GemmKind::kMMasked) {
      w.a_row = g * m + w.m0;
      w.sa_row = g * k_blocks();
      const int rows = masked_rows(g) - w.m0;
      w.rows = rows < block_m ? rows : block_m;
    } else if (kind == GemmKind::kKGrouped) {
      w.kb_begin = group_info[g] / kBlockK;
      w.kb_end = group_info[g + 1] / kBlockK;
    }
    const int b_group = w.group < 0 ? 0 : w.group;
    if (kind == GemmKind::kMContiguous || kind == GemmKind::kMMasked) w.b_row += b_group * n;
    w.sb_block_row = b_group * n_scale_blocks + w.n0 / kQuantGroup;
    const int last_col = (w.n0 + block_n < n ? w.n0 + block_n : n) - 1;
    w.sb_block_rows = last_col / kQuantGroup - w.n0 / kQuantGroup + 1;
    return w;
  }

  // Whether row r (0 <= r < block_m) of tile w holds a product; other rows are stored as zeros
  // (kMContiguous) or not at all (kMMasked). A contiguous row's group is checked: in range, and
  // -1 or its 128-row block's group, after no -1 of the block (a block whose first row is out of
  // range is that row's fault, not its other rows').
  DX_HOST_DEVICE bool row_computed(const TileWork& w, int r) const {
    if (r >= w.rows) return false;
    if (kind != GemmKind::kMContiguous) return true;
    const int row = w.m0 + r, group = contiguous_group(row);
    if (group != -1) {
      const int block_row = row / kContiguousBlockRows * kContiguousBlockRows, first = group_info[block_row];
      if (first >= -1 && first < b_groups) {
        if (group != first) {
          ptx::record_index_fault(ptx::IndexFault::kMixedBlock, "m_indices", row, group, block_row, first);
        } else if (row != block_row && group_info[row - 1] == -1) {
          ptx::record_index_fault(ptx::IndexFault::kAfterPadding, "m_indices", row, group, block_row, first);
        }
      }
    }
    return group == w.group;
  }
};

// Blocks of `size` along a dimension of `extent` elements.
DX_HOST_DEVICE int blocks_of(int64_t extent, int size) {
  return static_cast<int>(ceil_div(extent, size));
}

// Persistent grid: never more CTAs than tiles, never more than the SMs granted, whole clusters.
DX_HOST_DEVICE int persistent_ctas(int tiles, int num_sms, int cluster = 1) {
  const int ctas = tiles < num_sms ? tiles : num_sms;
  return ctas / cluster * cluster;
}

}  // namespace dx::gemm
