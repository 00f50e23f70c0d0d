// The TMA model: constraints from the CUDA driver API reference of cuTensorMapEncodeTiled, copy
// semantics from the PTX ISA ("Tensors": "Tensor Access Modes" tile mode, "Bounding Box",
// "Out-of-bound access", "Swizzling modes"; "cp.async.bulk.tensor").
#include "tensor_map.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

namespace dx::emu {
namespace {

thread_local std::string g_error;

CUresult reject(const std::string& why) {
  g_error = why;
  return CUDA_ERROR_INVALID_VALUE;
}

std::string entry(const char* array, uint32_t i, uint64_t value) {
  return std::string(array) + "[" + std::to_string(i) + "] = " + std::to_string(value);
}

// Element size of the byte-sized types; 0 for codes that are not modeled (the packed sub-byte ones).
uint32_t element_bytes(uint32_t dtype) {
  switch (dtype) {
    case CU_TENSOR_MAP_DATA_TYPE_UINT8: return 1;
    case CU_TENSOR_MAP_DATA_TYPE_UINT16:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT16:
    case CU_TENSOR_MAP_DATA_TYPE_BFLOAT16: return 2;
    case CU_TENSOR_MAP_DATA_TYPE_UINT32:
    case CU_TENSOR_MAP_DATA_TYPE_INT32:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT32:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT32_FTZ:
    case CU_TENSOR_MAP_DATA_TYPE_TFLOAT32:
    case CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ: return 4;
    case CU_TENSOR_MAP_DATA_TYPE_UINT64:
    case CU_TENSOR_MAP_DATA_TYPE_INT64:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT64: return 8;
    default: return 0;
  }
}

bool is_float(uint32_t dtype) {
  return dtype >= CU_TENSOR_MAP_DATA_TYPE_FLOAT16 && dtype <= CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ;
}

// Bytes of the span a swizzle mode permutes within (0 for none).
uint32_t swizzle_span(uint32_t swizzle) {
  return swizzle == CU_TENSOR_MAP_SWIZZLE_NONE ? 0 : 16u << swizzle;
}

// Swizzling XORs the 16-byte chunk index (address bits 4..6) with the 128-byte row index (bits 7..9),
// masked to the span's chunk count, on the absolute shared address.
uint32_t swizzled(uint32_t addr, uint32_t swizzle) {
  const uint32_t mask = swizzle == CU_TENSOR_MAP_SWIZZLE_NONE ? 0 : swizzle_span(swizzle) / 16 - 1;
  return addr ^ (((addr >> 7) & mask) << 4);
}

// The 16 bytes an out-of-bounds chunk reads as: zeros, or for float types with
// NAN_REQUEST_ZERO_FMA a NaN per element (the exact NaN is undocumented; the GPU canonical one is used).
std::array<uint8_t, 16> fill_chunk(const TensorMap& m) {
  std::array<uint8_t, 16> fill{};
  if (m.oob_fill == CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA) {
    const uint64_t nan = (~uint64_t{0}) >> (65 - 8 * m.elem_bytes);  // 0x7fff, 0x7fffffff, ...
    for (uint32_t i = 0; i < 16; i += m.elem_bytes) std::memcpy(fill.data() + i, &nan, m.elem_bytes);
  }
  return fill;
}

// Rejects what the copies do not model and a shared address the instruction may not take.
void check_copy(const TensorMap& m, uint32_t smem_addr, const char* op) {
  if (m.interleave != CU_TENSOR_MAP_INTERLEAVE_NONE) {
    throw std::runtime_error(std::string(op) + ": interleaved layouts are not modeled");
  }
  // The driver ignores elementStrides[0] without interleave, so only the outer ones matter.
  for (uint32_t i = 1; i < m.rank; ++i) {
    if (m.elem_strides[i] != 1) throw std::runtime_error("element strides other than 1 are not modeled");
  }
  const uint32_t align = m.swizzle == CU_TENSOR_MAP_SWIZZLE_NONE ? 16 : 128;
  if (smem_addr % align != 0) {
    throw std::runtime_error(std::string(op) + ": shared address 0x" + SharedView::hex(smem_addr) +
                             " is not " + std::to_string(align) + "-byte aligned (swizzle mode " +
                             std::to_string(m.swizzle) + ")");
  }
}

// Walks the box as shared memory holds it: dense rows of box[0] elements, each cut into 16-byte chunks.
// Calls chunk(smem, begin, end, global) per chunk with its physical (swizzled) shared bytes, the
// in-bounds byte range [begin, end) within it, and the global address of byte `begin` (when begin < end).
template <class Chunk>
void for_each_chunk(const TensorMap& m, const int32_t* coords, const SharedView& smem, uint32_t base,
                    const char* op, Chunk&& chunk) {
  const int64_t elem = m.elem_bytes;
  const int64_t row_bytes = int64_t{m.box[0]} * elem;
  const int64_t c0 = coords[0];
  const int64_t lo = std::clamp<int64_t>(-c0, 0, m.box[0]) * elem;
  const int64_t hi = std::clamp<int64_t>(int64_t(m.dims[0]) - c0, 0, m.box[0]) * elem;
  uint64_t rows = 1;
  for (uint32_t i = 1; i < m.rank; ++i) rows *= m.box[i];
  auto* global = reinterpret_cast<uint8_t*>(m.global_address);
  uint32_t idx[kMaxTensorRank] = {};  // position of the current row within the box, dims 1..rank-1
  for (uint64_t r = 0; r < rows; ++r) {
    bool in_bounds = true;
    int64_t offset = c0 * elem;  // global byte offset of the row's first element
    for (uint32_t i = 1; i < m.rank; ++i) {
      const int64_t c = int64_t{coords[i]} + idx[i];
      in_bounds = in_bounds && c >= 0 && c < int64_t(m.dims[i]);
      offset += c * int64_t(m.strides[i]);
    }
    const int64_t row_lo = in_bounds ? lo : 0, row_hi = in_bounds ? std::max(hi, lo) : 0;
    for (int64_t k = 0; k < row_bytes; k += 16) {
      const uint32_t addr = swizzled(base + uint32_t(int64_t(r) * row_bytes + k), m.swizzle);
      const int64_t b = std::clamp(row_lo - k, int64_t{0}, int64_t{16});
      const int64_t e = std::clamp(row_hi - k, b, int64_t{16});
      chunk(smem.at(addr, 16, op), uint32_t(b), uint32_t(e), b < e ? global + (offset + k + b) : nullptr);
    }
    for (uint32_t i = 1; i < m.rank && ++idx[i] == m.box[i]; ++i) idx[i] = 0;
  }
}

}  // namespace

CUresult encode_tensor_map_tiled(CUtensorMap* map, CUtensorMapDataType dtype, cuuint32_t rank,
                                 void* global_address, const cuuint64_t* global_dim,
                                 const cuuint64_t* global_strides, const cuuint32_t* box_dim,
                                 const cuuint32_t* element_strides, CUtensorMapInterleave interleave,
                                 CUtensorMapSwizzle swizzle, CUtensorMapL2promotion l2_promotion,
                                 CUtensorMapFloatOOBfill oob_fill) {
  const auto address = reinterpret_cast<uintptr_t>(global_address);
  if (map == nullptr) return reject("tensorMap is null");
  if (reinterpret_cast<uintptr_t>(map) % 64 != 0) {
    return reject("tensorMap = 0x" + SharedView::hex(reinterpret_cast<uintptr_t>(map)) +
                  " is not 64-byte aligned");
  }
  const uint32_t elem = element_bytes(dtype);
  if (elem == 0) {
    return reject("tensorDataType = " + std::to_string(dtype) +
                  (dtype <= CU_TENSOR_MAP_DATA_TYPE_16U6_ALIGN16B ? " (a packed sub-byte type) is not modeled"
                                                                   : " is not a CUtensorMapDataType"));
  }
  if (interleave > CU_TENSOR_MAP_INTERLEAVE_32B) {
    return reject("interleave = " + std::to_string(interleave) + " is not a CUtensorMapInterleave");
  }
  if (swizzle > CU_TENSOR_MAP_SWIZZLE_128B) {
    return reject("swizzle = " + std::to_string(swizzle) + " is not modeled (NONE, 32B, 64B, 128B are)");
  }
  if (l2_promotion > CU_TENSOR_MAP_L2_PROMOTION_L2_256B) {
    return reject("l2Promotion = " + std::to_string(l2_promotion) + " is not a CUtensorMapL2promotion");
  }
  if (oob_fill > CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA) {
    return reject("oobFill = " + std::to_string(oob_fill) + " is not a CUtensorMapFloatOOBfill");
  }
  if (oob_fill == CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA && !is_float(dtype)) {
    return reject("oobFill = NAN_REQUEST_ZERO_FMA needs a floating-point tensorDataType, got " +
                  std::to_string(dtype));
  }
  if (interleave == CU_TENSOR_MAP_INTERLEAVE_32B && swizzle != CU_TENSOR_MAP_SWIZZLE_32B) {
    return reject("swizzle = " + std::to_string(swizzle) + " must be SWIZZLE_32B with interleave 32B");
  }
  if (rank < 1 || rank > kMaxTensorRank) {
    return reject("tensorRank = " + std::to_string(rank) + " is outside [1, 5]");
  }
  if (interleave != CU_TENSOR_MAP_INTERLEAVE_NONE && rank < 3) {
    return reject("tensorRank = " + std::to_string(rank) + " must be >= 3 with interleave");
  }
  const uint32_t align = interleave == CU_TENSOR_MAP_INTERLEAVE_32B ? 32 : 16;
  if (address % align != 0) {
    return reject("globalAddress = 0x" + SharedView::hex(address) + " is not " + std::to_string(align) +
                  "-byte aligned");
  }
  if (global_dim == nullptr) return reject("globalDim is null");
  if (rank > 1 && global_strides == nullptr) return reject("globalStrides is null");
  if (box_dim == nullptr) return reject("boxDim is null");
  if (element_strides == nullptr) return reject("elementStrides is null");
  for (uint32_t i = 0; i < rank; ++i) {
    if (global_dim[i] == 0 || global_dim[i] > (uint64_t{1} << 32)) {
      return reject(entry("globalDim", i, global_dim[i]) + " is outside (0, 2^32]");
    }
  }
  for (uint32_t i = 0; i + 1 < rank; ++i) {
    if (global_strides[i] % align != 0) {
      return reject(entry("globalStrides", i, global_strides[i]) + " is not a multiple of " +
                    std::to_string(align));
    }
    if (global_strides[i] >= (uint64_t{1} << 40)) {
      return reject(entry("globalStrides", i, global_strides[i]) + " is not below 2^40");
    }
  }
  for (uint32_t i = 0; i < rank; ++i) {
    if (box_dim[i] == 0) return reject(entry("boxDim", i, 0) + " must be non-zero");
    if (box_dim[i] > 256) return reject(entry("boxDim", i, box_dim[i]) + " exceeds 256");
  }
  const uint32_t inner_bytes = box_dim[0] * elem;
  if (interleave == CU_TENSOR_MAP_INTERLEAVE_NONE && inner_bytes % 16 != 0) {
    return reject(entry("boxDim", 0, box_dim[0]) + ": the inner box row of " + std::to_string(inner_bytes) +
                  " bytes is not a multiple of 16");
  }
  if (interleave == CU_TENSOR_MAP_INTERLEAVE_NONE && swizzle != CU_TENSOR_MAP_SWIZZLE_NONE &&
      inner_bytes > swizzle_span(swizzle)) {
    return reject(entry("boxDim", 0, box_dim[0]) + ": the inner box row of " + std::to_string(inner_bytes) +
                  " bytes exceeds the " + std::to_string(swizzle_span(swizzle)) + "-byte swizzle span");
  }
  for (uint32_t i = 0; i < rank; ++i) {
    if (element_strides[i] == 0 || element_strides[i] > 8) {
      return reject(entry("elementStrides", i, element_strides[i]) + " is outside [1, 8]");
    }
  }

  TensorMap t{};
  t.magic = kTensorMapMagic;
  t.dtype = uint8_t(dtype);
  t.elem_bytes = uint8_t(elem);
  t.rank = uint8_t(rank);
  t.interleave = uint8_t(interleave);
  t.swizzle = uint8_t(swizzle);
  t.l2_promotion = uint8_t(l2_promotion);
  t.oob_fill = uint8_t(oob_fill);
  t.global_address = address;
  for (uint32_t i = 0; i < rank; ++i) {
    t.dims[i] = global_dim[i];
    t.strides[i] = i == 0 ? elem : global_strides[i - 1];
    t.box[i] = uint16_t(box_dim[i]);
    t.elem_strides[i] = uint8_t(element_strides[i]);
  }
  std::memset(map, 0, sizeof(*map));
  new (map) TensorMap(t);
  g_error.clear();
  return CUDA_SUCCESS;
}

const char* last_tensor_map_error() { return g_error.c_str(); }

const TensorMap& decode_tensor_map(const void* map) {
  uint32_t magic = 0;
  if (map != nullptr && reinterpret_cast<uintptr_t>(map) % alignof(TensorMap) == 0) {
    std::memcpy(&magic, map, sizeof(magic));
  }
  if (magic != kTensorMapMagic) {
    throw std::runtime_error("tensor map at 0x" + SharedView::hex(reinterpret_cast<uintptr_t>(map)) +
                             " is not a tensor map encoded by cuTensorMapEncodeTiled");
  }
  return *std::launder(reinterpret_cast<const TensorMap*>(map));
}

uint32_t tma_load_box(const TensorMap& m, const int32_t* coords, const SharedView& smem, uint32_t dst_addr) {
  const char* op = "cp.async.bulk.tensor (load)";
  check_copy(m, dst_addr, op);
  const std::array<uint8_t, 16> fill = fill_chunk(m);
  for_each_chunk(m, coords, smem, dst_addr, op, [&](uint8_t* s, uint32_t b, uint32_t e, const uint8_t* g) {
    if (b != 0 || e != 16) std::memcpy(s, fill.data(), 16);
    if (b < e) std::memcpy(s + b, g, e - b);
  });
  uint64_t bytes = m.elem_bytes;
  for (uint32_t i = 0; i < m.rank; ++i) bytes *= m.box[i];
  return uint32_t(bytes);
}

void tma_store_box(const TensorMap& m, const int32_t* coords, const SharedView& smem, uint32_t src_addr) {
  const char* op = "cp.async.bulk.tensor (store)";
  check_copy(m, src_addr, op);
  for_each_chunk(m, coords, smem, src_addr, op, [](uint8_t* s, uint32_t b, uint32_t e, uint8_t* g) {
    if (b < e) std::memcpy(g, s + b, e - b);
  });
}

}  // namespace dx::emu
