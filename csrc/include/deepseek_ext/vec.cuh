// 16-byte vector loads that widen bf16/fp32 to fp32 registers, and packed e4m3 stores.
#pragma once
#include <cuda_bf16.h>
#include <cstdint>

#include "deepseek_ext/ptx/cvt.cuh"

namespace dx {

template <typename T>
struct Vec16 {
  static constexpr int kElems = 16 / sizeof(T);
};

// Loads 16 bytes at p (16-byte aligned) as kElems fp32 values.
__device__ __forceinline__ void load16_as_float(const __nv_bfloat16* p, float (&v)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __nv_bfloat162 pair = *reinterpret_cast<const __nv_bfloat162*>(&words[i]);
    const float2 f = __bfloat1622float2(pair);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}

__device__ __forceinline__ void load16_as_float(const float* p, float (&v)[4]) {
  const float4 raw = *reinterpret_cast<const float4*>(p);
  v[0] = raw.x, v[1] = raw.y, v[2] = raw.z, v[3] = raw.w;
}

// Packs N (4 or 8) already-clamped fp32 values into e4m3 bytes and stores them at p.
template <int N>
__device__ __forceinline__ void store_e4m3(uint8_t* p, const float (&v)[N]) {
  static_assert(N == 4 || N == 8, "store_e4m3 packs 4 or 8 values");
  uint32_t words[N / 4];
#pragma unroll
  for (int i = 0; i < N / 4; ++i) {
    const uint32_t lo = ptx::cvt_e4m3x2(v[4 * i], v[4 * i + 1]);
    const uint32_t hi = ptx::cvt_e4m3x2(v[4 * i + 2], v[4 * i + 3]);
    words[i] = lo | (hi << 16);
  }
  if constexpr (N == 8) {
    *reinterpret_cast<uint2*>(p) = make_uint2(words[0], words[1]);
  } else {
    *reinterpret_cast<uint32_t*>(p) = words[0];
  }
}

}  // namespace dx
