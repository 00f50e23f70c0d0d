// Permute: row r of the grouped layout = row row_token[r] of x (bf16 or e4m3, 16-byte copies)
// with its 1x128 scales (M-major in and out), zeros on padding rows (row_token -1).
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"
#include "deepseek_ext/ptx/ld.cuh"

namespace dx::permute {

constexpr int kCopyThreads = 256;
constexpr int kCopyWarps = kCopyThreads / 32;
constexpr int kCopyRowsPerCta = 32;  // a lane per row: a warp stores one scale column of all 32 rows at once
constexpr int kCopyBatch = 4;        // 16-byte loads in flight per lane before their stores

// x: [tokens, row_bytes / elem] contiguous; sx element (token, c) at sx[c * ld_sx + token] (or
// null); out, s_out likewise for `rows` rows. Each 32 rows: a warp per row copies the data, and
// warp w copies scale columns w, w + kCopyWarps, ... (M-major: 32 consecutive floats per store).
__global__ void __launch_bounds__(kCopyThreads)
    permute_rows_kernel(const uint8_t* __restrict__ x, int64_t row_bytes, const float* __restrict__ sx,
                        int64_t ld_sx, int scale_cols, const int* __restrict__ row_token, int64_t rows,
                        uint8_t* __restrict__ out, float* __restrict__ s_out, int64_t ld_s_out) {
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t vectors = row_bytes / 16;
  for (int64_t first = blockIdx.x * int64_t{kCopyRowsPerCta}; first < rows;
       first += int64_t{gridDim.x} * kCopyRowsPerCta) {
    for (int j = warp; j < kCopyRowsPerCta && first + j < rows; j += kCopyWarps) {
      const int token = row_token[first + j];
      const uint8_t* src = x + (token >= 0 ? token : 0) * row_bytes;
      uint4* dst = reinterpret_cast<uint4*>(out + (first + j) * row_bytes);
      for (int64_t v0 = lane; v0 < vectors; v0 += 32 * kCopyBatch) {
        uint4 batch[kCopyBatch];
#pragma unroll
        for (int b = 0; b < kCopyBatch; ++b) {
          const int64_t v = v0 + 32 * b;
          batch[b] = token >= 0 && v < vectors ? ptx::ld_nc_v4(src + v * 16) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int b = 0; b < kCopyBatch; ++b) {
          if (v0 + 32 * b < vectors) dst[v0 + 32 * b] = batch[b];
        }
      }
    }
    const int64_t lane_row = first + lane;
    if (sx != nullptr && lane_row < rows) {
      const int token = row_token[lane_row];
      for (int c = warp; c < scale_cols; c += kCopyWarps) {
        s_out[c * ld_s_out + lane_row] = token >= 0 ? sx[c * ld_sx + token] : 0.0f;
      }
    }
  }
}

}  // namespace dx::permute
