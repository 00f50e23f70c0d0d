// Checks csrc/emu/wgmma and csrc/emu/fp8 against values worked out from the PTX ISA.
// No arguments: run the checks. `f32-to-e4m3 | e4m3-to-f32 | e4m3-to-f16 IN OUT`: convert the raw
// little-endian values of file IN (f32 or bytes) into file OUT, for tests/test_emu_wgmma.py.
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "check.h"
#include "emu/fp8.h"
#include "emu/wgmma.h"

using namespace dx::emu;

namespace {

// Fields placed by hand per "Matrix Descriptor Format" (byte values, encoded >> 4).
uint64_t encode(uint32_t start, uint32_t lbo, uint32_t sbo, uint64_t base_offset, uint64_t mode) {
  return uint64_t{start >> 4} | uint64_t{lbo >> 4} << 16 | uint64_t{sbo >> 4} << 32 | base_offset << 49 | mode << 62;
}

bool same(const MatrixDescriptor& d, uint32_t start, uint32_t lbo, uint32_t sbo, int base, int swizzle) {
  return d.start == start && d.leading_byte_offset == lbo && d.stride_byte_offset == sbo && d.base_offset == base &&
         d.swizzle == swizzle;
}

void test_descriptor() {
  CHECK(same(decode_matrix_descriptor(encode(0x1230, 16, 1024, 0, 1)), 0x1230, 16, 1024, 0, 128));
  CHECK(same(decode_matrix_descriptor(encode(0x3FFF0, 0x3FFF0, 0x3FFF0, 7, 0)), 0x3FFF0, 0x3FFF0, 0x3FFF0, 7, 0));
  CHECK(same(decode_matrix_descriptor(encode(0x400, 128, 512, 5, 2)), 0x400, 128, 512, 5, 64));
  CHECK(same(decode_matrix_descriptor(encode(0x10, 256, 16, 0, 3)), 0x10, 256, 16, 0, 32));
  // Reserved bits 14-15, 30-31, 46-48 and 52-61 carry nothing.
  const uint64_t reserved = 0x3ull << 14 | 0x3ull << 30 | 0x7ull << 46 | 0x3FFull << 52;
  CHECK(same(decode_matrix_descriptor(encode(0x1230, 16, 1024, 0, 1) | reserved), 0x1230, 16, 1024, 0, 128));
}

uint32_t addr(uint64_t desc, int row, int k) { return k_major_element_address(decode_matrix_descriptor(desc), row, k); }

template <class E, class F>
bool throws(F f) {
  try {
    f();
  } catch (const E&) {
    return true;
  }
  return false;
}

void test_addresses() {
  // 128B swizzle, atom at 0x400 (1024-aligned): row r of an atom is 128 bytes at +128r, and its 16-byte
  // chunk c sits at chunk position c ^ r.
  const uint64_t sw128 = encode(0x400, 16, 1024, 0, 1);
  CHECK(addr(sw128, 0, 0) == 0x400);
  CHECK(addr(sw128, 1, 0) == 0x490);   // row 1, chunk 0 -> position 1
  CHECK(addr(sw128, 1, 16) == 0x480);  // row 1, chunk 1 -> position 0
  CHECK(addr(sw128, 3, 5) == 0x5B5);   // row 3, chunk 0 -> position 3, byte 5
  CHECK(addr(sw128, 7, 127) == 0x78F); // row 7, chunk 7 -> position 0, byte 15
  CHECK(addr(sw128, 9, 0) == 0x890);   // next atom (SBO 1024), row 1
  // Start advanced 32 bytes into the atom (the second k32 slice): row 2, chunk 2 -> position 0.
  CHECK(addr(encode(0x420, 16, 1024, 0, 1), 2, 0) == 0x500);
  // 64B swizzle (atom rows 64 bytes, chunk c of row r at position c ^ (r / 2)), 32B (c ^ (r / 4)).
  CHECK(addr(encode(0x200, 16, 512, 0, 2), 3, 16) == 0x2C0);
  CHECK(addr(encode(0x100, 16, 256, 0, 3), 5, 0) == 0x1B0);
  // No swizzle: core matrix (row/8, k/16) at start + (row/8)*SBO + (k/16)*LBO, rows of 16 bytes.
  CHECK(addr(encode(0x800, 1024, 128, 0, 0), 10, 17) == 0x800 + 128 + 1024 + 2 * 16 + 1);
  CHECK(throws<std::runtime_error>([] { addr(encode(0x400, 16, 1024, 1, 1), 0, 0); }));
  CHECK(throws<std::invalid_argument>([] { addr(encode(0x400, 16, 1024, 0, 3), 0, 32); }));
}

void test_fragment() {
  for (int n = 8; n <= 256; n += 8) {
    std::vector<int> seen(64 * n, 0);
    for (int t = 0; t < 128; ++t) {
      for (int reg = 0; reg < n / 2; ++reg) {
        int row = -1, col = -1;
        wgmma_accumulator_position(n, t, reg, row, col);
        CHECK(row >= 0 && row < 64 && col >= 0 && col < n);
        if (row >= 0 && row < 64 && col >= 0 && col < n) ++seen[row * n + col];
      }
    }
    for (int c : seen) CHECK(c == 1);
  }
  // From the figure: T0 holds d0,d1 at row 0 cols 0,1, d2,d3 at row 8, d4 at row 0 col 8; T1 starts at
  // col 2, T4 at row 1; warp 1 starts at row 16.
  const int cases[][5] = {{0, 0, 0, 0},   {0, 1, 0, 1},  {0, 2, 8, 0},  {0, 3, 8, 1},    {0, 4, 0, 8},
                          {1, 0, 0, 2},   {4, 0, 1, 0},  {31, 3, 15, 7}, {32, 0, 16, 0}, {127, 127, 63, 255},
                          {70, 13, 33, 29}};
  for (const auto& c : cases) {
    int row = -1, col = -1;
    wgmma_accumulator_position(256, c[0], c[1], row, col);
    CHECK(row == c[2] && col == c[3]);
  }
  int row, col;
  CHECK(throws<std::invalid_argument>([&] { wgmma_accumulator_position(64, 0, 32, row, col); }));
}

// Independent writer of the canonical K-major layouts: element (r, k) of a rows x kbytes() matrix, of
// which the MMA reads the k32 slice `slice` (swizzled layouts: the start address moves within the atom row).
struct Operand {
  int swizzle;        // bytes, 0 = none
  uint32_t lbo, sbo;  // bytes
  int slice;
  int kbytes() const { return swizzle ? swizzle : 32; }
  uint32_t offset(int r, int k) const {
    const uint32_t atom = (r / 8) * sbo, rr = r % 8;
    if (swizzle == 0) return atom + (k / 16) * lbo + rr * 16 + k % 16;
    const int chunks = swizzle / 16;  // 16-byte chunks per row; chunk c of row rr goes to c ^ (rr * chunks / 8)
    return atom + rr * swizzle + ((k / 16) ^ (rr * chunks / 8)) * 16 + k % 16;
  }
  uint64_t descriptor(uint32_t at) const {
    const uint64_t mode = swizzle == 128 ? 1 : swizzle == 64 ? 2 : swizzle == 32 ? 3 : 0;
    return encode(at + 32 * slice, lbo, sbo, 0, mode);
  }
};

uint8_t random_nonzero_e4m3(std::mt19937& rng) {
  for (;;) {
    const uint8_t v = static_cast<uint8_t>(rng());
    if ((v & 0x7F) != 0 && (v & 0x7F) != 0x7F) return v;
  }
}

std::vector<uint8_t> write_operand(const Operand& op, int rows, uint32_t at, std::vector<uint8_t>& buf,
                                   std::mt19937& rng) {
  std::vector<uint8_t> m(rows * op.kbytes());
  for (int r = 0; r < rows; ++r) {
    for (int k = 0; k < op.kbytes(); ++k) buf[at + op.offset(r, k)] = m[r * op.kbytes() + k] = random_nonzero_e4m3(rng);
  }
  return m;
}

// One MMA on random data against a double reference, with scale-d 0 (d_in null) and 1.
void check_mma(int n, Operand oa, Operand ob, std::mt19937& rng) {
  const uint32_t window = 0x400, a_at = 0, b_at = 64 * 1024;
  std::vector<uint8_t> buf(b_at + 64 * 1024, 0);
  SharedView smem{buf.data(), window, static_cast<uint32_t>(buf.size())};
  const std::vector<uint8_t> a = write_operand(oa, 64, a_at, buf, rng), b = write_operand(ob, n, b_at, buf, rng);
  const uint64_t da = oa.descriptor(window + a_at), db = ob.descriptor(window + b_at);

  std::vector<float> c(64 * n), d0(64 * n), d1(64 * n);
  std::uniform_real_distribution<float> u(-1000.0f, 1000.0f);
  for (auto& v : c) v = u(rng);
  wgmma_m64nNk32_e4m3(n, da, db, smem, nullptr, d0.data());
  wgmma_m64nNk32_e4m3(n, da, db, smem, c.data(), d1.data());
  std::vector<float> in_place = c;
  wgmma_m64nNk32_e4m3(n, da, db, smem, in_place.data(), in_place.data());
  CHECK(in_place == d1);
  int bad = 0;
  for (int i = 0; i < 64; ++i) {
    for (int j = 0; j < n; ++j) {
      double ref = 0, mag = 0;
      for (int k = 0; k < 32; ++k) {
        const double p = double(e4m3_to_f32(a[i * oa.kbytes() + oa.slice * 32 + k])) *
                         e4m3_to_f32(b[j * ob.kbytes() + ob.slice * 32 + k]);
        ref += p, mag += std::fabs(p);
      }
      const double tol = 4e-6 * (mag + std::fabs(c[i * n + j]));
      bad += std::fabs(d0[i * n + j] - ref) > tol || std::fabs(d1[i * n + j] - (ref + c[i * n + j])) > tol;
    }
  }
  if (bad) std::printf("n=%d swizzle A %d B %d: %d outputs off\n", n, oa.swizzle, ob.swizzle, bad);
  CHECK(bad == 0);
}

void test_mma() {
  std::mt19937 rng(1234);
  const int ns[] = {8, 16, 64, 128, 192, 256};
  for (int i = 0; i < 6; ++i) {
    const int n = ns[i];
    check_mma(n, {128, 16, 1024, i % 4}, {128, 16, 1024, (i + 1) % 4}, rng);
    // No swizzle: A's K-adjacent core matrices side by side; B's N-groups stacked first, K next.
    check_mma(n, {0, 128, 256, 0}, {0, uint32_t(n) * 16, 128, 0}, rng);
  }
  check_mma(64, {64, 16, 512, 1}, {32, 16, 256, 0}, rng);
  check_mma(32, {32, 16, 256, 0}, {64, 16, 512, 1}, rng);
  // Errors: N outside the valid set; an operand past the end of shared memory.
  std::vector<uint8_t> buf(4096, 0);
  SharedView smem{buf.data(), 0x400, static_cast<uint32_t>(buf.size())};
  std::vector<float> d(64 * 256);
  const uint64_t in = encode(0x400, 16, 1024, 0, 1), past = encode(0x1000, 16, 1024, 0, 1);
  for (int bad_n : {0, 4, 12, 264}) {
    CHECK(throws<std::invalid_argument>([&] { wgmma_m64nNk32_e4m3(bad_n, in, in, smem, nullptr, d.data()); }));
  }
  CHECK(throws<std::out_of_range>([&] { wgmma_m64nNk32_e4m3(64, in, past, smem, nullptr, d.data()); }));
}

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

void test_fp8() {
  // Values worked out from the e4m3 encoding (bias 7, 3 mantissa bits, S.1111.111 = NaN, max 448).
  CHECK(f32_to_e4m3_satfinite_rn(1.0f) == 0x38);
  CHECK(f32_to_e4m3_satfinite_rn(-1.0f) == 0xB8);
  CHECK(f32_to_e4m3_satfinite_rn(448.0f) == 0x7E);
  CHECK(f32_to_e4m3_satfinite_rn(464.0f) == 0x7E);  // would round to 480: saturates
  CHECK(f32_to_e4m3_satfinite_rn(1e30f) == 0x7E);
  CHECK(f32_to_e4m3_satfinite_rn(-INFINITY) == 0xFE);
  CHECK(f32_to_e4m3_satfinite_rn(INFINITY) == 0x7E);
  CHECK(f32_to_e4m3_satfinite_rn(NAN) == 0x7F);
  CHECK(f32_to_e4m3_satfinite_rn(from_bits(0xFFC00001u)) == 0x7F);
  CHECK(f32_to_e4m3_satfinite_rn(-0.0f) == 0x80);
  CHECK(f32_to_e4m3_satfinite_rn(0.0f) == 0x00);
  CHECK(f32_to_e4m3_satfinite_rn(std::ldexp(1.0f, -6)) == 0x08);        // smallest normal
  CHECK(f32_to_e4m3_satfinite_rn(std::ldexp(1.0f, -9)) == 0x01);        // smallest subnormal
  CHECK(f32_to_e4m3_satfinite_rn(std::ldexp(1.0f, -10)) == 0x00);       // tie to even: 0
  CHECK(f32_to_e4m3_satfinite_rn(-std::ldexp(1.0f, -10)) == 0x80);
  CHECK(f32_to_e4m3_satfinite_rn(std::ldexp(3.0f, -10)) == 0x02);       // 1.5 ulp: tie to even 2
  CHECK(f32_to_e4m3_satfinite_rn(std::ldexp(15.0f, -10)) == 0x08);      // 7.5 ulp: rounds up into the normals
  CHECK(f32_to_e4m3_satfinite_rn(1.0625f) == 0x38);                     // halfway 1 and 1.125: even
  CHECK(f32_to_e4m3_satfinite_rn(1.1875f) == 0x3A);                     // halfway 1.125 and 1.25: even
  CHECK(f32_to_e4m3_satfinite_rn(15.5f) == 0x58);                       // halfway 15 and 16: even, 16
  CHECK(f32_to_e4m3_satfinite_rn(from_bits(0x00000001u)) == 0x00);      // f32 subnormal
  CHECK(e4m3_to_f16_bits(0x38) == 0x3C00);
  CHECK(e4m3_to_f16_bits(0x01) == 0x1800);  // 2^-9
  CHECK(e4m3_to_f16_bits(0x07) == 0x2300);  // 7 * 2^-9 = 1.75 * 2^-7
  CHECK(e4m3_to_f16_bits(0x7E) == 0x5F00);  // 448 = 1.75 * 2^8
  CHECK(e4m3_to_f16_bits(0xFE) == 0xDF00);
  CHECK(e4m3_to_f16_bits(0x80) == 0x8000);
  CHECK(e4m3_to_f16_bits(0x7F) == 0x7FFF && e4m3_to_f16_bits(0xFF) == 0x7FFF);
  CHECK(std::isnan(e4m3_to_f32(0xFF)));
  for (int v = 0; v < 256; ++v) {
    if ((v & 0x7F) == 0x7F) continue;
    const float f = e4m3_to_f32(static_cast<uint8_t>(v));
    CHECK(f32_to_e4m3_satfinite_rn(f) == v);  // every finite e4m3 value round-trips
  }
}

std::vector<char> read_file(const char* path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(std::string("cannot read ") + path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

int convert(const std::string& mode, const char* in_path, const char* out_path) {
  const std::vector<char> in = read_file(in_path);
  std::vector<char> out;
  if (mode == "f32-to-e4m3") {
    out.resize(in.size() / 4);
    for (size_t i = 0; i < out.size(); ++i) {
      float f;
      std::memcpy(&f, in.data() + 4 * i, 4);
      out[i] = static_cast<char>(f32_to_e4m3_satfinite_rn(f));
    }
  } else if (mode == "e4m3-to-f32" || mode == "e4m3-to-f16") {
    const size_t width = mode == "e4m3-to-f32" ? 4 : 2;
    out.resize(in.size() * width);
    for (size_t i = 0; i < in.size(); ++i) {
      const uint8_t v = static_cast<uint8_t>(in[i]);
      const float f = e4m3_to_f32(v);
      const uint16_t h = e4m3_to_f16_bits(v);
      std::memcpy(out.data() + width * i, width == 4 ? static_cast<const void*>(&f) : &h, width);
    }
  } else {
    std::printf("unknown mode %s\n", mode.c_str());
    return 2;
  }
  std::ofstream(out_path, std::ios::binary).write(out.data(), static_cast<std::streamsize>(out.size()));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4) return convert(argv[1], argv[2], argv[3]);
  test_descriptor();
  test_addresses();
  test_fragment();
  test_mma();
  test_fp8();
  return report_checks();
}
