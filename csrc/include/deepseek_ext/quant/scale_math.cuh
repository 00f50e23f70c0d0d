// Scale arithmetic and scale-layout index math of the numerics contract, shared by host and device.
#pragma once
#include <cstdint>
#include <cstring>

#include "deepseek_ext/common.cuh"

namespace dx {

// max() that propagates NaN from either side (fmaxf drops it, which would hide poisoned groups).
DX_HOST_DEVICE float nan_max(float a, float b) { return (a != a || a > b) ? a : b; }

// Smallest power of two >= s for finite positive s; NaN and Inf pass through unchanged.
DX_HOST_DEVICE float round_up_pow2(float s) {
  uint32_t bits;
  memcpy(&bits, &s, sizeof(bits));
  const uint32_t exponent = (bits >> 23) & 0xffu;
  if (exponent == 0xffu || (bits & 0x7fffffu) == 0u) return s;
  bits = (exponent + 1u) << 23;
  float out;
  memcpy(&out, &bits, sizeof(out));
  return out;
}

// s = max(amax, 1e-4) / 448 with true division; NaN amax stays NaN (comparisons with NaN are false).
DX_HOST_DEVICE float scale_from_amax(float amax, bool pow2_scale) {
  const float clamped = amax < kAmaxFloor ? kAmaxFloor : amax;
  const float s = clamped / kFp8E4m3Max;
  return pow2_scale ? round_up_pow2(s) : s;
}

// x / s clamped to the e4m3 range; NaN survives the clamp so the cast yields NaN.
DX_HOST_DEVICE float scale_and_clamp(float x, float s) {
  const float v = x / s;
  return v > kFp8E4m3Max ? kFp8E4m3Max : (v < -kFp8E4m3Max ? -kFp8E4m3Max : v);
}

// Offset of scale (row, group) in the M-major layout: per batch [groups][padded_rows], where
// rows are the flattened leading dims and each batch holds rows_per_batch of them.
DX_HOST_DEVICE int64_t m_major_scale_offset(int64_t row, int64_t group, int64_t rows_per_batch,
                                            int64_t padded_rows, int64_t num_groups) {
  const int64_t batch = row / rows_per_batch;
  return (batch * num_groups + group) * padded_rows + (row - batch * rows_per_batch);
}

}  // namespace dx
