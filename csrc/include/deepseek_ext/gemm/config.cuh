// Tile shapes, thread roles and shared-memory layout of the FP8 GEMM (host and device).
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"

namespace dx::gemm {

constexpr int kBlockK = 128;  // one scale block: the partial sum is promoted every K block
constexpr int kWgmmaK = 32;   // K of one fp8 wgmma
constexpr int kWgRows = 64;   // rows of the tile owned by one consumer warpgroup (wgmma M)
constexpr int kWarpgroupThreads = 128;
constexpr int kProducerRegisters = 40;   // setmaxnreg budgets with two consumer warpgroups:
constexpr int kConsumerRegisters = 232;  // 40*128 + 232*256 <= 64K
constexpr int kSwizzleBytes = 128;  // TMA/wgmma 128B swizzle: one 128-byte row per K block
constexpr int kSwizzleAtomBytes = 8 * kSwizzleBytes;  // 8 rows: the swizzle pattern's period
constexpr int kMaxSharedBytes = 232448;  // sm_90 opt-in dynamic shared memory per block
constexpr int kMinStages = 4;
constexpr int kMaxStages = 8;
constexpr int kBlockNStep = 16;     // tile widths: multiples of 16 (a multicast half is whole 8-row atoms)
constexpr int kMaxBlockN = 192;     // acc + partial = 192 registers: all a lone consumer warpgroup can hold
constexpr int kMaxBlockNTwoConsumers = 176;  // 232 registers each: 192 spills (ptxas)
constexpr int kMaxBlockNScaledRows = 128;    // 1x128 B scales also hold kBlockN / 4 registers
constexpr int kScaleBChunk = 64;    // K blocks of 128x128 B scales staged in shared memory at a time
constexpr int kScaleBRows = 3;      // 128-column scale blocks a tile of <= 192 columns can touch

static_assert(kBlockK == kQuantGroup && kBlockK == kSwizzleBytes, "one e4m3 K block = one 128B row");

DX_HOST_DEVICE constexpr int consumer_warpgroups(int block_m) { return block_m / kWgRows; }
DX_HOST_DEVICE constexpr int kernel_threads(int block_m) {
  return (consumer_warpgroups(block_m) + 1) * kWarpgroupThreads;  // + one producer warpgroup
}

// Which operand a 2-CTA cluster shares: its two tiles differ in N (A shared) or in M (B shared),
// and each CTA loads half of the shared tile, multicast to both.
enum class Multicast : int { kNone = 0, kA = 1, kB = 2 };

DX_HOST_DEVICE constexpr int cluster_size(Multicast m) { return m == Multicast::kNone ? 1 : 2; }

// One kernel variant's tile shape and cluster use (what the heuristic chooses).
struct GemmConfig {
  int block_m;  // 64 (one consumer warpgroup) or 128 (two)
  int block_n;  // a multiple of kBlockNStep up to kMaxBlockN
  Multicast multicast;
};

// Byte offsets inside the (1024-aligned) dynamic shared memory, for a ring of `stages` stages,
// tiles block_m x block_n and output elements of `out_bytes` bytes.
struct SmemLayout {
  int stages;
  int out_bytes;
  int block_m;
  int block_n;

  DX_HOST_DEVICE constexpr int tile_a_bytes() const { return block_m * kBlockK; }
  DX_HOST_DEVICE constexpr int tile_b_bytes() const { return block_n * kBlockK; }
  DX_HOST_DEVICE constexpr int scale_a_bytes() const { return block_m * 4; }
  DX_HOST_DEVICE constexpr int scale_b_bytes() const { return static_cast<int>(align_up(block_n * 4, 128)); }
  DX_HOST_DEVICE constexpr int a(int stage) const { return stage * tile_a_bytes(); }
  DX_HOST_DEVICE constexpr int b(int stage) const { return stages * tile_a_bytes() + stage * tile_b_bytes(); }
  // Output staging: per consumer warpgroup, its 64 x block_n tile as TMA-store boxes (staging.cuh).
  DX_HOST_DEVICE constexpr int staging(int wg) const {
    return stages * (tile_a_bytes() + tile_b_bytes()) + wg * staging_bytes_per_wg();
  }
  DX_HOST_DEVICE constexpr int staging_bytes_per_wg() const {
    return static_cast<int>(align_up(kWgRows * block_n * out_bytes, kSwizzleAtomBytes));
  }
  // Per consumer warpgroup: kScaleBRows x kScaleBChunk 128x128 B scales of its tile.
  DX_HOST_DEVICE constexpr int scale_b_blocks(int wg) const {
    return staging(consumer_warpgroups(block_m)) + wg * kScaleBRows * kScaleBChunk * 4;
  }
  DX_HOST_DEVICE constexpr int scale_a(int stage) const {
    return scale_b_blocks(consumer_warpgroups(block_m)) + stage * scale_a_bytes();
  }
  DX_HOST_DEVICE constexpr int scale_b(int stage) const { return scale_a(stages) + stage * scale_b_bytes(); }
  DX_HOST_DEVICE constexpr int full_barrier(int stage) const { return scale_b(stages) + stage * 8; }
  DX_HOST_DEVICE constexpr int empty_barrier(int stage) const { return full_barrier(stages) + stage * 8; }
  DX_HOST_DEVICE constexpr int bytes() const { return empty_barrier(stages); }
  // What to request: the runtime only guarantees 16-byte alignment of dynamic shared memory.
  DX_HOST_DEVICE constexpr int request_bytes() const { return bytes() + kSwizzleAtomBytes; }
};

// As many ring stages as fit beside the output staging (at most kMaxStages).
DX_HOST_DEVICE constexpr SmemLayout layout_for(int out_bytes, int block_m, int block_n) {
  const SmemLayout none{0, out_bytes, block_m, block_n};
  const int per_stage = none.tile_a_bytes() + none.tile_b_bytes() + none.scale_a_bytes() + none.scale_b_bytes() + 2 * 8;
  const int stages = (kMaxSharedBytes - none.request_bytes()) / per_stage;
  return SmemLayout{stages < kMaxStages ? stages : kMaxStages, out_bytes, block_m, block_n};
}

// The widest tile without register spills (ptxas -v of every variant).
DX_HOST_DEVICE constexpr int max_block_n(int block_m, bool sb_per_row) {
  return sb_per_row ? kMaxBlockNScaledRows : (block_m == 64 ? kMaxBlockN : kMaxBlockNTwoConsumers);
}

// The variants compiled: 64/128-row tiles, widths in steps of 16 up to max_block_n, and a ring
// of at least kMinStages.
DX_HOST_DEVICE constexpr bool instantiated(int out_bytes, bool sb_per_row, int block_m, int block_n) {
  return (block_m == 64 || block_m == 128) && block_n >= kBlockNStep && block_n % kBlockNStep == 0 &&
         block_n <= max_block_n(block_m, sb_per_row) && layout_for(out_bytes, block_m, block_n).stages >= kMinStages;
}

}  // namespace dx::gemm
