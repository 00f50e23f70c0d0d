// max.NaN: the larger input, or NaN when either is NaN (fmaxf would drop a NaN and hide a
// poisoned group). The DX_EMULATE branch is its host twin (PTX ISA "max": .NaN variant).
#pragma once
#include <cstdint>
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

// Per 16-bit half of two bf16 pairs: max(|a|, |b|) with sign bit a ^ b, or the canonical NaN 0x7fff
// when either is NaN (max.NaN.xorsign.abs.bf16x2): a pair's amax in one instruction, sign masked later.
__device__ __forceinline__ uint32_t max_nan_xorsign_abs_bf16x2(uint32_t a, uint32_t b) {
#if defined(DX_EMULATE)
  uint32_t d = 0;
  for (int shift = 0; shift < 32; shift += 16) {
    const uint32_t x = (a >> shift) & 0xffffu, y = (b >> shift) & 0xffffu;
    const uint32_t mx = x & 0x7fffu, my = y & 0x7fffu;  // magnitudes order as integers; above 0x7f80: NaN
    const uint32_t half = mx > 0x7f80u || my > 0x7f80u ? 0x7fffu : ((x ^ y) & 0x8000u) | (mx > my ? mx : my);
    d |= half << shift;
  }
  return d;
#else
  uint32_t d;
  asm("max.NaN.xorsign.abs.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
#endif
}

}  // namespace dx::ptx
