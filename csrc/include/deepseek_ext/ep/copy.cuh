// Warp-wide row copies with 16-byte vectors: one read of a row, written to several places.
#pragma once
#include <cstdint>

#include "deepseek_ext/ptx/ld.cuh"

namespace dx::ep {

constexpr int kVecsPerLane = 4;  // 16-byte vectors each lane keeps in flight per step

// Copies `bytes` (a multiple of 16) from src to the `dst` of every lane set in dst_lanes: the
// row is read once per step and stored once per destination. Called by the whole warp.
__device__ __forceinline__ void copy_row_to_many(const uint8_t* src, bool src_read_only, uint8_t* dst,
                                                 unsigned dst_lanes, int64_t bytes, int lane) {
  const int64_t vecs = bytes / 16;
  const auto* in = reinterpret_cast<const uint4*>(src);
  for (int64_t base = 0; base < vecs; base += 32 * kVecsPerLane) {
    uint4 v[kVecsPerLane];
#pragma unroll
    for (int u = 0; u < kVecsPerLane; ++u) {
      const int64_t i = base + u * 32 + lane;
      if (i < vecs) v[u] = src_read_only ? ptx::ld_nc_v4(in + i) : in[i];
    }
    for (unsigned m = dst_lanes; m; m &= m - 1) {
      auto* out = reinterpret_cast<uint4*>(__shfl_sync(0xffffffffu, reinterpret_cast<uintptr_t>(dst), __ffs(m) - 1));
#pragma unroll
      for (int u = 0; u < kVecsPerLane; ++u) {
        const int64_t i = base + u * 32 + lane;
        if (i < vecs) out[i] = v[u];
      }
    }
  }
}

// Zeroes `bytes` (a multiple of 16) at dst with the warp.
__device__ __forceinline__ void zero_row(uint8_t* dst, int64_t bytes, int lane) {
  auto* out = reinterpret_cast<uint4*>(dst);
  for (int64_t i = lane; i < bytes / 16; i += 32) out[i] = make_uint4(0, 0, 0, 0);
}

}  // namespace dx::ep
