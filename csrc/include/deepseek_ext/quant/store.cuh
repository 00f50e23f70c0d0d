// Quantize-and-store of a register vector with one group scale.
#pragma once
#include <cstdint>

#include "deepseek_ext/ptx/max_nan.cuh"
#include "deepseek_ext/quant/scale_math.cuh"
#include "deepseek_ext/vec.cuh"

namespace dx {

// q[0..N) = e4m3(v / scale), one N-byte store (p N-byte aligned); the saturating cast clamps.
template <int N>
__device__ __forceinline__ void quantize_store(uint8_t* p, float (&v)[N], const GroupScale& g) {
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = divide_by_group_scale(v[i], g);
  store_e4m3<N>(p, v);
}

// amax over a register vector (NaN propagates).
template <int N>
__device__ __forceinline__ float abs_max(const float (&v)[N], float amax) {
#pragma unroll
  for (int i = 0; i < N; ++i) amax = ptx::max_nan(amax, fabsf(v[i]));
  return amax;
}

// amax over `lanes` adjacent lanes (a power of two <= 32); every lane of the warp must call it.
template <int kLanes>
__device__ __forceinline__ float lanes_abs_max(float amax) {
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2)
    amax = ptx::max_nan(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
  return amax;
}

}  // namespace dx
