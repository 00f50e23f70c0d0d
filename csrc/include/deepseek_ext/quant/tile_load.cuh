// Loading one 128x128 tile into registers, and staging it in shared memory (swizzled as
// tile.cuh describes).
#pragma once
#include <cstdint>

#include "deepseek_ext/quant/tile.cuh"
#include "deepseek_ext/vec.cuh"

namespace dx {

template <typename T>
struct TileShape {
  static constexpr int kVec = Vec16<T>::kElems;                          // elements per chunk
  static constexpr int kRowBytes = kTile * static_cast<int>(sizeof(T));
  static constexpr int kChunks = kRowBytes / kChunkBytes;                // chunks per tile row
  static constexpr int kLoads = kTile * kChunks / kTileThreads;          // chunks per thread
};

// CTAs per SM the tile kernels are built for: a bf16 tile in registers fits 80 registers a
// thread (3 CTAs), an fp32 tile needs 128 (2 CTAs) to stay out of local memory.
template <typename T>
constexpr int kTileMinBlocks = sizeof(T) <= 2 ? 3 : 2;

// Issues the loads of this thread's chunks of the tile whose top-left element is x[row0, col0];
// rows at or past row_end and columns at or past col_end read as zero (the zero padding of
// partial groups). Kept raw (widened on use) so a whole tile fits in registers without spills.
template <typename T>
__device__ __forceinline__ void fetch_tile(const T* __restrict__ x, int64_t ld, int64_t row0,
                                           int64_t row_end, int64_t col0, int64_t col_end,
                                           uint4 (&raw)[TileShape<T>::kLoads]) {
  using Shape = TileShape<T>;
  const int64_t col = col0 + tile_load_chunk(threadIdx.x, Shape::kChunks) * Shape::kVec;
#pragma unroll
  for (int u = 0; u < Shape::kLoads; ++u) {
    const int64_t row = row0 + tile_load_row(threadIdx.x, u, Shape::kChunks);
    raw[u] = row < row_end && col < col_end ? ptx::ld_nc_v4(x + row * ld + col) : make_uint4(0, 0, 0, 0);
  }
}

// Stores this thread's fetched chunks into the staged (swizzled) tile.
template <int kChunks, int kLoads>
__device__ __forceinline__ void stage_tile(uint8_t* smem, const uint4 (&raw)[kLoads]) {
  const int chunk = tile_load_chunk(threadIdx.x, kChunks);
#pragma unroll
  for (int u = 0; u < kLoads; ++u) {
    const int offset = tile_byte_offset(tile_load_row(threadIdx.x, u, kChunks), chunk * kChunkBytes, kChunks * kChunkBytes);
    *reinterpret_cast<uint4*>(smem + offset) = raw[u];
  }
}

}  // namespace dx
