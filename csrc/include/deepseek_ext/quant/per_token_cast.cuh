// 1x128 per-token FP8 cast: each group of 128 contiguous elements of a row gets one fp32 scale,
// written in the GEMM's M-major scale layout. The input is read through a loader, so the same
// kernel casts a plain tensor (RowLoader) or a fused SwiGLU (swiglu_cast.cuh).
//
// Mapping: 8 adjacent lanes (a slot) share a group, each lane holding 16 of its elements in
// 16-byte vectors 8 lanes apart (every warp load reads whole 128-byte lines). A slot holds
// token_steps<Loader>() consecutive groups of one row, all loads issued before any math; 2^slot_shift
// slots side by side make a pass over a row, a CTA holds one pass of 32 >> slot_shift rows, and
// gridDim.y passes cover a row. Every offset inside a pass is a compile-time constant; the row's
// batch (for its scales' address) is a multiply-high by the launcher's FastDivisor.
#pragma once
#include <cstdint>
#include <cstring>

#include "deepseek_ext/common.cuh"
#include "deepseek_ext/ptx/guarded.cuh"
#include "deepseek_ext/ptx/max_nan.cuh"
#include "deepseek_ext/quant/fast_divisor.cuh"
#include "deepseek_ext/quant/scale_math.cuh"
#include "deepseek_ext/quant/store.cuh"
#include "deepseek_ext/quant/tile.cuh"
#include "deepseek_ext/vec.cuh"

namespace dx {

constexpr int kTokenGroupLanes = 8;                               // lanes sharing one group (a slot)
constexpr int kTokenLaneElems = kQuantGroup / kTokenGroupLanes;   // elements of a group one lane holds
constexpr int kTokenLaneBytes = 128;                              // input bytes a lane loads per pass
constexpr int kTokenSlots = kTileThreads / kTokenGroupLanes;      // slots per CTA
constexpr int kTokenMaxSlotShift = 5;                             // 2^5 = kTokenSlots: a whole CTA on one row

// Groups a lane holds per pass: kTokenLaneBytes of input in flight (bf16: 4, fp32: 2; SwiGLU reads
// two inputs per element: bf16 2, fp32 1), which keeps the loaded registers at 32 in every variant.
template <typename Loader>
constexpr int token_steps() {
  return kTokenLaneBytes / (kTokenLaneElems * Loader::kInputBytes);
}

// Reads x[row, col ...] as fp32 in 16-byte vectors; a cursor points at a row position, fetch()
// issues the load at a compile-time offset from it (zeros where !ok) and widen() turns a lane's
// share of a group into fp32 and its amax (split so that all loads are issued before any math).
template <typename T>
struct RowLoader {
  static constexpr int kElems = Vec16<T>::kElems;
  static constexpr int kInputBytes = sizeof(T);  // bytes read per output element
  using Raw = uint4;
  using Cursor = const T*;
  const T* x;
  int64_t ld;
  __device__ __forceinline__ Cursor at(int64_t row, int64_t col) const { return x + row * ld + col; }
  __device__ __forceinline__ Raw fetch(const Cursor& c, int offset, bool ok) const {
    return ptx::ld_nc_v4_if(ok, c + offset);
  }
  template <int N>
  __device__ __forceinline__ float widen(const Raw (&raw)[N], float (&v)[N][kElems]) const {
#pragma unroll
    for (int j = 0; j < N; ++j) unpack_to_float(x, raw[j], v[j]);
    return chunks_abs_max(x, raw);
  }
};

// e4m3(v) to p (N = 4 or 8 bytes, N-byte aligned) when ok.
template <int N>
__device__ __forceinline__ void store_e4m3_if(bool ok, uint8_t* p, const float (&v)[N]) {
  if constexpr (N == 8) {
    ptx::st_global_if(ok, p, make_uint2(pack_e4m3x4(v[0], v[1], v[2], v[3]), pack_e4m3x4(v[4], v[5], v[6], v[7])));
  } else {
    static_assert(N == 4, "a 16-byte vector of bf16 or fp32");
    ptx::st_global_if(ok, p, pack_e4m3x4(v[0], v[1], v[2], v[3]));
  }
}

// See the mapping above: CTA (x, y) holds rows x * (32 >> slot_shift) ... and pass y of each, a
// pass being the 2^slot_shift * token_steps<Loader>() groups its slots hold side by side. Rows past
// the end keep their whole warps at the shuffles, with nothing loaded or stored. Row and column
// indices are 32-bit (the launcher checks rows and cols, a pass past the last column included).
// Four CTAs per SM: 64 registers hold the 32 loaded words and one group's math.
template <typename Loader>
__global__ void __launch_bounds__(kTileThreads, 4) per_token_cast_to_fp8_kernel(
    Loader loader, uint8_t* __restrict__ q, float* __restrict__ s, uint32_t rows, int cols,
    FastDivisor rows_per_batch, int64_t padded_rows, int slot_shift, bool pow2_scale) {
  constexpr int kVec = Loader::kElems;
  constexpr int kVecs = kTokenLaneElems / kVec;        // vectors of one group per lane
  constexpr int kVecStride = kTokenGroupLanes * kVec;  // elements between them
  constexpr int kSteps = token_steps<Loader>();
  const int lane = static_cast<int>(threadIdx.x % kTokenGroupLanes);
  const int slot = static_cast<int>(threadIdx.x / kTokenGroupLanes);
  const uint32_t row = blockIdx.x * (kTokenSlots >> slot_shift) + (slot >> slot_shift);
  const int first_group = static_cast<int>((blockIdx.y << slot_shift) + (slot & ((1 << slot_shift) - 1))) * kSteps;
  const int col0 = first_group * kQuantGroup + lane * kVec;
  const int left = row < rows ? cols - col0 : 0;  // columns from this lane's first vector on

  typename Loader::Raw raw[kSteps][kVecs];
  const auto cursor = loader.at(row, col0);
#pragma unroll
  for (int u = 0; u < kSteps; ++u)
#pragma unroll
    for (int j = 0; j < kVecs; ++j) {
      const int offset = u * kQuantGroup + j * kVecStride;
      raw[u][j] = loader.fetch(cursor, offset, offset < left);
    }

  uint8_t* qp = q + (static_cast<int64_t>(row) * cols + col0);
  float scale = 0.0f;  // lane u < kSteps stores the scale of group u
#pragma unroll
  for (int u = 0; u < kSteps; ++u) {
    float v[kVecs][kVec];
    const float amax = loader.widen(raw[u], v);
    const GroupScale g = group_scale(lanes_abs_max<kTokenGroupLanes>(amax), pow2_scale);
#pragma unroll
    for (int j = 0; j < kVecs; ++j) {
      const int offset = u * kQuantGroup + j * kVecStride;
#pragma unroll
      for (int i = 0; i < kVec; ++i) v[j][i] = divide_by_group_scale(v[j][i], g);
      store_e4m3_if(offset < left, qp + offset, v[j]);
    }
    scale = lane == u ? g.s : scale;
  }
  // Group `lane` starts lane * (128 - kVec) columns after this lane's first vector. M-major scales:
  // per batch [groups][padded_rows] (m_major_scale_offset).
  if (lane < kSteps && lane * (kQuantGroup - kVec) < left) {
    const uint32_t batch = fast_divide(row, rows_per_batch);
    const int64_t batch_scales = ceil_div(cols, kQuantGroup) * padded_rows;
    s[batch * batch_scales + (first_group + lane) * padded_rows + (row - batch * rows_per_batch.d)] = scale;
  }
}

}  // namespace dx
