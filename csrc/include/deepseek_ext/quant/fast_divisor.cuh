// Division by a divisor fixed at launch: a multiply-high, an add and a shift instead of the ~10
// instructions of a 32-bit division (Granlund & Montgomery, "Division by invariant integers using
// multiplication", PLDI 1994, section 4). Shared by host and device so it is tested on the CPU.
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"

namespace dx {

// n / d == (umulhi(n, m) + n) >> shift for 0 <= n < 2^31 (so the sum stays in 32 bits), 1 <= d < 2^31.
struct FastDivisor {
  uint32_t d, m, shift;
};

// shift = ceil(log2 d), m = floor(2^32 (2^shift - d) / d) + 1 < 2^32: m + 2^32 is the magic number
// whose product with d lies in (2^(32+shift), 2^(32+shift) + 2^shift], the theorem's condition.
DX_HOST_DEVICE FastDivisor make_fast_divisor(uint32_t d) {
  uint32_t shift = 0;
  while ((uint64_t{1} << shift) < d) ++shift;
  const uint64_t m = ((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d)) / d + 1;
  return {d, static_cast<uint32_t>(m), shift};
}

DX_HOST_DEVICE uint32_t fast_divide(uint32_t n, const FastDivisor& f) {
#if defined(__CUDA_ARCH__)
  const uint32_t hi = __umulhi(n, f.m);
#else
  const uint32_t hi = static_cast<uint32_t>((uint64_t{n} * f.m) >> 32);
#endif
  return (hi + n) >> f.shift;
}

}  // namespace dx
