// Index math of the 128x128-tile kernels (per-block cast, cast with transpose, FP8 transpose),
// shared by host and device so it can be tested on the CPU.
//
// A tile is staged in shared memory row by row in 16-byte chunks. Chunk c of row r is stored at
// chunk position c ^ ((r / 16) % 8): the column pass has 8 lanes read the same column 16 rows
// apart, and the swizzle sends those 8 rows to 8 different bank groups.
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"

namespace dx {

constexpr int kTile = kQuantGroup;  // tile edge: one quantization group / one 128x128 block
constexpr int kTileThreads = 256;
constexpr int kChunkBytes = 16;
constexpr int kColumnRowsPerLane = 16;                         // rows one lane walks down a column
constexpr int kColumnLanes = kTile / kColumnRowsPerLane;       // lanes that share one column (8)

DX_HOST_DEVICE int tile_swizzled_chunk(int row, int chunk) { return chunk ^ ((row >> 4) & 7); }

// Byte offset of byte `col_byte` of tile row `row` in the staged tile (row_bytes per row).
DX_HOST_DEVICE int tile_byte_offset(int row, int col_byte, int row_bytes) {
  return row * row_bytes + tile_swizzled_chunk(row, col_byte / kChunkBytes) * kChunkBytes +
         col_byte % kChunkBytes;
}

// Row pass: thread `thread` moves chunk tile_load_chunk of row tile_load_row(.., u) for
// u = 0 .. chunks_per_row / 2 - 1 (a warp covers whole rows: coalesced 16-byte accesses).
DX_HOST_DEVICE int tile_load_chunk(int thread, int chunks_per_row) { return thread % chunks_per_row; }
DX_HOST_DEVICE int tile_load_row(int thread, int u, int chunks_per_row) {
  return thread / chunks_per_row + (kTileThreads / chunks_per_row) * u;
}

// Column pass: task `task` reads rows column_task_row0 .. +15 of column pack column_task_pack
// (a pack is the few adjacent columns held in one 4- or 8-byte shared-memory word). The 8 tasks
// of one pack are adjacent lanes of a warp, so a column's amax is a 3-step shuffle.
DX_HOST_DEVICE int column_task_row0(int task) { return (task % kColumnLanes) * kColumnRowsPerLane; }
DX_HOST_DEVICE int column_task_pack(int task) { return task / kColumnLanes; }

// Tile `tile` of a batch of [rows, cols] matrices in row-major tile order: (batch, tile row, tile col).
struct TileCoord {
  int64_t batch, row, col;
};
DX_HOST_DEVICE TileCoord tile_coord(int64_t tile, int64_t tile_rows, int64_t tile_cols) {
  const int64_t per_batch = tile_rows * tile_cols;
  const int64_t batch = tile / per_batch;
  const int64_t in_batch = tile - batch * per_batch;
  return {batch, in_batch / tile_cols, in_batch % tile_cols};
}

}  // namespace dx
