// The shape of a 128x128 tile in 16-byte chunks, per element type (the tile kernels' loads and
// their shared-memory staging, tile.cuh).
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

}  // namespace dx
