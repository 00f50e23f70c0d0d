// 16-byte vectors: bf16/fp32 <-> fp32 registers, and packed e4m3 loads and stores.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

#include "deepseek_ext/ptx/cvt.cuh"
#include "deepseek_ext/ptx/ld.cuh"

namespace dx {

template <typename T>
struct Vec16 {
  static constexpr int kElems = 16 / static_cast<int>(sizeof(T));
};

// Widens a raw 16-byte vector of bf16 or fp32 to fp32 values.
__device__ __forceinline__ void unpack_to_float(const __nv_bfloat16*, const uint4& raw, float (&v)[8]) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    // bf16 -> fp32 is a 16-bit left shift of the bit pattern (exact, NaN kept).
    v[2 * i] = __uint_as_float(words[i] << 16);
    v[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
  }
}

__device__ __forceinline__ void unpack_to_float(const float*, const uint4& raw, float (&v)[4]) {
  v[0] = __uint_as_float(raw.x), v[1] = __uint_as_float(raw.y);
  v[2] = __uint_as_float(raw.z), v[3] = __uint_as_float(raw.w);
}

// Widens 8 raw bytes (one shared-memory pack of a staged tile) of bf16 or fp32 to fp32 values.
__device__ __forceinline__ void unpack_to_float(const __nv_bfloat16*, const uint2& raw, float (&v)[4]) {
  v[0] = __uint_as_float(raw.x << 16), v[1] = __uint_as_float(raw.x & 0xffff0000u);
  v[2] = __uint_as_float(raw.y << 16), v[3] = __uint_as_float(raw.y & 0xffff0000u);
}

__device__ __forceinline__ void unpack_to_float(const float*, const uint2& raw, float (&v)[2]) {
  v[0] = __uint_as_float(raw.x), v[1] = __uint_as_float(raw.y);
}

// Loads 16 bytes at p (16-byte aligned) as Vec16<T>::kElems fp32 values: an ordinary coherent
// load (the quantization kernels stream their read-only inputs with ptx::ld_nc_v4 instead).
template <typename T, int N>
__device__ __forceinline__ void load16_as_float(const T* p, float (&v)[N]) {
  unpack_to_float(p, *reinterpret_cast<const uint4*>(p), v);
}

// Packs 4 already-scaled fp32 values into one word of e4m3 bytes (v[0] in the low byte).
__device__ __forceinline__ uint32_t pack_e4m3x4(float v0, float v1, float v2, float v3) {
  return ptx::cvt_e4m3x2(v0, v1) | (static_cast<uint32_t>(ptx::cvt_e4m3x2(v2, v3)) << 16);
}

// Packs N (4, 8 or 16) already-scaled fp32 values into e4m3 bytes and stores them at p
// (N-byte aligned) with one store.
template <int N>
__device__ __forceinline__ void store_e4m3(uint8_t* p, const float (&v)[N]) {
  static_assert(N == 4 || N == 8 || N == 16, "store_e4m3 packs 4, 8 or 16 values");
  uint32_t words[N / 4];
#pragma unroll
  for (int i = 0; i < N / 4; ++i) words[i] = pack_e4m3x4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
  if constexpr (N == 16) {
    *reinterpret_cast<uint4*>(p) = make_uint4(words[0], words[1], words[2], words[3]);
  } else if constexpr (N == 8) {
    *reinterpret_cast<uint2*>(p) = make_uint2(words[0], words[1]);
  } else {
    *reinterpret_cast<uint32_t*>(p) = words[0];
  }
}

// Widens one word of 4 e4m3 bytes (low byte first) to fp32 (exact).
__device__ __forceinline__ void e4m3x4_to_float(uint32_t word, float* v) {
  const uint32_t h01 = ptx::cvt_e4m3x2_to_f16x2(static_cast<uint16_t>(word & 0xffffu));
  const uint32_t h23 = ptx::cvt_e4m3x2_to_f16x2(static_cast<uint16_t>(word >> 16));
  v[0] = __half2float(__ushort_as_half(static_cast<unsigned short>(h01 & 0xffffu)));
  v[1] = __half2float(__ushort_as_half(static_cast<unsigned short>(h01 >> 16)));
  v[2] = __half2float(__ushort_as_half(static_cast<unsigned short>(h23 & 0xffffu)));
  v[3] = __half2float(__ushort_as_half(static_cast<unsigned short>(h23 >> 16)));
}

}  // namespace dx
