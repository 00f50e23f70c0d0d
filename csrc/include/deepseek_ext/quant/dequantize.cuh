// Dequantization: out = q * s with s broadcast over (block_rows x 128) blocks, s at any strides.
// Warp w of CTA (x, y) takes row x * kDequantWarps + w and kDequantLoads column spans of it: in a
// span, lane l loads the e4m3 bytes of its 16 output bytes (4 fp32 or 8 bf16) at l * those, so
// every warp store instruction writes 512 contiguous bytes and each thread has its loads in flight
// together.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "deepseek_ext/common.cuh"
#include "deepseek_ext/quant/fast_divisor.cuh"
#include "deepseek_ext/quant/scale_math.cuh"
#include "deepseek_ext/vec.cuh"

namespace dx {

constexpr int kDequantThreads = 256;
constexpr int kDequantWarps = kDequantThreads / 32;  // rows per CTA
constexpr int kDequantLoads = 4;                     // column spans (loads in flight) per thread

template <typename Out>
struct DequantShape {
  static constexpr int kVec = 16 / static_cast<int>(sizeof(Out));  // elements per lane per span
  static constexpr int kSpan = 32 * kVec;                          // columns per span
  static constexpr int kCols = kDequantLoads * kSpan;              // columns per CTA
};

// kVec e4m3 values (low byte first) widened exactly, times the scale (fp32, as the reference).
template <int kVec>
__device__ __forceinline__ void dequantize_words(const uint32_t (&words)[kVec / 4], float scale, float (&v)[kVec]) {
#pragma unroll
  for (int i = 0; i < kVec / 4; ++i) e4m3x4_to_float(words[i], v + 4 * i);
#pragma unroll
  for (int i = 0; i < kVec; ++i) v[i] *= scale;
}

__device__ __forceinline__ void store16(float* p, const float (&v)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}

__device__ __forceinline__ void store16(__nv_bfloat16* p, const float (&v)[8]) {
  uint32_t words[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __nv_bfloat162 pair = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
    words[i] = *reinterpret_cast<const uint32_t*>(&pair);
  }
  *reinterpret_cast<uint4*>(p) = make_uint4(words[0], words[1], words[2], words[3]);
}

// q, out: [rows, cols] contiguous (rows = flattened leading dims, batches of rows_per_batch);
// cols a multiple of 16. Indices fit 32 bits (the launcher checks); element offsets are 64-bit.
template <typename Out>
__global__ void __launch_bounds__(kDequantThreads) dequantize_kernel(
    const uint8_t* __restrict__ q, const float* __restrict__ s, Out* __restrict__ out, uint32_t rows,
    uint32_t cols, FastDivisor rows_per_batch, FastDivisor block_rows, ScaleStrides scale_strides) {
  using Shape = DequantShape<Out>;
  constexpr int kWords = Shape::kVec / 4;
  constexpr int kSpanGroups = Shape::kSpan / kQuantGroup;  // scale columns per span (1 or 2)
  const uint32_t lane = threadIdx.x % 32;
  const uint32_t row = blockIdx.x * kDequantWarps + threadIdx.x / 32;
  if (row >= rows) return;  // whole warps: the shuffles below have every lane
  const uint32_t col0 = blockIdx.y * Shape::kCols + lane * Shape::kVec;
  // Span j is in the row while cols_left > j * kSpan.
  const int32_t cols_left = static_cast<int32_t>(cols) - static_cast<int32_t>(col0);
  // Lanes past the row load its last bytes instead (in bounds, stored nowhere), so span 0 needs no
  // predicate and the others add immediates to one base.
  const uint32_t q_col = cols_left > 0 ? col0 : cols - Shape::kVec;
  const uint8_t* q_at = q + (uint64_t{row} * cols + q_col);

  uint32_t words[kDequantLoads][kWords] = {};  // spans past the row compute on zeros and store nothing
#pragma unroll
  for (int j = 0; j < kDequantLoads; ++j) {
    if (j == 0 || cols_left > j * Shape::kSpan) {
      if constexpr (kWords == 1) {
        words[j][0] = __ldg(reinterpret_cast<const uint32_t*>(q_at + j * Shape::kSpan));
      } else {
        const uint2 pair = __ldg(reinterpret_cast<const uint2*>(q_at + j * Shape::kSpan));
        words[j][0] = pair.x, words[j][1] = pair.y;
      }
    }
  }
  // One scale load per lane: lane l fetches scale column l % (kDequantLoads * kSpanGroups) of the
  // CTA's (the last of the row where that is past it), and the spans take theirs by shuffles.
  const uint32_t batch = fast_divide(row, rows_per_batch);
  const uint32_t block_row = fast_divide(row - batch * rows_per_batch.d, block_rows);
  const uint32_t group = blockIdx.y * (kDequantLoads * kSpanGroups) + lane % (kDequantLoads * kSpanGroups);
  const uint32_t last_group = (cols - 1) / kQuantGroup;
  const float lane_scale = __ldg(s + batch * scale_strides.batch + block_row * scale_strides.row +
                                 (group < last_group ? group : last_group) * scale_strides.col);
  Out* out_at = out + (uint64_t{row} * cols + col0);
#pragma unroll
  for (int j = 0; j < kDequantLoads; ++j) {
    const float scale = __shfl_sync(0xffffffffu, lane_scale, j * kSpanGroups + lane / (32 / kSpanGroups));
    float v[Shape::kVec];
    dequantize_words<Shape::kVec>(words[j], scale, v);
    if (cols_left > j * Shape::kSpan) store16(out_at + j * Shape::kSpan, v);
  }
}

}  // namespace dx
