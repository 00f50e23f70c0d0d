// Conversion wrappers: the only inline PTX for FP8 packing and unpacking. Each DX_EMULATE
// branch is the host twin (csrc/emu/fp8.cpp models the ISA's conversions).
#pragma once
#include <cstdint>

namespace dx::ptx {

// Two fp32 -> two e4m3 (round to nearest even, saturating); `lo` lands in the low byte.
__device__ __forceinline__ uint16_t cvt_e4m3x2(float lo, float hi) {
#if defined(DX_EMULATE)
  return emu::cvt_e4m3x2(lo, hi);
#else
  uint16_t out;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(out) : "f"(hi), "f"(lo));
  return out;
#endif
}

// Two e4m3 (low byte first) -> two f16 packed in one word (exact: every e4m3 value, NaN
// included, is representable in f16).
__device__ __forceinline__ uint32_t cvt_e4m3x2_to_f16x2(uint16_t pair) {
#if defined(DX_EMULATE)
  return emu::cvt_e4m3x2_to_f16x2(pair);
#else
  uint32_t out;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(out) : "h"(pair));
  return out;
#endif
}

}  // namespace dx::ptx
