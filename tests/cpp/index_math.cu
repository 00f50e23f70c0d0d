// Host-side driver for the quantization kernels' __host__ __device__ math (scale_math.cuh,
// tile.cuh). Reads one query per line from stdin and prints one answer per line; floats travel
// as hex bit patterns so tests/test_kernel_index_math.py can compare them bitwise.
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>

#include "deepseek_ext/quant/scale_math.cuh"
#include "deepseek_ext/quant/tile.cuh"

namespace {

float from_bits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

uint32_t to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

void answer_float(float f) { std::printf("%08" PRIx32 "\n", to_bits(f)); }

void answer(int64_t v) { std::printf("%" PRId64 "\n", v); }

}  // namespace

int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string op;
    in >> op;
    uint32_t a = 0, b = 0;
    int64_t v[7] = {};
    if (op == "round_up_pow2") {
      in >> std::hex >> a;
      answer_float(dx::round_up_pow2(from_bits(a)));
    } else if (op == "scale_from_amax") {
      in >> std::hex >> a >> std::dec >> v[0];
      answer_float(dx::scale_from_amax(from_bits(a), v[0] != 0));
    } else if (op == "scale_and_clamp") {
      in >> std::hex >> a >> b;
      answer_float(dx::scale_and_clamp(from_bits(a), from_bits(b)));
    } else if (op == "quotient") {
      in >> v[0] >> v[1];
      answer(dx::quotient(v[0], v[1]));
    } else if (op == "m_major_scale_offset") {
      in >> v[0] >> v[1] >> v[2] >> v[3] >> v[4];
      answer(dx::m_major_scale_offset(v[0], v[1], v[2], v[3], v[4]));
    } else if (op == "tile_byte_offset") {
      in >> v[0] >> v[1] >> v[2];
      answer(dx::tile_byte_offset(int(v[0]), int(v[1]), int(v[2])));
    } else if (op == "tile_load") {  // thread u chunks_per_row -> "row chunk"
      in >> v[0] >> v[1] >> v[2];
      std::printf("%d %d\n", dx::tile_load_row(int(v[0]), int(v[1]), int(v[2])),
                  dx::tile_load_chunk(int(v[0]), int(v[2])));
    } else if (op == "column_task") {  // task -> "row0 pack"
      in >> v[0];
      std::printf("%d %d\n", dx::column_task_row0(int(v[0])), dx::column_task_pack(int(v[0])));
    } else if (op == "tile_coord") {
      in >> v[0] >> v[1] >> v[2];
      const dx::TileCoord c = dx::tile_coord(v[0], v[1], v[2]);
      std::printf("%" PRId64 " %" PRId64 " %" PRId64 "\n", c.batch, c.row, c.col);
    } else {
      std::fprintf(stderr, "unknown query: %s\n", line.c_str());
      return 1;
    }
  }
  return 0;
}
