// Output staging layout for the TMA store: a consumer warpgroup's 64 x BLOCK_N tile is kept as
// boxes of 64 rows x box_bytes. Where the tile's rows are whole 128-byte strips the boxes are
// 128 bytes wide with the 128B swizzle (16-byte chunk index XOR row % 8), which is what a
// SWIZZLE_128B tensor map expects and keeps the fragment stores bank-conflict free; otherwise
// they are 16 bytes wide, unswizzled (8 rows of one fragment store are 128 contiguous bytes).
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"
#include "deepseek_ext/gemm/config.cuh"

namespace dx::gemm {

DX_HOST_DEVICE constexpr int store_box_bytes(int out_bytes, int block_n) {
  return block_n * out_bytes % kSwizzleBytes == 0 ? kSwizzleBytes : 16;
}
DX_HOST_DEVICE constexpr int box_cols(int out_bytes, int block_n) { return store_box_bytes(out_bytes, block_n) / out_bytes; }
DX_HOST_DEVICE constexpr int boxes(int out_bytes, int block_n) { return block_n / box_cols(out_bytes, block_n); }
DX_HOST_DEVICE constexpr int box_bytes_total(int out_bytes, int block_n) {
  return kWgRows * store_box_bytes(out_bytes, block_n);
}

// Byte offset of element (row, col) of the warpgroup's tile (row < 64, col < BLOCK_N).
DX_HOST_DEVICE uint32_t staging_offset(int row, int col, int out_bytes, int block_n) {
  const int width = store_box_bytes(out_bytes, block_n);
  const int box = col / box_cols(out_bytes, block_n);
  const int byte = (col % box_cols(out_bytes, block_n)) * out_bytes;
  const int chunk = width == kSwizzleBytes ? (byte >> 4) ^ (row & 7) : byte >> 4;
  return static_cast<uint32_t>(box * box_bytes_total(out_bytes, block_n) + row * width + (chunk << 4) +
                               (byte & 15));
}

}  // namespace dx::gemm
