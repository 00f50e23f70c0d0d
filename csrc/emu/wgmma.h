// Host models of wgmma.mma_async's shared-memory operands (PTX ISA "Asynchronous Warpgroup Level Matrix
// Shared Memory Layout": "Matrix Descriptor Format", "Shared Memory Matrix Layout", "Strides") and of the
// dense m64nNk32 e4m3 x e4m3 -> f32 MMA, as pure functions.
#pragma once
#include <cstdint>

#include "emu/shared_view.h"

namespace dx::emu {

// Decoded 64-bit matrix descriptor; addresses and offsets in bytes.
struct MatrixDescriptor {
  uint32_t start;               // shared-window byte address of the matrix
  uint32_t leading_byte_offset;
  uint32_t stride_byte_offset;
  int base_offset;              // "matrix base offset", 3 bits
  int swizzle;                  // swizzle width in bytes: 0 (none), 32, 64 or 128
};

MatrixDescriptor decode_matrix_descriptor(uint64_t desc);

// Shared-window byte address of byte k_byte of row `row` (the M or N index) of a K-major operand in the
// ISA's canonical layouts. No swizzle: 8x16-byte core matrices, LBO apart along K and SBO apart per 8 rows;
// swizzle W: 8-row atoms of W-byte rows, SBO apart per 8 rows, k_byte < W, the XOR taken on the absolute
// address. Throws std::runtime_error for a non-zero base offset, std::invalid_argument for a bad index.
uint32_t k_major_element_address(const MatrixDescriptor& d, int row, int k_byte);

// wgmma.mma_async.sync.aligned.m64nNk32.f32.e4m3.e4m3 with both operands K-major in shared memory:
// D[64 x n] = (d_in ? d_in : 0) + A[64 x 32] * B[n x 32]^T, row-major d_in/d_out (they may alias).
// Each output sums its 32 exact products in fp32 in k order, then adds d_in. n: multiple of 8 in [8, 256],
// else std::invalid_argument; an operand outside `smem` throws std::out_of_range.
void wgmma_m64nNk32_e4m3(int n, uint64_t desc_a, uint64_t desc_b, const SharedView& smem, const float* d_in,
                         float* d_out);

// (row, col) of D held by register `reg` (0..n/2-1) of thread `thread` (0..127) of the warpgroup, for
// f32 accumulators of m64nNk* (ISA figure "WGMMA .m64nNk32 register fragment layout for accumulator matrix D").
void wgmma_accumulator_position(int n, int thread, int reg, int& row, int& col);

}  // namespace dx::emu
