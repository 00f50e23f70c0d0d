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

// True when divide_by_scale may replace x / s: s and r = 1/s are both normal, s in [2^-126, 2^126]
// (the error bounds that make the correction exact need a normal reciprocal); NaN fails both
// compares, so NaN, Inf, zero, subnormal and negative scales take the true division.
DX_HOST_DEVICE bool reciprocal_is_exact_enough(float s) { return s >= 0x1p-126f && s <= 0x1p126f; }

// x / s bit-identical to the IEEE division, from r = 1/s (true division, once per group): one
// multiply and two FMAs instead of a division per element. Needs reciprocal_is_exact_enough(s) and
// no overflow of x * r (the kernels have |x| <= amax, so |x / s| <~ 448); NaN x gives NaN.
DX_HOST_DEVICE float divide_by_scale(float x, float s, float r) {
#if defined(__CUDA_ARCH__)
  const float q0 = __fmul_rn(x, r);  // rounded product, within ~1 ulp of x/s; nvcc must not fuse it
#else
  const float q0 = x * r;  // the host builds compile with -ffp-contract=off
#endif
  const float e = fmaf(-q0, s, x);  // residual x - q0*s: exact (q0 ~ x/s) unless |x| < ~2^-100, e4m3 0 there
  const float q = fmaf(e, r, q0);   // Markstein correction: RN(q0 + e*r) == RN(x/s)
  return copysignf(q, x);           // x = -0 gives +0 above (-0 + +0 = +0); x/s has the sign of x
}

// A group's scale s = amax / 448 and its reciprocal (one true division per group).
struct GroupScale {
  float s, r;
  bool by_reciprocal;  // reciprocal_is_exact_enough(s): false only for the NaN/Inf scales of poisoned groups
};

DX_HOST_DEVICE GroupScale group_scale(float amax, bool pow2_scale) {
  const float s = scale_from_amax(amax, pow2_scale);
  return {s, 1.0f / s, reciprocal_is_exact_enough(s)};
}

// x / g.s with no division (tests/cpp/exact_division.cpp checks every case against x / s): the
// corrected product, or for NaN/Inf scales x * (1/s), which is what x / s gives there (NaN, +-0).
DX_HOST_DEVICE float divide_by_group_scale(float x, const GroupScale& g) {
  return g.by_reciprocal ? divide_by_scale(x, g.s, g.r) : x * g.r;
}

// divide_by_group_scale in three instructions, with no per-element branch or sign fix: the residual
// is taken with the opposite sign (q0 * s - x), so a zero x keeps its sign through both FMAs, and a
// NaN or Inf scale (r = NaN or +0) puts 1 in the residual for s, where the correction then gives
// x * r (NaN, or a zero with x's sign). Same values as divide_by_group_scale up to the sign of a NaN
// (tests/cpp/exact_division.cpp checks the e4m3 bytes against x / s).
DX_HOST_DEVICE float divide_by_group_scale_fma(float x, const GroupScale& g) {
  const float s = g.by_reciprocal ? g.s : 1.0f;  // one select per group once inlined
#if defined(__CUDA_ARCH__)
  const float q0 = __fmul_rn(x, g.r);  // nvcc must not fuse it
#else
  const float q0 = x * g.r;  // the host builds compile with -ffp-contract=off
#endif
  const float minus_e = fmaf(q0, s, -x);  // -(x - q0*s): exact where divide_by_scale's residual is
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

// Where the scale of element (row, col) of a batch of [rows_per_batch, cols] matrices lives,
// for scales of (block_rows x 128) blocks stored at any strides.
struct ScaleStrides {
  int64_t batch, row, col;
};
DX_HOST_DEVICE int64_t block_scale_offset(int64_t row, int64_t col, int64_t rows_per_batch,
                                          int64_t block_rows, ScaleStrides stride) {
  const int64_t batch = quotient(row, rows_per_batch);
  const int64_t in_batch = row - batch * rows_per_batch;
  return batch * stride.batch + quotient(in_batch, block_rows) * stride.row +
         quotient(col, kQuantGroup) * stride.col;
}

}  // namespace dx
