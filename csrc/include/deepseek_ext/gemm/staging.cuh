// Output staging layout for the TMA store: a consumer warpgroup's 64 x BLOCK_N tile is kept as
// strips of 64 rows x 128 bytes with the 128B swizzle (16-byte chunk index XOR row % 8), which is
// what a SWIZZLE_128B tensor map expects and keeps the fragment stores bank-conflict free.
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"
#include "deepseek_ext/gemm/config.cuh"

namespace dx::gemm {

DX_HOST_DEVICE constexpr int strip_cols(int out_bytes) { return kSwizzleBytes / out_bytes; }
DX_HOST_DEVICE constexpr int strips(int out_bytes, int block_n) { return block_n / strip_cols(out_bytes); }
DX_HOST_DEVICE constexpr int strip_bytes() { return kWgRows * kSwizzleBytes; }

// Byte offset of element (row, col) of the warpgroup's tile (row < 64, col < BLOCK_N).
DX_HOST_DEVICE uint32_t staging_offset(int row, int col, int out_bytes) {
  const int strip = col / strip_cols(out_bytes);
  const int byte = (col % strip_cols(out_bytes)) * out_bytes;
  const int chunk = (byte >> 4) ^ (row & 7);
  return static_cast<uint32_t>(strip * strip_bytes() + row * kSwizzleBytes + (chunk << 4) +
                               (byte & 15));
}

}  // namespace dx::gemm
