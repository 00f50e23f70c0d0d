// Host model of the Tensor Memory Accelerator: the descriptor cuTensorMapEncodeTiled builds and the
// tile-mode bulk tensor copies between global memory and a block's shared memory (PTX ISA "Tensors",
// "cp.async.bulk.tensor"). Pure functions: completion, ordering and mbarriers belong to the caller.
#pragma once
#include <cuda.h>

#include <cstdint>
#include <type_traits>

#include "shared_view.h"

namespace dx::emu {

constexpr uint32_t kTensorMapMagic = 0x50414d54;  // "TMAP": tells an encoded map from stray bytes
constexpr uint32_t kMaxTensorRank = 5;

// What the emulated cuTensorMapEncodeTiled stores at the start of the opaque CUtensorMap.
// Entries past `rank` are zero.
struct TensorMap {
  uint32_t magic;
  uint8_t dtype;         // CUtensorMapDataType
  uint8_t elem_bytes;
  uint8_t rank;          // 1..5
  uint8_t interleave;    // CUtensorMapInterleave
  uint8_t swizzle;       // CUtensorMapSwizzle
  uint8_t l2_promotion;  // CUtensorMapL2promotion
  uint8_t oob_fill;      // CUtensorMapFloatOOBfill
  uint64_t global_address;
  uint64_t dims[kMaxTensorRank];     // elements, innermost first
  uint64_t strides[kMaxTensorRank];  // bytes between neighbours along dim i; strides[0] = elem_bytes
  uint16_t box[kMaxTensorRank];      // elements per box along dim i (<= 256)
  uint8_t elem_strides[kMaxTensorRank];
};
static_assert(sizeof(TensorMap) <= sizeof(CUtensorMap), "TensorMap must fit in the opaque CUtensorMap");
static_assert(std::is_trivially_copyable_v<TensorMap>, "maps travel by byte copy, like kernel parameters");

// cuTensorMapEncodeTiled (same signature as PFN_cuTensorMapEncodeTiled_v12000): checks the driver's
// documented constraints and returns CUDA_ERROR_INVALID_VALUE, leaving *map untouched, on a violation.
CUresult encode_tensor_map_tiled(CUtensorMap* map, CUtensorMapDataType dtype, cuuint32_t rank,
                                 void* global_address, const cuuint64_t* global_dim,
                                 const cuuint64_t* global_strides, const cuuint32_t* box_dim,
                                 const cuuint32_t* element_strides, CUtensorMapInterleave interleave,
                                 CUtensorMapSwizzle swizzle, CUtensorMapL2promotion l2_promotion,
                                 CUtensorMapFloatOOBfill oob_fill);

// Why this thread's last encode_tensor_map_tiled call failed, naming the parameter ("" after a success).
const char* last_tensor_map_error();

// The map inside a CUtensorMap; throws std::runtime_error if it was not made by encode_tensor_map_tiled.
const TensorMap& decode_tensor_map(const void* map);

// cp.async.bulk.tensor.Nd.shared::cluster.global.tile: copies the box whose first element is at
// `coords` (innermost first, signed) into shared memory at window address dst_addr, densely and
// swizzled; out-of-bounds elements are filled. Returns the bytes the copy counts toward the mbarrier's
// transaction count: the whole box, out-of-bounds elements included.
uint32_t tma_load_box(const TensorMap& m, const int32_t* coords, const SharedView& smem, uint32_t dst_addr);

// cp.async.bulk.tensor.Nd.global.shared::cta.tile: writes the box laid out (and swizzled) as a load
// would leave it at src_addr back to global memory at `coords`; out-of-bounds elements are not written.
void tma_store_box(const TensorMap& m, const int32_t* coords, const SharedView& smem, uint32_t src_addr);

}  // namespace dx::emu
