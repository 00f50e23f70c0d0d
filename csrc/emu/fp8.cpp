#include "emu/fp8.h"

#include <algorithm>
#include <cstring>

namespace dx::emu {
namespace {

// e4m3: 1 sign, 4 exponent bits (bias 7), 3 mantissa bits; S.1111.111 is NaN, there is no infinity.
constexpr uint32_t kF32Max448 = 0x43E00000u;  // 448.0f = 1.75 * 2^8, the largest finite e4m3
constexpr uint8_t kE4m3Nan = 0x7F;

// m / 2^shift rounded to nearest, ties to even.
uint32_t shift_right_rne(uint32_t m, int shift) {
  if (shift >= 32) return 0;  // m < 2^24 is below half of 2^shift
  const uint64_t q = m >> shift, rem = m & ((uint64_t{1} << shift) - 1), half = uint64_t{1} << (shift - 1);
  return static_cast<uint32_t>(q + (rem > half || (rem == half && (q & 1))));
}

// |e4m3 v| (v not NaN) as bits of a binary format with the given exponent bias and mantissa width.
uint32_t widen_magnitude(uint8_t v, int bias, int mant_bits) {
  int e = (v >> 3) & 0xF;
  uint32_t m = v & 7;
  if (e == 0) {
    if (m == 0) return 0;
    e = 1;  // subnormal m * 2^-9: normalize so the leading one becomes the implicit bit
    while (!(m & 8)) m <<= 1, --e;
    m &= 7;
  }
  return (static_cast<uint32_t>(e - 7 + bias) << mant_bits) | (m << (mant_bits - 3));
}

}  // namespace

uint8_t f32_to_e4m3_satfinite_rn(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return kE4m3Nan;
  if (a >= kF32Max448) return sign | 0x7E;  // .satfinite: beyond MAX_NORM (or infinite) -> MAX_NORM
  const int exp_field = static_cast<int>(a >> 23);
  const int e = (exp_field == 0 ? 1 : exp_field) - 127;  // unbiased exponent of the value
  const uint32_t m = (a & 0x7FFFFFu) | (exp_field == 0 ? 0 : 0x800000u);
  // In units of the e4m3 ulp at exponent max(e, -6): normals keep 3 of 23 fraction bits, subnormals fewer;
  // a mantissa carry lands in the exponent field by the addition.
  const int shift = 20 + std::max(0, -6 - e);
  return sign | static_cast<uint8_t>(std::max(0, e + 6) * 8 + shift_right_rne(m, shift));
}

uint16_t e4m3_to_f16_bits(uint8_t v) {
  if ((v & 0x7F) == kE4m3Nan) return 0x7FFF;
  return static_cast<uint16_t>(((v & 0x80u) << 8) | widen_magnitude(v, 15, 10));
}

float e4m3_to_f32(uint8_t v) {
  const uint32_t u = (v & 0x7F) == kE4m3Nan ? 0x7FC00000u : ((v & 0x80u) << 24) | widen_magnitude(v, 127, 23);
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace dx::emu
