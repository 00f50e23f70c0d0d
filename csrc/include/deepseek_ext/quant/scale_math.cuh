// Scale arithmetic and scale-layout index math of the numerics contract, shared by host and device.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "deepseek_ext/common.cuh"

namespace dx {

// Smallest power of two >= s for finite positive s (subnormals included); NaN and Inf pass
// through unchanged.
DX_HOST_DEVICE float round_up_pow2(float s) {
  uint32_t bits;
  memcpy(&bits, &s, sizeof(bits));
  const uint32_t exponent = (bits >> 23) & 0xffu;
  const uint32_t mantissa = bits & 0x7fffffu;
  if (exponent == 0xffu || mantissa == 0u) return s;
  if (exponent == 0u) {  // subnormal: the power of two above its mantissa (2^-126 at the top)
    uint32_t pow2 = 1u;
    while (pow2 < mantissa) pow2 <<= 1;
    bits = (bits & 0x80000000u) | pow2;
  } else {
    bits = (bits & 0x80000000u) | ((exponent + 1u) << 23);
  }
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

// x / s clamped to the e4m3 range; NaN survives the clamp so the cast yields NaN. The contract's
// formula (the kernels leave the clamp to cvt.rn.satfinite: tests/cpp/exact_division.cpp).
DX_HOST_DEVICE float scale_and_clamp(float x, float s) {
  const float v = x / s;
  return v > kFp8E4m3Max ? kFp8E4m3Max : (v < -kFp8E4m3Max ? -kFp8E4m3Max : v);
}

// True when the reciprocal path of divide_by_group_scale equals x / s: s and r = 1/s both normal
// (the error bounds that make the correction exact need a normal reciprocal); NaN fails both
// compares. Kernel scales are NaN, Inf, or in [1e-4 / 448, 2^120]: only NaN and Inf fail.
DX_HOST_DEVICE bool reciprocal_is_exact_enough(float s) { return s >= 0x1p-126f && s <= 0x1p126f; }

// A group's scale s = amax / 448 and its reciprocal (one true division per group).
struct GroupScale {
  float s, r;
  bool by_reciprocal;  // reciprocal_is_exact_enough(s): false only for the NaN/Inf scales of poisoned groups
};

// scale_from_amax with round_up_pow2 branch-free: the floor keeps s normal, where adding the
// mantissa mask carries into the exponent unless the mantissa is 0 (Inf stays Inf, NaN passes);
// tests/cpp/group_scale.cu checks it against scale_from_amax on every amax.
DX_HOST_DEVICE GroupScale group_scale(float amax, bool pow2_scale) {
  float s = (amax < kAmaxFloor ? kAmaxFloor : amax) / kFp8E4m3Max;
  uint32_t bits;
  memcpy(&bits, &s, sizeof(bits));
  const uint32_t up = (bits + 0x7fffffu) & 0xff800000u;
  if (pow2_scale && bits <= 0x7f800000u) memcpy(&s, &up, sizeof(s));
  return {s, 1.0f / s, reciprocal_is_exact_enough(s)};
}

// x / g.s as the e4m3 cast sees it, in three instructions per element (tests/cpp/exact_division.cpp
// checks every bf16 x and 10^8 random pairs against x / s): q0 = x * r corrected by one FMA step
// (Markstein) with the residual taken as q0 * s - x, so a zero x keeps its sign through both FMAs;
// for NaN/Inf scales (r = NaN or +0) s is replaced by 1 and the result is x * r, which is x / s
// there (NaN, or a zero with x's sign). Needs |x| <= the group's amax (no overflow of x * r).
DX_HOST_DEVICE float divide_by_group_scale(float x, const GroupScale& g) {
  const float s = g.by_reciprocal ? g.s : 1.0f;  // one select per group once inlined
#if defined(__CUDA_ARCH__)
  const float q0 = __fmul_rn(x, g.r);  // nvcc must not fuse it
#else
  const float q0 = x * g.r;  // the host builds compile with -ffp-contract=off
#endif
  const float minus_e = fmaf(q0, s, -x);  // -(x - q0*s): exact, as q0 is within an ulp of x/s
  return fmaf(-minus_e, g.r, q0);
}

// a / b for a >= 0, b > 0: 32-bit division when both fit (a 64-bit division costs the GPU
// several times more, and the kernels divide once per group).
DX_HOST_DEVICE int64_t quotient(int64_t a, int64_t b) {
  if ((static_cast<uint64_t>(a) | static_cast<uint64_t>(b)) <= 0xffffffffull)
    return static_cast<int64_t>(static_cast<uint32_t>(a) / static_cast<uint32_t>(b));
  return a / b;
}

// Offset of scale (row, group) in the M-major layout: per batch [groups][padded_rows], where
// rows are the flattened leading dims and each batch holds rows_per_batch of them.
DX_HOST_DEVICE int64_t m_major_scale_offset(int64_t row, int64_t group, int64_t rows_per_batch,
                                            int64_t padded_rows, int64_t num_groups) {
  const int64_t batch = quotient(row, rows_per_batch);
  return (batch * num_groups + group) * padded_rows + (row - batch * rows_per_batch);
}

// Strides (elements) of (block_rows x 128)-block scales stored at any layout: per batch, per
// block row, per 128 columns.
struct ScaleStrides {
  int64_t batch, row, col;
};

}  // namespace dx
