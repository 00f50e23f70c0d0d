// 128x128 per-block FP8 cast, persistent: CTA b quantizes tiles b, b + gridDim.x, ... with the
// tile double-buffered: while the threads quantize tile i from registers, the TMA lands tile i+1 in
// shared memory. The quantized tile leaves through shared memory by a TMA store, which, like the
// load's zero fill, handles partial tiles: no thread does global address math or bounds checks.
#pragma once
#include <cuda.h>

#include <cstdint>

#include "deepseek_ext/ptx/max_nan.cuh"
#include "deepseek_ext/ptx/mbarrier.cuh"
#include "deepseek_ext/ptx/tma.cuh"
#include "deepseek_ext/quant/fast_divisor.cuh"
#include "deepseek_ext/quant/scale_math.cuh"
#include "deepseek_ext/quant/store.cuh"
#include "deepseek_ext/quant/tile_load.cuh"
#include "deepseek_ext/shared_memory.cuh"

namespace dx {

// A CTA's dynamic shared memory: the landing tile (rows of 128 elements, as the TMA writes them),
// the quantized tile (rows of 128 bytes, as the TMA store reads them), the per-warp amax and the
// landing tile's mbarrier. Offsets from a 128-byte aligned base; the request includes the slack.
template <typename T>
struct BlockCastSmem {
  static constexpr int kAlign = 128;  // TMA shared-memory operands
  static constexpr int kIn = 0;
  static constexpr int kOut = kIn + kTile * TileShape<T>::kRowBytes;
  static constexpr int kAmax = kOut + kTile * kTile;
  static constexpr int kFull = kAmax + kTileThreads / 32 * static_cast<int>(sizeof(float));
  static constexpr int kRequest = kFull + 8 + kAlign;
};

// Resident CTAs per SM: the registers of a bf16 tile (32 a thread) leave room for 4, an fp32 tile
// (64 a thread) for 2; shared memory holds either many.
template <typename T>
constexpr int kBlockCastCtasPerSm = sizeof(T) <= 2 ? 4 : 2;

// Where tile `tile` (row-major tile order per batch) starts in the [batch][rows][cols] tensor maps.
struct BlockTileOrigin {
  int32_t col, row, batch;
};
DX_HOST_DEVICE BlockTileOrigin block_tile_origin(uint32_t tile, const FastDivisor& tiles_per_batch,
                                                 const FastDivisor& tile_cols) {
  const uint32_t batch = fast_divide(tile, tiles_per_batch);
  const uint32_t in_batch = tile - batch * tiles_per_batch.d;
  const uint32_t row = fast_divide(in_batch, tile_cols);
  return {static_cast<int32_t>((in_batch - row * tile_cols.d) * kTile), static_cast<int32_t>(row * kTile),
          static_cast<int32_t>(batch)};
}

// Quantizes this thread's chunks (the tile_load mapping) into the staged e4m3 tile.
template <typename T, int kLoads>
__device__ __forceinline__ void quantize_chunks(const uint4 (&raw)[kLoads], const GroupScale& g, uint8_t* out) {
  using Shape = TileShape<T>;
  const int col = tile_load_chunk(threadIdx.x, Shape::kChunks) * Shape::kVec;
#pragma unroll
  for (int u = 0; u < kLoads; ++u) {
    float v[Shape::kVec];
    unpack_to_float(static_cast<const T*>(nullptr), raw[u], v);
#pragma unroll
    for (int i = 0; i < Shape::kVec; ++i) v[i] = divide_by_group_scale(v[i], g);
    store_e4m3<Shape::kVec>(out + tile_load_row(threadIdx.x, u, Shape::kChunks) * kTile + col, v);
  }
}

// x_map, q_map: [batch][rows_per_batch][cols] of T and of e4m3 (boxes of one tile); s: one scale
// per tile, in tile order; tiles_per_batch = tile rows x tile_cols.
template <typename T>
__global__ void __launch_bounds__(kTileThreads, kBlockCastCtasPerSm<T>) per_block_cast_to_fp8_kernel(
    const __grid_constant__ CUtensorMap x_map, const __grid_constant__ CUtensorMap q_map, float* __restrict__ s,
    uint32_t num_tiles, FastDivisor tiles_per_batch, FastDivisor tile_cols, bool pow2_scale) {
  using Shape = TileShape<T>;
  using Smem = BlockCastSmem<T>;
  uint8_t* smem_raw = dynamic_shared_memory<uint8_t>();
  const uint32_t raw_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t base = (raw_addr + Smem::kAlign - 1) / Smem::kAlign * Smem::kAlign;
  uint8_t* smem = smem_raw + (base - raw_addr);
  float* warp_amax = reinterpret_cast<float*>(smem + Smem::kAmax);
  const uint32_t full = base + Smem::kFull;
  constexpr uint32_t kTileBytes = kTile * Shape::kRowBytes;
  const bool leader = threadIdx.x == 0;  // issues the TMA copies and stores the scales

  BlockTileOrigin next{};  // the leader's: the tile in flight
  if (leader) {
    next = block_tile_origin(blockIdx.x, tiles_per_batch, tile_cols);
    ptx::prefetch_tensor_map(&x_map);
    ptx::prefetch_tensor_map(&q_map);
    ptx::mbarrier_init(full, 1);
    ptx::fence_mbarrier_init();
    ptx::mbarrier_arrive_expect_tx(full, kTileBytes);
    ptx::tma_load_3d(base + Smem::kIn, &x_map, next.col, next.row, next.batch, full);
  }
  __syncthreads();

  const int chunk_offset = tile_load_chunk(threadIdx.x, Shape::kChunks) * kChunkBytes;
  uint32_t parity = 0;
  for (uint32_t tile = blockIdx.x; tile < num_tiles; tile += gridDim.x, parity ^= 1) {
    ptx::mbarrier_wait_parity(full, parity);
    uint4 raw[Shape::kLoads];
#pragma unroll
    for (int u = 0; u < Shape::kLoads; ++u) {
      const int row = tile_load_row(threadIdx.x, u, Shape::kChunks);
      raw[u] = *reinterpret_cast<const uint4*>(smem + Smem::kIn + row * Shape::kRowBytes + chunk_offset);
    }
    if (leader) ptx::bulk_wait_group_read<0>();  // the previous tile's store has read the staged tile
    __syncthreads();  // the landing tile is in registers, the staged tile free: refill both
    const BlockTileOrigin here = next;
    if (leader && tile + gridDim.x < num_tiles) {
      next = block_tile_origin(tile + gridDim.x, tiles_per_batch, tile_cols);
      ptx::mbarrier_arrive_expect_tx(full, kTileBytes);
      ptx::tma_load_3d(base + Smem::kIn, &x_map, next.col, next.row, next.batch, full);
    }

    float amax = lanes_abs_max<32>(chunks_abs_max(static_cast<const T*>(nullptr), raw));
    if (threadIdx.x % 32 == 0) warp_amax[threadIdx.x / 32] = amax;
    __syncthreads();
#pragma unroll
    for (int w = 0; w < kTileThreads / 32; w += 4) {
      const float4 four = *reinterpret_cast<const float4*>(warp_amax + w);  // 16-byte aligned
      amax = ptx::max_nan(ptx::max_nan(amax, four.x), ptx::max_nan(four.y, ptx::max_nan(four.z, four.w)));
    }
    const GroupScale g = group_scale(amax, pow2_scale);
    quantize_chunks<T>(raw, g, smem + Smem::kOut);
    ptx::fence_proxy_async_shared();  // the TMA store reads what this thread wrote
    __syncthreads();
    if (leader) {
      ptx::tma_store_3d(&q_map, here.col, here.row, here.batch, base + Smem::kOut);
      ptx::bulk_commit_group();
      s[tile] = g.s;
    }
  }
  if (leader) ptx::bulk_wait_group<0>();  // the last store completes while the shared memory exists
}

}  // namespace dx
