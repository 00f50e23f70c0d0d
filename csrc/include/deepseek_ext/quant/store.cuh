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

// max |x| over this thread's chunks (NaN wins), in four independent chains: bf16 pairs compared
// packed (magnitude max, sign bit masked at the end), fp32 one by one.
template <int kLoads>
__device__ __forceinline__ float chunks_abs_max(const __nv_bfloat16*, const uint4 (&raw)[kLoads]) {
  uint32_t acc[4] = {raw[0].x, raw[0].y, raw[0].z, raw[0].w};
#pragma unroll
  for (int u = 1; u < kLoads; ++u) {
    acc[0] = ptx::max_nan_xorsign_abs_bf16x2(acc[0], raw[u].x);
    acc[1] = ptx::max_nan_xorsign_abs_bf16x2(acc[1], raw[u].y);
    acc[2] = ptx::max_nan_xorsign_abs_bf16x2(acc[2], raw[u].z);
    acc[3] = ptx::max_nan_xorsign_abs_bf16x2(acc[3], raw[u].w);
  }
  const uint32_t pair = ptx::max_nan_xorsign_abs_bf16x2(ptx::max_nan_xorsign_abs_bf16x2(acc[0], acc[1]),
                                                        ptx::max_nan_xorsign_abs_bf16x2(acc[2], acc[3])) &
                        0x7fff7fffu;
  return ptx::max_nan(__uint_as_float(pair << 16), __uint_as_float(pair & 0xffff0000u));
}

template <int kLoads>
__device__ __forceinline__ float chunks_abs_max(const float*, const uint4 (&raw)[kLoads]) {
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
  for (int u = 0; u < kLoads; ++u) {
    acc[0] = ptx::max_nan(acc[0], fabsf(__uint_as_float(raw[u].x)));
    acc[1] = ptx::max_nan(acc[1], fabsf(__uint_as_float(raw[u].y)));
    acc[2] = ptx::max_nan(acc[2], fabsf(__uint_as_float(raw[u].z)));
    acc[3] = ptx::max_nan(acc[3], fabsf(__uint_as_float(raw[u].w)));
  }
  return ptx::max_nan(ptx::max_nan(acc[0], acc[1]), ptx::max_nan(acc[2], acc[3]));
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
