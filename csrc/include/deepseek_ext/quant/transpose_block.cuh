// Exact transpose of a 128x128-block-scaled FP8 matrix: bytes move, nothing is re-quantized.
// One CTA per 128x128 tile: 16-byte loads into a swizzled shared-memory tile, then each thread
// reads a 4-column x 16-row patch as 16 words, transposes the bytes, and writes 4 16-byte rows.
#pragma once
#include <cstdint>

#include "deepseek_ext/quant/tile.cuh"
#include "deepseek_ext/vec.cuh"

namespace dx {

constexpr int kFp8RowBytes = kTile;                          // one byte per element
constexpr int kFp8Chunks = kFp8RowBytes / kChunkBytes;       // 8 chunks per tile row
constexpr int kFp8Loads = kTile * kFp8Chunks / kTileThreads;  // 4 chunks per thread
constexpr int kFp8PackCols = 4;                              // columns per 32-bit pack

// Byte `b` of each of words w0..w3, packed low to high.
__device__ __forceinline__ uint32_t gather_byte(uint32_t w0, uint32_t w1, uint32_t w2, uint32_t w3, int b) {
  const uint32_t lo = __byte_perm(w0, w1, b | ((b + 4) << 4));  // [w0.b, w1.b] in bytes 0, 1
  const uint32_t hi = __byte_perm(w2, w3, b | ((b + 4) << 4));
  return __byte_perm(lo, hi, 0x5410);
}

// q: batches of [rows, cols] e4m3 (contiguous), s: [batch, tile_rows, tile_cols] contiguous;
// qt: [batch, cols, rows], st: [batch, tile_cols, tile_rows]. rows and cols are multiples of 16.
__global__ void __launch_bounds__(kTileThreads) transpose_block_fp8_kernel(
    const uint8_t* __restrict__ q, const float* __restrict__ s, uint8_t* __restrict__ qt,
    float* __restrict__ st, int64_t rows, int64_t cols, int64_t tile_rows, int64_t tile_cols) {
  __shared__ __align__(16) uint8_t tile_smem[kTile * kFp8RowBytes];
  const TileCoord tile = tile_coord(blockIdx.x, tile_rows, tile_cols);
  const int64_t row0 = tile.row * kTile, col0 = tile.col * kTile;
  const uint8_t* src = q + tile.batch * rows * cols;

  const int chunk = tile_load_chunk(threadIdx.x, kFp8Chunks);
  const int64_t col = col0 + chunk * kChunkBytes;
  uint4 raw[kFp8Loads];
#pragma unroll
  for (int u = 0; u < kFp8Loads; ++u) {
    const int64_t row = row0 + tile_load_row(threadIdx.x, u, kFp8Chunks);
    raw[u] = row < rows && col < cols ? ptx::ld_nc_v4(src + row * cols + col) : make_uint4(0, 0, 0, 0);
  }
#pragma unroll
  for (int u = 0; u < kFp8Loads; ++u) {
    const int offset = tile_byte_offset(tile_load_row(threadIdx.x, u, kFp8Chunks), chunk * kChunkBytes, kFp8RowBytes);
    *reinterpret_cast<uint4*>(tile_smem + offset) = raw[u];
  }
  if (threadIdx.x == 0) {
    st[(tile.batch * tile_cols + tile.col) * tile_rows + tile.row] =
        s[(tile.batch * tile_rows + tile.row) * tile_cols + tile.col];
  }
  __syncthreads();

  // One task per thread: 4 columns (pack) x 16 rows starting at r0.
  const int r0 = column_task_row0(threadIdx.x), pack = column_task_pack(threadIdx.x);
  uint32_t words[kColumnRowsPerLane];
#pragma unroll
  for (int i = 0; i < kColumnRowsPerLane; ++i)
    words[i] = *reinterpret_cast<const uint32_t*>(tile_smem + tile_byte_offset(r0 + i, pack * kFp8PackCols, kFp8RowBytes));
  const int64_t row = row0 + r0;
  uint8_t* dst = qt + tile.batch * rows * cols;
#pragma unroll
  for (int b = 0; b < kFp8PackCols; ++b) {
    const int64_t out_row = col0 + pack * kFp8PackCols + b;  // a column of q is a row of qt
    if (out_row < cols && row < rows) {
      *reinterpret_cast<uint4*>(dst + out_row * rows + row) =
          make_uint4(gather_byte(words[0], words[1], words[2], words[3], b),
                     gather_byte(words[4], words[5], words[6], words[7], b),
                     gather_byte(words[8], words[9], words[10], words[11], b),
                     gather_byte(words[12], words[13], words[14], words[15], b));
    }
  }
}

}  // namespace dx
