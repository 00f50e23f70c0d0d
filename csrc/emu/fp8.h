// Host models of the PTX fp8 (e4m3) conversions, bit-exact per the PTX ISA "cvt" section.
#pragma once
#include <cstdint>

namespace dx::emu {

// cvt.rn.satfinite.e4m3x2.f32 for one value: round to nearest even, |x| > 448 (infinities included)
// saturates to +-448, -0 and the sign of values that round to zero are kept, NaN -> 0x7F.
uint8_t f32_to_e4m3_satfinite_rn(float x);

// cvt.rn.f16x2.e4m3x2 for one value (exact); the NaN encodings give the canonical f16 NaN 0x7FFF.
uint16_t e4m3_to_f16_bits(uint8_t v);

// The e4m3 value as a float (exact); NaN encodings give a positive quiet NaN.
float e4m3_to_f32(uint8_t v);

}  // namespace dx::emu
