// Tile shapes, thread roles and shared-memory layout of the FP8 GEMM (host and device).
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"

namespace dx::gemm {

constexpr int kBlockM = 128;  // two consumer warpgroups x 64 rows
constexpr int kBlockK = 128;  // one scale block: the partial sum is promoted every K block
constexpr int kWgmmaK = 32;   // K of one fp8 wgmma
constexpr int kWgRows = 64;   // rows of the tile owned by one consumer warpgroup (wgmma M)
constexpr int kConsumerWarpgroups = kBlockM / kWgRows;
constexpr int kWarpgroupThreads = 128;
constexpr int kConsumerThreads = kConsumerWarpgroups * kWarpgroupThreads;
constexpr int kThreads = kConsumerThreads + kWarpgroupThreads;  // + one producer warpgroup
constexpr int kConsumerWarps = kConsumerThreads / 32;
constexpr int kProducerRegisters = 40;   // setmaxnreg budgets: 40*128 + 232*256 <= 64K
constexpr int kConsumerRegisters = 232;
constexpr int kSwizzleBytes = 128;  // TMA/wgmma 128B swizzle: one 128-byte row per K block
constexpr int kSwizzleAtomBytes = 8 * kSwizzleBytes;  // 8 rows: the swizzle pattern's period
constexpr int kMaxSharedBytes = 232448;  // sm_90 opt-in dynamic shared memory per block
constexpr int kMaxStages = 8;

static_assert(kBlockK == kQuantGroup && kBlockK == kSwizzleBytes, "one e4m3 K block = one 128B row");

// The tile widths (BLOCK_N) instantiated: one wgmma m64nN per consumer warpgroup.
DX_HOST_DEVICE constexpr bool supported_block_n(int block_n) { return block_n == 64 || block_n == 128; }

// Byte offsets inside the (1024-aligned) dynamic shared memory, for a ring of `stages` stages,
// tiles `block_n` wide and output elements of `out_bytes` bytes.
struct SmemLayout {
  int stages;
  int out_bytes;
  int block_n;

  static constexpr int kTileABytes = kBlockM * kBlockK;
  static constexpr int kScaleABytes = kBlockM * 4;

  DX_HOST_DEVICE constexpr int tile_b_bytes() const { return block_n * kBlockK; }
  DX_HOST_DEVICE constexpr int scale_b_bytes() const { return block_n * 4; }
  DX_HOST_DEVICE constexpr int a(int stage) const { return stage * kTileABytes; }
  DX_HOST_DEVICE constexpr int b(int stage) const { return stages * kTileABytes + stage * tile_b_bytes(); }
  // Output staging: per consumer warpgroup, strips of 64 rows x 128 bytes (TMA-store boxes).
  DX_HOST_DEVICE constexpr int staging(int wg) const {
    return stages * (kTileABytes + tile_b_bytes()) + wg * staging_bytes_per_wg();
  }
  DX_HOST_DEVICE constexpr int staging_bytes_per_wg() const { return kWgRows * block_n * out_bytes; }
  DX_HOST_DEVICE constexpr int scale_a(int stage) const {
    return staging(kConsumerWarpgroups) + stage * kScaleABytes;
  }
  DX_HOST_DEVICE constexpr int scale_b(int stage) const { return scale_a(stages) + stage * scale_b_bytes(); }
  DX_HOST_DEVICE constexpr int full_barrier(int stage) const { return scale_b(stages) + stage * 8; }
  DX_HOST_DEVICE constexpr int empty_barrier(int stage) const { return full_barrier(stages) + stage * 8; }
  DX_HOST_DEVICE constexpr int bytes() const { return empty_barrier(stages); }
  // What to request: the runtime only guarantees 16-byte alignment of dynamic shared memory.
  DX_HOST_DEVICE constexpr int request_bytes() const { return bytes() + kSwizzleAtomBytes; }
};

// As many ring stages as fit beside the output staging (at most kMaxStages).
DX_HOST_DEVICE constexpr SmemLayout layout_for(int out_bytes, int block_n) {
  const int per_stage = SmemLayout::kTileABytes + block_n * kBlockK + SmemLayout::kScaleABytes +
                        block_n * 4 + 2 * 8;
  const int fixed = kConsumerWarpgroups * kWgRows * block_n * out_bytes + kSwizzleAtomBytes;
  const int stages = (kMaxSharedBytes - fixed) / per_stage;
  return SmemLayout{stages < kMaxStages ? stages : kMaxStages, out_bytes, block_n};
}

}  // namespace dx::gemm
