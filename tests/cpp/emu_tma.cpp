// Checks the TMA model (csrc/emu/tensor_map.*) against the CUDA driver API reference of
// cuTensorMapEncodeTiled and the PTX ISA's cp.async.bulk.tensor in tile mode: each documented encoder
// constraint, out-of-bounds fill, the transaction byte count, the swizzle patterns and store clipping.
// Expected values come from element-wise references written here, never from the model's own walk.
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "check.h"
#include "emu/tensor_map.h"

using namespace dx::emu;

namespace {

std::mt19937 rng(20240607);

// A 256-byte-aligned global buffer of random bytes in [1, 255], so a zero (unwritten or wrongly
// zero-filled) byte never matches by chance.
struct Buffer {
  std::unique_ptr<uint8_t, decltype(&std::free)> mem{nullptr, &std::free};
  size_t size = 0;
  explicit Buffer(size_t n)
      : mem(static_cast<uint8_t*>(std::aligned_alloc(256, (n + 255) / 256 * 256)), &std::free), size(n) {
    std::uniform_int_distribution<int> byte(1, 255);
    for (size_t i = 0; i < n; ++i) mem.get()[i] = uint8_t(byte(rng));
  }
  uint8_t* data() const { return mem.get(); }
};

// A block's shared memory at a non-zero window base, pre-filled with random bytes.
struct Smem {
  static constexpr uint32_t kBase = 0x10000;
  Buffer bytes;
  SharedView view;
  explicit Smem(uint32_t size, uint32_t base = kBase) : bytes(size), view{bytes.data(), base, size} {}
  uint8_t* at(uint32_t addr) const { return bytes.data() + (addr - view.window_base); }
};

// The tensor as the test describes it: element size, dims and byte strides (strides[0] = element size).
struct Tensor {
  uint32_t elem, rank;
  uint64_t dims[5], strides[5];
  uint32_t box[5];
  uint8_t* base;
};

uint64_t box_elems(const Tensor& t) {
  uint64_t n = 1;
  for (uint32_t i = 0; i < t.rank; ++i) n *= t.box[i];
  return n;
}

// Global address of box element `e` (row-major over the box, dim 0 fastest) at `coords`, or nullptr
// when it lies outside the tensor.
uint8_t* element_address(const Tensor& t, const int32_t* coords, uint64_t e) {
  int64_t offset = 0;
  for (uint32_t i = 0; i < t.rank; ++i) {
    const int64_t c = int64_t{coords[i]} + int64_t(e % t.box[i]);
    e /= t.box[i];
    if (c < 0 || c >= int64_t(t.dims[i])) return nullptr;
    offset += c * int64_t(t.strides[i]);
  }
  return t.base + offset;
}

// The dense box a tile-mode load must produce: in-bounds elements copied, the rest zero.
std::vector<uint8_t> reference_box(const Tensor& t, const int32_t* coords) {
  std::vector<uint8_t> out(box_elems(t) * t.elem, 0);
  for (uint64_t e = 0; e < box_elems(t); ++e) {
    if (const uint8_t* g = element_address(t, coords, e)) std::memcpy(&out[e * t.elem], g, t.elem);
  }
  return out;
}

CUtensorMap encode_or_fail(const Tensor& t, CUtensorMapDataType dtype, CUtensorMapSwizzle swizzle,
                           CUtensorMapFloatOOBfill fill = CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
                           const cuuint32_t* elem_strides = nullptr) {
  const cuuint32_t ones[5] = {1, 1, 1, 1, 1};
  CUtensorMap map{};
  const CUresult rc =
      encode_tensor_map_tiled(&map, dtype, t.rank, t.base, t.dims, t.strides + 1, t.box,
                              elem_strides ? elem_strides : ones, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                              CU_TENSOR_MAP_L2_PROMOTION_L2_128B, fill);
  if (rc != CUDA_SUCCESS) std::printf("unexpected encode failure: %s\n", last_tensor_map_error());
  CHECK(rc == CUDA_SUCCESS);
  return map;
}

template <class F>
bool throws_with(F&& f, const char* needle) {
  try {
    f();
  } catch (const std::exception& e) {
    if (std::strstr(e.what(), needle)) return true;
    std::printf("  exception without \"%s\": %s\n", needle, e.what());
    return false;
  }
  std::printf("  no exception (wanted \"%s\")\n", needle);
  return false;
}

// ---- cuTensorMapEncodeTiled constraints ------------------------------------------------------------

// A valid 3D fp16 map; each case breaks one documented constraint.
struct Args {
  CUtensorMap* map;
  CUtensorMapDataType dtype = CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  cuuint32_t rank = 3;
  void* address;
  cuuint64_t dims[5] = {64, 32, 4, 2, 2};
  cuuint64_t strides[4] = {128, 4096, 16384, 32768};
  cuuint32_t box[5] = {64, 16, 2, 1, 1};
  cuuint32_t elem_strides[5] = {1, 1, 1, 1, 1};
  CUtensorMapInterleave interleave = CU_TENSOR_MAP_INTERLEAVE_NONE;
  CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_128B;
  CUtensorMapL2promotion l2 = CU_TENSOR_MAP_L2_PROMOTION_L2_128B;
  CUtensorMapFloatOOBfill fill = CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE;
  bool null_dims = false, null_strides = false, null_box = false, null_elem_strides = false;

  CUresult encode() const {
    return encode_tensor_map_tiled(map, dtype, rank, address, null_dims ? nullptr : dims,
                                   null_strides ? nullptr : strides, null_box ? nullptr : box,
                                   null_elem_strides ? nullptr : elem_strides, interleave, swizzle, l2, fill);
  }
};

void expect_rejected(const Args& a, const char* needle, int line) {
  const CUresult rc = a.encode();
  const bool ok = rc == CUDA_ERROR_INVALID_VALUE && std::strstr(last_tensor_map_error(), needle) != nullptr;
  if (!ok) std::printf("line %d: want rejection naming \"%s\", got rc=%d \"%s\"\n", line, needle, int(rc),
                       last_tensor_map_error());
  CHECK(ok);
}

void expect_accepted(const Args& a, int line) {
  const CUresult rc = a.encode();
  if (rc != CUDA_SUCCESS) {
    std::printf("line %d: want acceptance, got \"%s\"\n", line, last_tensor_map_error());
  }
  CHECK(rc == CUDA_SUCCESS && std::strlen(last_tensor_map_error()) == 0);
}

#define REJECT(field_change, needle)   \
  do {                                 \
    Args a = base;                     \
    field_change;                      \
    expect_rejected(a, needle, __LINE__); \
  } while (0)
#define ACCEPT(field_change)           \
  do {                                 \
    Args a = base;                     \
    field_change;                      \
    expect_accepted(a, __LINE__);      \
  } while (0)

void test_encoder_constraints() {
  Buffer global(1 << 16);
  alignas(128) static uint8_t storage[2 * sizeof(CUtensorMap)];
  Args base;
  base.map = reinterpret_cast<CUtensorMap*>(storage);
  base.address = global.data();

  // A valid map is accepted and decodes to what was asked for.
  ACCEPT((void)0);
  const TensorMap& m = decode_tensor_map(base.map);
  CHECK(m.rank == 3 && m.elem_bytes == 2 && m.dtype == CU_TENSOR_MAP_DATA_TYPE_FLOAT16);
  CHECK(m.global_address == reinterpret_cast<uintptr_t>(global.data()));
  CHECK(m.dims[0] == 64 && m.dims[1] == 32 && m.dims[2] == 4);
  CHECK(m.strides[0] == 2 && m.strides[1] == 128 && m.strides[2] == 4096);
  CHECK(m.box[0] == 64 && m.box[1] == 16 && m.box[2] == 2);
  CHECK(m.swizzle == CU_TENSOR_MAP_SWIZZLE_128B && m.interleave == CU_TENSOR_MAP_INTERLEAVE_NONE);

  // tensorMap: non-null, 64-byte aligned.
  REJECT(a.map = nullptr, "tensorMap");
  REJECT(a.map = reinterpret_cast<CUtensorMap*>(storage + 32), "tensorMap = 0x");
  ACCEPT(a.map = reinterpret_cast<CUtensorMap*>(storage + 64));
  // tensorDataType: the packed sub-byte codes are not modeled. (Codes outside an enum's range cannot
  // be formed in C++ without undefined behaviour, so no test passes them.)
  REJECT(a.dtype = CU_TENSOR_MAP_DATA_TYPE_16U4_ALIGN8B, "tensorDataType = 13");
  REJECT(a.dtype = CU_TENSOR_MAP_DATA_TYPE_16U6_ALIGN16B, "tensorDataType = 15");
  ACCEPT(a.dtype = CU_TENSOR_MAP_DATA_TYPE_UINT8; a.box[0] = 128);
  ACCEPT(a.dtype = CU_TENSOR_MAP_DATA_TYPE_FLOAT64; a.box[0] = 16);
  // tensorRank: in [1, 5]; >= 3 with interleave.
  REJECT(a.rank = 0, "tensorRank = 0");
  REJECT(a.rank = 6, "tensorRank = 6");
  ACCEPT(a.rank = 1);
  ACCEPT(a.rank = 5);
  REJECT(a.rank = 2; a.interleave = CU_TENSOR_MAP_INTERLEAVE_16B, "tensorRank = 2");
  ACCEPT(a.interleave = CU_TENSOR_MAP_INTERLEAVE_16B);
  // globalAddress: 16-byte aligned; 32 with interleave 32B.
  REJECT(a.address = global.data() + 8, "globalAddress = 0x");
  ACCEPT(a.address = global.data() + 16);
  auto interleave32 = [](Args& a) {
    a.interleave = CU_TENSOR_MAP_INTERLEAVE_32B;
    a.swizzle = CU_TENSOR_MAP_SWIZZLE_32B;
  };
  ACCEPT(interleave32(a));
  REJECT(interleave32(a); a.address = global.data() + 16, "globalAddress = 0x");
  // globalDim: in (0, 2^32].
  REJECT(a.dims[1] = 0, "globalDim[1] = 0");
  REJECT(a.dims[2] = (uint64_t{1} << 32) + 1, "globalDim[2] = 4294967297");
  ACCEPT(a.dims[2] = uint64_t{1} << 32);
  // globalStrides: multiples of 16 (32 with interleave 32B), below 2^40.
  REJECT(a.strides[0] = 136, "globalStrides[0] = 136");
  REJECT(a.strides[1] = uint64_t{1} << 40, "globalStrides[1] = 1099511627776");
  ACCEPT(a.strides[1] = (uint64_t{1} << 40) - 16);
  REJECT(interleave32(a); a.strides[0] = 144, "globalStrides[0] = 144");
  // boxDim: in (0, 256]; the inner row a multiple of 16 bytes without interleave.
  REJECT(a.box[1] = 0, "boxDim[1] = 0");
  REJECT(a.box[1] = 300, "boxDim[1] = 300 exceeds 256");
  REJECT(a.box[2] = 257, "boxDim[2] = 257 exceeds 256");
  ACCEPT(a.box[1] = 256);
  REJECT(a.swizzle = CU_TENSOR_MAP_SWIZZLE_NONE; a.box[0] = 12, "boxDim[0] = 12");
  ACCEPT(a.interleave = CU_TENSOR_MAP_INTERLEAVE_16B; a.swizzle = CU_TENSOR_MAP_SWIZZLE_NONE; a.box[0] = 12);
  // Swizzle: the inner box row fits the swizzle span (32, 64, 128 bytes).
  REJECT(a.box[0] = 72, "boxDim[0] = 72");  // 144 bytes > 128
  REJECT(a.swizzle = CU_TENSOR_MAP_SWIZZLE_64B; a.box[0] = 40, "boxDim[0] = 40");
  ACCEPT(a.swizzle = CU_TENSOR_MAP_SWIZZLE_64B; a.box[0] = 32);
  REJECT(a.swizzle = CU_TENSOR_MAP_SWIZZLE_32B; a.box[0] = 24, "boxDim[0] = 24");
  ACCEPT(a.swizzle = CU_TENSOR_MAP_SWIZZLE_32B; a.box[0] = 16);
  ACCEPT(a.swizzle = CU_TENSOR_MAP_SWIZZLE_NONE; a.box[0] = 256);
  // elementStrides: in (0, 8].
  REJECT(a.elem_strides[2] = 0, "elementStrides[2] = 0");
  REJECT(a.elem_strides[2] = 9, "elementStrides[2] = 9");
  ACCEPT(a.elem_strides[2] = 8);
  // The enums, and their documented combinations.
  REJECT(a.interleave = CUtensorMapInterleave(3), "interleave = 3");
  REJECT(a.swizzle = CUtensorMapSwizzle(7), "swizzle = 7");
  REJECT(a.swizzle = CU_TENSOR_MAP_SWIZZLE_128B_ATOM_32B, "swizzle = 4");  // sm_100 modes: not modeled
  ACCEPT(a.l2 = CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
  const auto nan_fill = CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA;
  REJECT(a.dtype = CU_TENSOR_MAP_DATA_TYPE_UINT16; a.fill = nan_fill, "oobFill");
  ACCEPT(a.dtype = CU_TENSOR_MAP_DATA_TYPE_BFLOAT16; a.fill = nan_fill);
  REJECT(interleave32(a); a.swizzle = CU_TENSOR_MAP_SWIZZLE_64B, "swizzle = 2");
  // The arrays themselves (globalStrides may be absent for rank 1).
  REJECT(a.null_dims = true, "globalDim");
  REJECT(a.null_strides = true, "globalStrides");
  REJECT(a.null_box = true, "boxDim");
  REJECT(a.null_elem_strides = true, "elementStrides");
  ACCEPT(a.rank = 1; a.null_strides = true);

  // A rejected call leaves the map as it was; bytes that were never encoded do not decode.
  alignas(128) CUtensorMap fresh{};
  Args bad = base;
  bad.map = &fresh;
  bad.box[1] = 300;
  CHECK(bad.encode() == CUDA_ERROR_INVALID_VALUE);
  CHECK(throws_with([&] { decode_tensor_map(&fresh); },
                    "not a tensor map encoded by cuTensorMapEncodeTiled"));
  Buffer noise(sizeof(CUtensorMap));
  CHECK(throws_with([&] { decode_tensor_map(noise.data()); }, "not a tensor map"));
}

// ---- loads -----------------------------------------------------------------------------------------

// Loads each box with no swizzle and compares the dense result and the byte count with the reference;
// shared bytes around the box stay untouched.
void check_loads(const Tensor& t, CUtensorMapDataType dtype, const std::vector<std::vector<int32_t>>& boxes) {
  const CUtensorMap map = encode_or_fail(t, dtype, CU_TENSOR_MAP_SWIZZLE_NONE);
  const uint32_t bytes = uint32_t(box_elems(t) * t.elem);
  for (const auto& coords : boxes) {
    Smem smem(bytes + 256);
    const std::vector<uint8_t> before(smem.at(Smem::kBase), smem.at(Smem::kBase) + bytes + 256);
    const uint32_t dst = Smem::kBase + 128;
    CHECK(tma_load_box(decode_tensor_map(&map), coords.data(), smem.view, dst) == bytes);
    const std::vector<uint8_t> want = reference_box(t, coords.data());
    CHECK(std::memcmp(smem.at(dst), want.data(), bytes) == 0);
    CHECK(std::memcmp(smem.at(Smem::kBase), before.data(), 128) == 0);
    CHECK(std::memcmp(smem.at(dst + bytes), before.data() + 128 + bytes, 128) == 0);
  }
}

void test_load_2d() {
  // fp32 40 x 30 with rows of 48 elements: the stride is larger than the row.
  Buffer g(30 * 192);
  const Tensor t{4, 2, {40, 30}, {4, 192}, {16, 8}, g.data()};
  check_loads(t, CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
              {{8, 4}, {-5, -3}, {30, 25}, {36, -7}, {-16, 0}, {40, 0}, {100, 100}, {-2147483647 - 1, 3}});
}

void test_load_3d() {
  // bf16 24 x 10 x 5, rows padded to 64 bytes and planes to 12 rows.
  Buffer g(5 * 768);
  const Tensor t{2, 3, {24, 10, 5}, {2, 64, 768}, {16, 4, 3}, g.data()};
  check_loads(t, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
              {{0, 0, 0}, {-8, 8, -1}, {16, -2, 3}, {8, 7, 4}, {-9, 9, 5}});
}

void test_load_1d_and_5d() {
  Buffer g1(1000 * 8);
  const Tensor t1{8, 1, {1000}, {8}, {32}, g1.data()};
  check_loads(t1, CU_TENSOR_MAP_DATA_TYPE_INT64, {{0}, {-7}, {990}, {500}});
  Buffer g5(2 * 576);
  const Tensor t5{1, 5, {20, 3, 2, 3, 2}, {1, 32, 96, 192, 576}, {16, 2, 2, 2, 2}, g5.data()};
  check_loads(t5, CU_TENSOR_MAP_DATA_TYPE_UINT8, {{0, 0, 0, 0, 0}, {10, -1, 1, 2, -1}, {-3, 2, -1, 1, 1}});
}

// NAN_REQUEST_ZERO_FMA fills out-of-bounds float elements with NaN instead of zero.
void test_nan_fill() {
  Buffer g(30 * 192);
  const Tensor t{4, 2, {40, 30}, {4, 192}, {16, 8}, g.data()};
  const CUtensorMap map = encode_or_fail(t, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, CU_TENSOR_MAP_SWIZZLE_NONE,
                                         CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA);
  Smem smem(512);
  const int32_t coords[2] = {-5, 26};
  CHECK(tma_load_box(decode_tensor_map(&map), coords, smem.view, Smem::kBase) == 512);
  int nans = 0;
  for (uint64_t e = 0; e < box_elems(t); ++e) {
    uint32_t bits;
    std::memcpy(&bits, smem.at(Smem::kBase + uint32_t(e * 4)), 4);
    if (const uint8_t* src = element_address(t, coords, e)) {
      CHECK(std::memcmp(&bits, src, 4) == 0);
    } else {
      CHECK((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0);
      ++nans;
    }
  }
  CHECK(nans == 16 * 8 - 11 * 4);

  Buffer gh(8 * 64);
  const Tensor th{2, 2, {32, 8}, {2, 64}, {16, 2}, gh.data()};
  const CUtensorMap maph = encode_or_fail(th, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, CU_TENSOR_MAP_SWIZZLE_NONE,
                                          CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA);
  const int32_t past[2] = {24, 7};  // columns 32..39 and row 8 are outside
  tma_load_box(decode_tensor_map(&maph), past, smem.view, Smem::kBase);
  for (uint64_t e = 0; e < box_elems(th); ++e) {
    uint16_t bits;
    std::memcpy(&bits, smem.at(Smem::kBase + uint32_t(e * 2)), 2);
    if (const uint8_t* src = element_address(th, past, e)) {
      CHECK(std::memcmp(&bits, src, 2) == 0);
    } else {
      CHECK((bits & 0x7f80u) == 0x7f80u && (bits & 0x007fu) != 0);
    }
  }
}

// ---- swizzling ----------------------------------------------------------------------------------------

// Where byte j of box row r lands, for a box whose rows are exactly one swizzle span wide starting at
// window address dst, stated per mode as the swizzle atoms are usually drawn: an atom is 8 rows, and
// within it the 16-byte chunk c of the row at position p (0..7, counted from an atom-aligned address)
// goes to chunk
//   128B (1024-byte atom of 128-byte rows): c ^ p
//   64B  ( 512-byte atom of  64-byte rows): c ^ (p / 2)
//   32B  ( 256-byte atom of  32-byte rows): c ^ (p / 4)
uint32_t swizzled_location(CUtensorMapSwizzle mode, uint32_t dst, uint32_t span, uint32_t r, uint32_t j) {
  const uint32_t row = dst + r * span;  // where the row would start without swizzling
  const uint32_t p = row / span % 8, c = j / 16;
  const uint32_t phase = mode == CU_TENSOR_MAP_SWIZZLE_128B ? p
                         : mode == CU_TENSOR_MAP_SWIZZLE_64B ? p / 2
                                                             : p / 4;
  return row + (c ^ phase) * 16 + j % 16;
}

void test_swizzle(CUtensorMapSwizzle mode, uint32_t span, uint32_t dst_offset, const int32_t* coords) {
  // fp16 boxes of 16 rows (two atoms) exactly one span wide, from a 20-row tensor with a padded stride.
  const uint32_t width = span / 2, rows = 16;
  Buffer g(20 * 320);
  const Tensor t{2, 2, {width + 8, 20}, {2, 320}, {width, rows}, g.data()};
  const CUtensorMap map = encode_or_fail(t, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, mode);
  // The window starts mid-atom, so only the absolute address can give the pattern's phase.
  Smem smem(8192, Smem::kBase + 128);
  const uint32_t dst = Smem::kBase + dst_offset;
  CHECK(tma_load_box(decode_tensor_map(&map), coords, smem.view, dst) == span * rows);
  const std::vector<uint8_t> want = reference_box(t, coords);
  int bad = 0;
  for (uint32_t r = 0; r < rows; ++r) {
    for (uint32_t j = 0; j < span; ++j) {
      bad += *smem.at(swizzled_location(mode, dst, span, r, j)) != want[r * span + j];
    }
  }
  if (bad) std::printf("swizzle mode %d at +%u: %d bytes misplaced\n", int(mode), dst_offset, bad);
  CHECK(bad == 0);

  // A store reads the same positions back: global row r gets the bytes the pattern puts there.
  Buffer out(20 * 320);
  const std::vector<uint8_t> before(out.data(), out.data() + out.size);
  Tensor to = t;
  to.base = out.data();
  const CUtensorMap store_map = encode_or_fail(to, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, mode);
  Buffer fresh(8192);
  std::memcpy(smem.bytes.data(), fresh.data(), 8192);
  tma_store_box(decode_tensor_map(&store_map), coords, smem.view, dst);
  for (uint64_t e = 0; e < box_elems(to); ++e) {
    uint8_t* g_elem = element_address(to, coords, e);
    if (g_elem == nullptr) continue;
    const uint32_t r = uint32_t(e / width), j = uint32_t(e % width) * 2;
    CHECK(std::memcmp(g_elem, smem.at(swizzled_location(mode, dst, span, r, j)), 2) == 0);
    std::memcpy(g_elem, before.data() + (g_elem - out.data()), 2);  // restore, to compare the rest below
  }
  CHECK(std::memcmp(out.data(), before.data(), out.size) == 0);
}

void test_swizzles() {
  const int32_t inside[2] = {0, 2}, partial[2] = {-8, -3}, past[2] = {16, 10};
  for (const int32_t* c : {inside, partial, past}) {
    test_swizzle(CU_TENSOR_MAP_SWIZZLE_128B, 128, 1024, c);
    test_swizzle(CU_TENSOR_MAP_SWIZZLE_128B, 128, 1024 + 384, c);  // mid-atom: the phase follows the address
    test_swizzle(CU_TENSOR_MAP_SWIZZLE_64B, 64, 1024, c);
    test_swizzle(CU_TENSOR_MAP_SWIZZLE_64B, 64, 1024 + 128, c);
    test_swizzle(CU_TENSOR_MAP_SWIZZLE_32B, 32, 1024, c);
    test_swizzle(CU_TENSOR_MAP_SWIZZLE_32B, 32, 1024 + 128, c);
  }
  // Spot checks of the 128B pattern written out: row 1's chunk 0 is at chunk 1, row 5's chunk 2 at chunk 7.
  CHECK(swizzled_location(CU_TENSOR_MAP_SWIZZLE_128B, 0, 128, 1, 0) == 128 + 16);
  CHECK(swizzled_location(CU_TENSOR_MAP_SWIZZLE_128B, 0, 128, 5, 32) == 5 * 128 + 7 * 16);
  CHECK(swizzled_location(CU_TENSOR_MAP_SWIZZLE_64B, 0, 64, 3, 16) == 3 * 64);       // chunk 1 ^ 1
  CHECK(swizzled_location(CU_TENSOR_MAP_SWIZZLE_32B, 0, 32, 4, 0) == 4 * 32 + 16);   // chunk 0 ^ 1
}

// ---- stores ------------------------------------------------------------------------------------------

// A store writes exactly the in-bounds part of the box: nothing past the dims, even inside the
// padding of a row stride larger than the row, nothing at negative coordinates.
void test_store_clipping() {
  Buffer g(30 * 192);
  const Tensor t{4, 2, {40, 30}, {4, 192}, {16, 8}, g.data()};
  const CUtensorMap map = encode_or_fail(t, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, CU_TENSOR_MAP_SWIZZLE_NONE);
  const std::vector<std::vector<int32_t>> boxes = {{-3, 26}, {30, 5}, {36, -6}, {12, 12}, {-20, 40}};
  for (const auto& coords : boxes) {
    const std::vector<uint8_t> before(g.data(), g.data() + g.size);
    Smem smem(512);
    tma_store_box(decode_tensor_map(&map), coords.data(), smem.view, Smem::kBase);
    std::vector<uint8_t> want = before;
    for (uint64_t e = 0; e < box_elems(t); ++e) {
      if (uint8_t* dst = element_address(t, coords.data(), e)) {
        std::memcpy(&want[dst - g.data()], smem.at(Smem::kBase + uint32_t(e * 4)), 4);
      }
    }
    CHECK(std::memcmp(g.data(), want.data(), g.size) == 0);
  }
}

// ---- what the copies refuse ------------------------------------------------------------------------

void test_refusals() {
  Buffer g(30 * 256);
  const Tensor t{2, 2, {64, 30}, {2, 256}, {64, 8}, g.data()};
  const int32_t at[2] = {0, 0};
  Smem smem(4096);

  const CUtensorMap sw = encode_or_fail(t, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, CU_TENSOR_MAP_SWIZZLE_128B);
  const TensorMap& swizzled = decode_tensor_map(&sw);
  CHECK(throws_with([&] { tma_load_box(swizzled, at, smem.view, Smem::kBase + 64); }, "0x10040"));
  CHECK(throws_with([&] { tma_store_box(swizzled, at, smem.view, Smem::kBase + 64); }, "0x10040"));
  tma_load_box(swizzled, at, smem.view, Smem::kBase + 128);

  const CUtensorMap plain = encode_or_fail(t, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, CU_TENSOR_MAP_SWIZZLE_NONE);
  CHECK(throws_with([&] { tma_load_box(decode_tensor_map(&plain), at, smem.view, Smem::kBase + 8); },
                    "0x10008"));
  tma_load_box(decode_tensor_map(&plain), at, smem.view, Smem::kBase + 16);
  // A box that does not fit the block's shared memory is caught by the bounds check.
  CHECK(throws_with([&] { tma_load_box(decode_tensor_map(&plain), at, smem.view, Smem::kBase + 3200); },
                    "outside the block's shared memory"));

  // Element strides other than 1 encode, but the copies refuse them; elementStrides[0] is ignored
  // without interleave, as the driver documents.
  const cuuint32_t outer2[2] = {1, 2}, inner2[2] = {2, 1};
  const CUtensorMap strided = encode_or_fail(t, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, CU_TENSOR_MAP_SWIZZLE_NONE,
                                             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE, outer2);
  CHECK(throws_with([&] { tma_load_box(decode_tensor_map(&strided), at, smem.view, Smem::kBase); },
                    "element strides other than 1 are not modeled"));
  CHECK(throws_with([&] { tma_store_box(decode_tensor_map(&strided), at, smem.view, Smem::kBase); },
                    "element strides other than 1 are not modeled"));
  const CUtensorMap ignored = encode_or_fail(t, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, CU_TENSOR_MAP_SWIZZLE_NONE,
                                             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE, inner2);
  CHECK(tma_load_box(decode_tensor_map(&ignored), at, smem.view, Smem::kBase) == 64 * 8 * 2);
  const std::vector<uint8_t> want = reference_box(t, at);
  CHECK(std::memcmp(smem.at(Smem::kBase), want.data(), want.size()) == 0);

  // Interleaved layouts encode but are not modeled by the copies.
  const cuuint64_t dims[3] = {8, 4, 4}, strides[2] = {16, 64};
  const cuuint32_t box[3] = {8, 4, 4}, ones[3] = {1, 1, 1};
  alignas(128) CUtensorMap inter{};
  CHECK(encode_tensor_map_tiled(&inter, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 3, g.data(), dims, strides, box,
                                ones, CU_TENSOR_MAP_INTERLEAVE_16B, CU_TENSOR_MAP_SWIZZLE_NONE,
                                CU_TENSOR_MAP_L2_PROMOTION_NONE,
                                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS);
  const int32_t at3[3] = {0, 0, 0};
  CHECK(throws_with([&] { tma_load_box(decode_tensor_map(&inter), at3, smem.view, Smem::kBase); },
                    "interleaved layouts are not modeled"));
}

}  // namespace

int main() {
  test_encoder_constraints();
  test_load_2d();
  test_load_3d();
  test_load_1d_and_5d();
  test_nan_fill();
  test_swizzles();
  test_store_clipping();
  test_refusals();
  return report_checks();
}
