// 128x128 per-block FP8 cast: one CTA per block, one fp32 scale per block.
#pragma once
#include <cstdint>

#include "deepseek_ext/quant/scale_math.cuh"
#include "deepseek_ext/quant/store.cuh"
#include "deepseek_ext/quant/tile_load.cuh"

namespace dx {

// x: batches of [rows_per_batch, cols] (row stride ld_x); q: same shape, contiguous;
// s: [batch, tile_rows, tile_cols] contiguous, indexed by the CTA's tile number.
template <typename T>
__global__ void __launch_bounds__(kTileThreads, kTileMinBlocks<T>) per_block_cast_to_fp8_kernel(
    const T* __restrict__ x, int64_t ld_x, uint8_t* __restrict__ q, float* __restrict__ s,
    int64_t rows_per_batch, int64_t cols, int64_t tile_rows, int64_t tile_cols, bool pow2_scale) {
  using Shape = TileShape<T>;
  __shared__ float warp_amax[kTileThreads / 32];
  const TileCoord tile = tile_coord(blockIdx.x, tile_rows, tile_cols);
  const int64_t batch_row0 = tile.batch * rows_per_batch;
  const int64_t row0 = batch_row0 + tile.row * kTile;
  const int64_t col0 = tile.col * kTile;

  uint4 raw[Shape::kLoads];
  fetch_tile(x, ld_x, row0, batch_row0 + rows_per_batch, col0, cols, raw);
  float amax = 0.0f;
#pragma unroll
  for (int u = 0; u < Shape::kLoads; ++u) {
    float v[Shape::kVec];
    unpack_to_float(x, raw[u], v);
    amax = abs_max(v, amax);
  }
  amax = lanes_abs_max<32>(amax);
  if (threadIdx.x % 32 == 0) warp_amax[threadIdx.x / 32] = amax;
  __syncthreads();
#pragma unroll
  for (int w = 0; w < kTileThreads / 32; ++w) amax = ptx::max_nan(amax, warp_amax[w]);
  const GroupScale g = group_scale(amax, pow2_scale);

  const int64_t col = col0 + tile_load_chunk(threadIdx.x, Shape::kChunks) * Shape::kVec;
#pragma unroll
  for (int u = 0; u < Shape::kLoads; ++u) {
    const int64_t in_tile = tile.row * kTile + tile_load_row(threadIdx.x, u, Shape::kChunks);
    float v[Shape::kVec];
    unpack_to_float(x, raw[u], v);
    if (in_tile < rows_per_batch && col < cols) quantize_store(q + (batch_row0 + in_tile) * cols + col, v, g);
  }
  if (threadIdx.x == 0) s[blockIdx.x] = g.s;
}

}  // namespace dx
