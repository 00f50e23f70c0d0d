// 1x128 per-token FP8 cast: each group of 128 contiguous elements of a row gets one fp32 scale,
// written in the GEMM's M-major scale layout.
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"
#include "deepseek_ext/quant/scale_math.cuh"
#include "deepseek_ext/vec.cuh"

namespace dx {

// One thread per 16-byte input vector; the kLanes threads of a group sit in one warp and
// reduce the amax with shuffles, so one pass over x produces q and s.
template <typename T>
__global__ void __launch_bounds__(256) per_token_cast_to_fp8_kernel(
    const T* __restrict__ x, int64_t ld_x, uint8_t* __restrict__ q, float* __restrict__ s,
    int64_t rows, int64_t cols, int64_t rows_per_batch, int64_t padded_rows, bool pow2_scale) {
  constexpr int kVec = Vec16<T>::kElems;
  constexpr int kLanes = kQuantGroup / kVec;  // 16 for bf16, 32 for fp32
  const int64_t num_groups = ceil_div(cols, kQuantGroup);
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t group = thread / kLanes;
  const int lane = static_cast<int>(thread % kLanes);
  if (group >= rows * num_groups) return;  // whole groups exit together: shuffle masks stay valid
  const int64_t row = group / num_groups;
  const int64_t g = group - row * num_groups;
  const int64_t col = g * kQuantGroup + static_cast<int64_t>(lane) * kVec;
  const bool in_range = col < cols;  // cols is a multiple of kVec, so vectors never straddle

  float v[kVec];
  float amax = 0.0f;
  if (in_range) {
    load16_as_float(x + row * ld_x + col, v);
#pragma unroll
    for (int i = 0; i < kVec; ++i) amax = nan_max(amax, fabsf(v[i]));
  }
  const unsigned mask = kLanes == 32 ? 0xffffffffu : (0xffffu << (threadIdx.x & 16u));
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2)
    amax = nan_max(amax, __shfl_xor_sync(mask, amax, offset));

  const float scale = scale_from_amax(amax, pow2_scale);
  if (in_range) {
#pragma unroll
    for (int i = 0; i < kVec; ++i) v[i] = scale_and_clamp(v[i], scale);
    store_e4m3<kVec>(q + row * cols + col, v);
  }
  if (lane == 0) s[m_major_scale_offset(row, g, rows_per_batch, padded_rows, num_groups)] = scale;
}

}  // namespace dx
