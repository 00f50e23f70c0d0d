// Fused 1x128 cast in both orientations from one read of x [M, K]: q/s quantized along K
// (rows of the tile), qt/st = x^T quantized along M (columns of the tile). Each CTA stages one
// 128x128 tile in shared memory; both passes read the staged tile. Nothing is re-quantized and
// x is read once.
#pragma once
#include <cstdint>

#include "deepseek_ext/quant/scale_math.cuh"
#include "deepseek_ext/shared_memory.cuh"
#include "deepseek_ext/quant/store.cuh"
#include "deepseek_ext/quant/tile_load.cuh"

namespace dx {

template <typename T>
struct ColumnPack {
  static constexpr int kBytes = 8;                                   // one LDS.64 per row
  static constexpr int kCols = kBytes / static_cast<int>(sizeof(T));  // columns per pack
  static constexpr int kTasks = kTile / kCols * kColumnLanes / kTileThreads;  // per thread
};

template <typename T>
constexpr int cast_with_transpose_smem_bytes() {
  return kTile * TileShape<T>::kRowBytes;
}

// x: [rows, cols] (row stride ld_x); q: [rows, cols]; s: M-major [rows, ceil(cols/128)] with
// s_padded_rows; qt: [cols, rows]; st: M-major [cols, ceil(rows/128)] with st_padded_rows.
// rows and cols are multiples of 16. 3 CTAs per SM (80 registers) for both input types: the
// fetched tile is not kept in registers.
template <typename T>
__global__ void __launch_bounds__(kTileThreads, 3) cast_with_transpose_kernel(
    const T* __restrict__ x, int64_t ld_x, uint8_t* __restrict__ q, float* __restrict__ s,
    uint8_t* __restrict__ qt, float* __restrict__ st, int64_t rows, int64_t cols,
    int64_t s_padded_rows, int64_t st_padded_rows, bool pow2_scale) {
  using Shape = TileShape<T>;
  using Pack = ColumnPack<T>;
  uint8_t* tile_smem = dynamic_shared_memory<uint8_t>();
  const int64_t row_groups = ceil_div(rows, kTile), col_groups = ceil_div(cols, kTile);
  const TileCoord tile = tile_coord(blockIdx.x, row_groups, col_groups);
  const int64_t row0 = tile.row * kTile, col0 = tile.col * kTile;

  {
    uint4 raw[Shape::kLoads];
    fetch_tile(x, ld_x, row0, rows, col0, cols, raw);
    stage_tile<Shape::kChunks>(tile_smem, raw);
  }

  // Row pass: 1x128 along K. The kChunks lanes of one tile row are adjacent in a warp. Each
  // thread reads back only the chunks it staged itself (no barrier needed), so the fetched tile
  // does not stay live in registers.
  const int chunk = tile_load_chunk(threadIdx.x, Shape::kChunks);
  const int64_t col = col0 + chunk * Shape::kVec;
#pragma unroll
  for (int u = 0; u < Shape::kLoads; ++u) {
    const int row_in_tile = tile_load_row(threadIdx.x, u, Shape::kChunks);
    const int64_t row = row0 + row_in_tile;
    const uint4 staged = *reinterpret_cast<const uint4*>(
        tile_smem + tile_byte_offset(row_in_tile, chunk * kChunkBytes, Shape::kRowBytes));
    float v[Shape::kVec];
    unpack_to_float(x, staged, v);
    const GroupScale g = group_scale(lanes_abs_max<Shape::kChunks>(abs_max(v, 0.0f)), pow2_scale);
    if (row < rows && col < cols) quantize_store(q + row * cols + col, v, g);
    if (chunk == 0 && row < rows) s[m_major_scale_offset(row, tile.col, rows, s_padded_rows, col_groups)] = g.s;
  }
  __syncthreads();

  // Column pass: 1x128 along M. A task walks 16 rows of one pack of columns; the 8 tasks of a
  // pack are adjacent lanes, so the column amax is a shuffle. Each output is a 16-byte store.
#pragma unroll
  for (int j = 0; j < Pack::kTasks; ++j) {
    const int task = threadIdx.x + j * kTileThreads;
    const int r0 = column_task_row0(task), pack = column_task_pack(task);
    float c[Pack::kCols][kColumnRowsPerLane];
#pragma unroll
    for (int i = 0; i < kColumnRowsPerLane; ++i) {
      const uint2 raw = *reinterpret_cast<const uint2*>(
          tile_smem + tile_byte_offset(r0 + i, pack * Pack::kBytes, Shape::kRowBytes));
      float w[Pack::kCols];
      unpack_to_float(x, raw, w);
#pragma unroll
      for (int p = 0; p < Pack::kCols; ++p) c[p][i] = w[p];
    }
    const int64_t row = row0 + r0;
#pragma unroll
    for (int p = 0; p < Pack::kCols; ++p) {
      const int64_t col = col0 + pack * Pack::kCols + p;
      const GroupScale g = group_scale(lanes_abs_max<kColumnLanes>(abs_max(c[p], 0.0f)), pow2_scale);
      if (col < cols && row < rows) quantize_store(qt + col * rows + row, c[p], g);
      if (r0 == 0 && col < cols) st[m_major_scale_offset(col, tile.row, cols, st_padded_rows, row_groups)] = g.s;
    }
  }
}

}  // namespace dx
