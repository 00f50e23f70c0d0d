// wgmma shared-memory matrix descriptors for K-major e4m3 tiles written by TMA with 128B
// swizzle: rows of 128 bytes (one K block), 8-row swizzle atoms 1024 bytes apart.
#pragma once
#include <cstdint>

#include "deepseek_ext/common.cuh"
#include "deepseek_ext/gemm/config.cuh"

namespace dx::gemm {

constexpr uint64_t kDescSwizzle128B = 1;  // descriptor bits 62-63

// Descriptor fields (PTX ISA "matrix descriptor"): start address >> 4 in bits 0-13, leading
// byte offset >> 4 in 16-29 (unused for swizzled K-major; 1 by convention), stride byte offset
// >> 4 in 32-45 (distance between 8-row atoms), base offset 0 in 49-51 (atoms 1024-aligned),
// swizzle mode in 62-63.
DX_HOST_DEVICE uint64_t smem_desc_k_major_sw128(uint32_t smem_addr) {
  return (static_cast<uint64_t>((smem_addr & 0x3FFFF) >> 4)) | (uint64_t{1} << 16) |
         (static_cast<uint64_t>(kSwizzleAtomBytes >> 4) << 32) | (kDescSwizzle128B << 62);
}

// The k-th 32-wide K slice of a tile starts 32 bytes further along the (swizzled) row: the
// hardware applies the swizzle to the final address, so only the start address moves.
DX_HOST_DEVICE uint64_t smem_desc_advance_k(uint64_t desc, int k_slice) {
  return desc + static_cast<uint64_t>((k_slice * kWgmmaK) >> 4);
}

}  // namespace dx::gemm
