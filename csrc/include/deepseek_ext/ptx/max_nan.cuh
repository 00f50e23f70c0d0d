// max.NaN: the larger input, or NaN when either is NaN (fmaxf would drop a NaN and hide a
// poisoned group). The DX_EMULATE branch is its host twin (PTX ISA "max": .NaN variant).
#pragma once
#include <limits>

namespace dx::ptx {

__device__ __forceinline__ float max_nan(float a, float b) {
#if defined(DX_EMULATE)
  return a != a || b != b ? std::numeric_limits<float>::quiet_NaN() : (a > b ? a : b);
#else
  float d;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
  return d;
#endif
}

}  // namespace dx::ptx
