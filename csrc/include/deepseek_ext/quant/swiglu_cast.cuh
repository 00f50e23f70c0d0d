// SwiGLU fused with the 1x128 cast: silu(g) * u in fp32 feeds the per-token kernel directly.
#pragma once
#include <cstdint>

#include "deepseek_ext/quant/per_token_cast.cuh"
#include "deepseek_ext/vec.cuh"

namespace dx {

// silu in fp32 written as torch's CUDA kernel writes it (x / (1 + exp(-x)), accurate expf), so
// the fused kernel is bit-identical to F.silu run on the same GPU.
__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

// Row `row` of gate_up is [g (inter elements) | u (inter elements)]; yields silu(g) * u. A cursor
// keeps both halves' pointers, so each load is at a compile-time offset from one of them.
template <typename T>
struct SwigluLoader {
  static constexpr int kElems = Vec16<T>::kElems;
  static constexpr int kInputBytes = 2 * sizeof(T);  // bytes read per output element: g and u
  struct Raw {
    uint4 gate, up;
  };
  struct Cursor {
    const T *gate, *up;
  };
  const T* x;
  int64_t ld;
  int64_t inter;
  __device__ __forceinline__ Cursor at(int64_t row, int64_t col) const {
    const T* p = x + row * ld + col;
    return {p, p + inter};
  }
  __device__ __forceinline__ Raw fetch(const Cursor& c, int offset, bool ok) const {
    return {ptx::ld_nc_v4_if(ok, c.gate + offset), ptx::ld_nc_v4_if(ok, c.up + offset)};
  }
  template <int N>
  __device__ __forceinline__ float widen(const Raw (&raw)[N], float (&v)[N][kElems]) const {
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      float up[kElems];
      unpack_to_float(x, raw[j].gate, v[j]);
      unpack_to_float(x, raw[j].up, up);
#pragma unroll
      for (int i = 0; i < kElems; ++i) v[j][i] = silu(v[j][i]) * up[i];
      amax = abs_max(v[j], amax);
    }
    return amax;
  }
};

}  // namespace dx
