// Conversion wrappers: the only inline PTX for FP8 packing.
#pragma once
#include <cstdint>

namespace dx::ptx {

// Two fp32 -> two e4m3 (round to nearest even, saturating); `lo` lands in the low byte.
__device__ __forceinline__ uint16_t cvt_e4m3x2(float lo, float hi) {
  uint16_t out;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(out) : "f"(hi), "f"(lo));
  return out;
}

}  // namespace dx::ptx
