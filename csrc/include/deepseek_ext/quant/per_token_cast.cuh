// 1x128 per-token FP8 cast: each group of 128 contiguous elements of a row gets one fp32 scale,
// written in the GEMM's M-major scale layout. The input is read through a loader, so the same
// kernel casts a plain tensor (RowLoader) or a fused SwiGLU (swiglu_cast.cuh).
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"
#include "deepseek_ext/quant/scale_math.cuh"
#include "deepseek_ext/quant/store.cuh"
#include "deepseek_ext/quant/tile.cuh"
#include "deepseek_ext/vec.cuh"

namespace dx {

constexpr int kTokenSteps = 4;  // groups per thread: 4 x 16-byte loads in flight before any math

// Reads kElems contiguous elements of x[row, col ...] as fp32: fetch() issues the load,
// to_float() widens (split so that all loads are issued before the first use).
template <typename T>
struct RowLoader {
  static constexpr int kElems = Vec16<T>::kElems;
  using Raw = uint4;
  const T* x;
  int64_t ld;
  __device__ __forceinline__ Raw fetch(int64_t row, int64_t col) const {
    return ptx::ld_nc_v4(x + row * ld + col);
  }
  __device__ __forceinline__ void to_float(const Raw& raw, float (&v)[kElems]) const {
    unpack_to_float(x, raw, v);
  }
};

// One thread per 16-byte vector of a group; the kLanes threads of a group sit in one warp and
// reduce the amax with shuffles. Each thread handles kTokenSteps groups, loads first.
// A bf16 thread stores 8 bytes of q, and a warp's store still covers 256 contiguous bytes.
// (256, 4): four CTAs per SM (64 registers) now that no element pays a division.
template <typename Loader>
__global__ void __launch_bounds__(kTileThreads, 4) per_token_cast_to_fp8_kernel(
    Loader loader, uint8_t* __restrict__ q, float* __restrict__ s, int64_t rows, int64_t cols,
    int64_t rows_per_batch, int64_t padded_rows, bool pow2_scale) {
  constexpr int kVec = Loader::kElems;
  constexpr int kLanes = kQuantGroup / kVec;  // 16 for bf16, 32 for fp32
  const int64_t num_groups = ceil_div(cols, kQuantGroup);
  const int64_t total_groups = rows * num_groups;
  const int lane = static_cast<int>(threadIdx.x % kLanes);

  typename Loader::Raw raw[kTokenSteps];
  int64_t row[kTokenSteps], group[kTokenSteps];
  bool in_range[kTokenSteps];
#pragma unroll
  for (int u = 0; u < kTokenSteps; ++u) {
    const int64_t g = token_group_index(blockIdx.x, u, threadIdx.x, kLanes, kTokenSteps);
    row[u] = quotient(g, num_groups);
    group[u] = g - row[u] * num_groups;
    const int64_t col = group[u] * kQuantGroup + lane * kVec;
    // cols is a multiple of kVec, so a vector is wholly inside or outside the row.
    in_range[u] = g < total_groups && col < cols;
    if (in_range[u]) raw[u] = loader.fetch(row[u], col);
  }
#pragma unroll
  for (int u = 0; u < kTokenSteps; ++u) {
    float v[kVec] = {};
    if (in_range[u]) loader.to_float(raw[u], v);
    const GroupScale g = group_scale(lanes_abs_max<kLanes>(abs_max(v, 0.0f)), pow2_scale);
    const int64_t col = group[u] * kQuantGroup + lane * kVec;
    if (in_range[u]) quantize_store(q + row[u] * cols + col, v, g);
    if (lane == 0 && row[u] < rows)
      s[m_major_scale_offset(row[u], group[u], rows_per_batch, padded_rows, num_groups)] = g.s;
  }
}

}  // namespace dx
