// Unpermute: out[t] = bf16(sum over slots j = 0..k-1 with a row of y[row] * w[t, j]), fp32 sum
// from 0 in slot order, each product rounded before it is added (no FMA): bit-identical to
// deepseek_ext/reference/permute.py.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "deepseek_ext/ptx/trap.cuh"
#include "deepseek_ext/vec.cuh"

namespace dx::permute {

constexpr int kUnpermuteThreads = 256;  // a CTA per token
constexpr int kUnpermuteChunks = 4;      // 8-element chunks per thread in flight per slot

__device__ __forceinline__ void load8_as_float(const __nv_bfloat16* p, float (&v)[8]) { load16_as_float(p, v); }

__device__ __forceinline__ void load8_as_float(const float* p, float (&v)[8]) {
  float lo[4], hi[4];
  load16_as_float(p, lo);
  load16_as_float(p + 4, hi);
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = lo[i], v[4 + i] = hi[i];
}

// y: [rows, hidden] bf16 or fp32 contiguous; inverse_map, weights: [tokens, topk] contiguous, each
// inverse_map value in [-1, rows) (checked here: a bad one is skipped and fails the launch);
// out: [tokens, hidden] bf16. hidden a multiple of 8.
template <typename YT>
__global__ void __launch_bounds__(kUnpermuteThreads)
    unpermute_kernel(const YT* __restrict__ y, int64_t rows, const int* __restrict__ inverse_map,
                     const float* __restrict__ weights, int64_t tokens, int topk, int64_t hidden,
                     __nv_bfloat16* __restrict__ out) {
  const int64_t chunks = hidden / 8;
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    for (int64_t base = 0; base < chunks; base += kUnpermuteThreads * kUnpermuteChunks) {
      float acc[kUnpermuteChunks][8];
#pragma unroll
      for (int u = 0; u < kUnpermuteChunks; ++u)
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[u][i] = 0.0f;
      for (int j = 0; j < topk; ++j) {
        const int row = __ldg(inverse_map + t * topk + j);
        if (row < -1 || row >= rows) {
          ptx::record_index_fault(ptx::IndexFault::kRange, "inverse_map", static_cast<int>(t * topk + j), row, -1,
                                  static_cast<int>(rows - 1));
          continue;
        }
        if (row < 0) continue;
        const float w = __ldg(weights + t * topk + j);
#pragma unroll
        for (int u = 0; u < kUnpermuteChunks; ++u) {
          const int64_t c = base + u * kUnpermuteThreads + threadIdx.x;
          if (c >= chunks) continue;
          float v[8];
          load8_as_float(y + row * hidden + c * 8, v);
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[u][i] = __fadd_rn(acc[u][i], __fmul_rn(v[i], w));
        }
      }
#pragma unroll
      for (int u = 0; u < kUnpermuteChunks; ++u) {
        const int64_t c = base + u * kUnpermuteThreads + threadIdx.x;
        if (c >= chunks) continue;
        uint4 packed;
        uint32_t* words = reinterpret_cast<uint32_t*>(&packed);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const __nv_bfloat162 pair = __floats2bfloat162_rn(acc[u][2 * i], acc[u][2 * i + 1]);
          words[i] = *reinterpret_cast<const uint32_t*>(&pair);
        }
        *reinterpret_cast<uint4*>(out + t * hidden + c * 8) = packed;
      }
    }
  }
  ptx::trap_on_index_fault();
}

}  // namespace dx::permute
