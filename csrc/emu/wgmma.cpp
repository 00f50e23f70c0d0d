#include "emu/wgmma.h"

#include <stdexcept>
#include <string>
#include <vector>

#include "emu/fp8.h"

namespace dx::emu {
namespace {

constexpr int kM = 64, kK = 32;  // bytes of K per instruction for 8-bit types

void check_n(int n) {
  // Matrix Shape: dense .e4m3 wgmma takes N = 8, 16, ..., 256.
  if (n < 8 || n > 256 || n % 8 != 0) {
    throw std::invalid_argument("wgmma m64nNk32: N = " + std::to_string(n) + " is not a multiple of 8 in [8, 256]");
  }
}

// Operand (rows x 32 bytes, K-major) read through its descriptor, converted to float.
std::vector<float> load_operand(uint64_t desc, int rows, const SharedView& smem, const char* what) {
  const MatrixDescriptor d = decode_matrix_descriptor(desc);
  std::vector<float> out(static_cast<size_t>(rows) * kK);
  for (int r = 0; r < rows; ++r) {
    for (int k = 0; k < kK; ++k) out[r * kK + k] = e4m3_to_f32(*smem.at(k_major_element_address(d, r, k), 1, what));
  }
  return out;
}

}  // namespace

MatrixDescriptor decode_matrix_descriptor(uint64_t desc) {
  // Matrix Descriptor Format: each 14-bit field holds matrix-descriptor-encode(x) = (x & 0x3FFFF) >> 4.
  auto field14 = [desc](int lo) { return static_cast<uint32_t>((desc >> lo) & 0x3FFF) << 4; };
  static constexpr int kSwizzleBytes[4] = {0, 128, 64, 32};  // bits 63-62: none, 128B, 64B, 32B
  return MatrixDescriptor{field14(0), field14(16), field14(32), static_cast<int>((desc >> 49) & 7),
                          kSwizzleBytes[desc >> 62]};
}

uint32_t k_major_element_address(const MatrixDescriptor& d, int row, int k_byte) {
  if (d.base_offset != 0) throw std::runtime_error("matrix base offset is not modeled");
  if (row < 0 || k_byte < 0 || (d.swizzle != 0 && k_byte >= d.swizzle)) {
    throw std::invalid_argument("K-major element (row " + std::to_string(row) + ", k byte " + std::to_string(k_byte) +
                                ") is outside the layout (swizzle " + std::to_string(d.swizzle) + " bytes)");
  }
  const uint32_t group = static_cast<uint32_t>(row / 8), r = static_cast<uint32_t>(row % 8), k = k_byte;
  if (d.swizzle == 0) {
    // Core matrix: 8 rows x 16 contiguous bytes; LBO steps along K, SBO along M/N.
    return d.start + group * d.stride_byte_offset + (k / 16) * d.leading_byte_offset + r * 16 + k % 16;
  }
  // Swizzle atom: 8 rows of W bytes; the W/16 16-byte chunks of each row are permuted by XOR with address
  // bits 7.. (the pattern repeats every 8*W bytes: 1024/512/256-byte boundaries for 128/64/32B).
  const uint32_t addr = d.start + group * d.stride_byte_offset + r * d.swizzle + k;
  const uint32_t mask = static_cast<uint32_t>(d.swizzle / 16 - 1);
  return addr ^ (((addr >> 7) & mask) << 4);
}

void wgmma_m64nNk32_e4m3(int n, uint64_t desc_a, uint64_t desc_b, const SharedView& smem, const float* d_in,
                         float* d_out) {
  check_n(n);
  const std::vector<float> a = load_operand(desc_a, kM, smem, "wgmma operand A");
  const std::vector<float> b = load_operand(desc_b, n, smem, "wgmma operand B");
  for (int i = 0; i < kM; ++i) {
    for (int j = 0; j < n; ++j) {
      float acc = 0.0f;
      for (int k = 0; k < kK; ++k) acc += a[i * kK + k] * b[j * kK + k];  // e4m3 products are exact in fp32
      const size_t o = static_cast<size_t>(i) * n + j;
      d_out[o] = (d_in ? d_in[o] : 0.0f) + acc;
    }
  }
}

void wgmma_accumulator_position(int n, int thread, int reg, int& row, int& col) {
  check_n(n);
  if (thread < 0 || thread >= 128 || reg < 0 || reg >= n / 2) {
    throw std::invalid_argument("wgmma accumulator: thread " + std::to_string(thread) + " register " +
                                std::to_string(reg) + " is outside a warpgroup's m64n" + std::to_string(n) + " f32 D");
  }
  // Warp w holds rows 16w..16w+15; lane/4 picks the row, lane%4 a column pair; registers go in fours:
  // (row, pair), (row + 8, pair), then the next 8-column block.
  const int warp = thread / 32, lane = thread % 32;
  row = 16 * warp + lane / 4 + 8 * ((reg >> 1) & 1);
  col = 8 * (reg >> 2) + 2 * (lane % 4) + (reg & 1);
}

}  // namespace dx::emu
