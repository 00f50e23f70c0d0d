// Dequantization: out = q * s with s broadcast over (block_rows x 128) blocks, s at any strides.
#pragma once
#include <cuda_bf16.h>
#include <cstdint>

#include "deepseek_ext/common.cuh"
#include "deepseek_ext/quant/scale_math.cuh"
#include "deepseek_ext/vec.cuh"

namespace dx {

constexpr int kDequantVec = 16;  // e4m3 elements per thread: one 16-byte load

// Stores 16 dequantized values at p (16-byte aligned) as fp32 (4 stores) or bf16 (2 stores).
__device__ __forceinline__ void store_dequantized(float* p, const float (&v)[kDequantVec]) {
#pragma unroll
  for (int i = 0; i < kDequantVec; i += 4)
    *reinterpret_cast<float4*>(p + i) = make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]);
}

__device__ __forceinline__ void store_dequantized(__nv_bfloat16* p, const float (&v)[kDequantVec]) {
  uint32_t words[kDequantVec / 2];
#pragma unroll
  for (int i = 0; i < kDequantVec / 2; ++i) {
    const __nv_bfloat162 pair = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
    words[i] = *reinterpret_cast<const uint32_t*>(&pair);
  }
  *reinterpret_cast<uint4*>(p) = make_uint4(words[0], words[1], words[2], words[3]);
  *reinterpret_cast<uint4*>(p + 8) = make_uint4(words[4], words[5], words[6], words[7]);
}

// q, out: [rows, cols] contiguous (rows = flattened leading dims); cols a multiple of 16.
template <typename Out>
__global__ void __launch_bounds__(256) dequantize_kernel(
    const uint8_t* __restrict__ q, const float* __restrict__ s, Out* __restrict__ out, int64_t rows,
    int64_t cols, int64_t rows_per_batch, int64_t block_rows, ScaleStrides scale_strides) {
  const int64_t vec = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t vecs_per_row = cols / kDequantVec;
  const int64_t row = quotient(vec, vecs_per_row);
  if (row >= rows) return;
  const int64_t col = (vec - row * vecs_per_row) * kDequantVec;
  const uint4 raw = ptx::ld_nc_v4(q + row * cols + col);
  const float scale = s[block_scale_offset(row, col, rows_per_batch, block_rows, scale_strides)];
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
  float v[kDequantVec];
#pragma unroll
  for (int i = 0; i < 4; ++i) e4m3x4_to_float(words[i], v + 4 * i);
#pragma unroll
  for (int i = 0; i < kDequantVec; ++i) v[i] *= scale;
  store_dequantized(out + row * cols + col, v);
}

}  // namespace dx
