// SwiGLU fused with the 1x128 cast: silu(g) * u in fp32 feeds the per-token kernel directly.
#pragma once
#include <cstdint>

#include "deepseek_ext/quant/per_token_cast.cuh"
#include "deepseek_ext/vec.cuh"

namespace dx {

// silu in fp32 written as torch's CUDA kernel writes it (x / (1 + exp(-x)), accurate expf), so
// the fused kernel is bit-identical to F.silu run on the same GPU.
__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

// Row `row` of gate_up is [g (inter elements) | u (inter elements)]; yields silu(g) * u.
template <typename T>
struct SwigluLoader {
  static constexpr int kElems = Vec16<T>::kElems;
  struct Raw {
    uint4 gate, up;
  };
  const T* x;
  int64_t ld;
  int64_t inter;
  __device__ __forceinline__ Raw fetch(int64_t row, int64_t col) const {
    const T* p = x + row * ld + col;
    return {ptx::ld_nc_v4(p), ptx::ld_nc_v4(p + inter)};
  }
  __device__ __forceinline__ void to_float(const Raw& raw, float (&v)[kElems]) const {
    float up[kElems];
    unpack_to_float(x, raw.gate, v);
    unpack_to_float(x, raw.up, up);
#pragma unroll
    for (int i = 0; i < kElems; ++i) v[i] = silu(v[i]) * up[i];
  }
};

}  // namespace dx
