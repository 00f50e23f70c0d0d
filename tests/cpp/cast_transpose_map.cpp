// Checks the thread mappings and staged-tile addresses of the cast with transpose
// (csrc/include/deepseek_ext/quant/cast_transpose_map.cuh) for bf16 and fp32 tiles: every address
// is tile_byte_offset of the element it means (the layout of tile.cuh), every staged chunk / pack is
// read once per pass, every warp access takes the fewest shared-memory wavefronts its bytes allow,
// the fetch's per-load row test equals the real one, shuffle partners are the lanes the kernel
// names, and the stores of a warp instruction cover whole sectors (q) or 64-byte spans (qt). A naive
// row mapping is shown to conflict, so the bank check can fail.
#include <cstdio>
#include <map>
#include <set>
#include <vector>

#include "check.h"
#include "deepseek_ext/quant/cast_transpose_map.cuh"
#include "deepseek_ext/quant/tile.cuh"

namespace {

constexpr int kThreads = dx::kTileThreads, kWarp = 32, kBanks = 32;

// Shared-memory wavefronts of one warp access: the most distinct 4-byte words in one bank.
int wavefronts(const std::vector<int>& offsets, int width) {
  std::set<int> words;
  for (int o : offsets)
    for (int w = o / 4; w < (o + width) / 4; ++w) words.insert(w);
  std::map<int, int> per_bank;
  int most = 0;
  for (int w : words) most = std::max(most, ++per_bank[w % kBanks]);
  return most;
}

void check_type(int elem_bytes) {
  const int row_bytes = dx::kTile * elem_bytes, chunks = row_bytes / dx::kChunkBytes;
  const int row_step = kThreads / chunks, loads = dx::kTile * chunks / kThreads;
  const int piece_chunks = 16 * elem_bytes / dx::kChunkBytes;  // 16 elements per piece
  const int pack_bytes = 2 * elem_bytes, packs_per_chunk = dx::kChunkBytes / pack_bytes;
  const int min_wavefronts16 = kWarp * 16 / (4 * kBanks);
  const int min_wavefronts_pack = kWarp * pack_bytes / (4 * kBanks);
  std::printf("%d-byte elements: %d chunks per row, %d loads, pieces of %d chunks, %d packs per chunk\n", elem_bytes,
              chunks, loads, piece_chunks, packs_per_chunk);

  // Staging and the fetch's row test.
  for (int t = 0; t < kThreads; ++t) {
    const int load_row = dx::tile_load_row(t, 0, chunks), chunk = dx::tile_load_chunk(t, chunks);
    const int base = dx::transpose_load_base(load_row, chunk, row_bytes);
    for (int u = 0; u < loads; ++u) {
      const int row = dx::tile_load_row(t, u, chunks);
      CHECK(dx::transpose_stage_offset(base, u, row_step, row_bytes) ==
            dx::tile_byte_offset(row, chunk * dx::kChunkBytes, row_bytes));
      for (int rows_left = 16; rows_left <= dx::kTile; rows_left += 16)
        CHECK((row < rows_left) == (row_step * u < rows_left));
    }
  }

  // Row pass.
  std::vector<int> row_reads(dx::kTile * chunks, 0);
  for (int warp = 0; warp < kThreads / kWarp; ++warp)
    for (int p = 0; p < 4; ++p) {
      std::map<int, std::set<int>> store_halves;  // row -> halves written by this store instruction
      for (int m = 0; m < piece_chunks; ++m) {
        std::vector<int> offsets;
        for (int lane = 0; lane < kWarp; ++lane) {
          const dx::TransposeRowTask task = dx::transpose_row_task(warp * kWarp + lane, piece_chunks);
          const dx::TransposeRowTask partner = dx::transpose_row_task(warp * kWarp + (lane ^ 1), piece_chunks);
          CHECK(partner.row == task.row && partner.half != task.half);  // the amax shuffle's partner
          const int chunk = (2 * p + task.half) * piece_chunks + m;
          const int offset =
              dx::transpose_row_chunk_offset(dx::transpose_row_base(task, piece_chunks, row_bytes), piece_chunks, p, m);
          CHECK(offset == dx::tile_byte_offset(task.row, chunk * dx::kChunkBytes, row_bytes));
          ++row_reads[task.row * chunks + chunk];
          offsets.push_back(offset);
          store_halves[task.row].insert(task.half);
        }
        CHECK(wavefronts(offsets, 16) == min_wavefronts16);
      }
      CHECK(store_halves.size() == kWarp / 2);  // 16 rows x both halves: 32 contiguous bytes each
      for (const auto& [row, halves] : store_halves) CHECK(halves.size() == 2);
    }
  for (int n : row_reads) CHECK(n == 1);

  // Column pass.
  std::vector<int> column_reads(dx::kTile * (row_bytes / pack_bytes), 0);
  for (int warp = 0; warp < kThreads / kWarp; ++warp) {
    for (int lane = 0; lane < kWarp; ++lane) {
      const dx::TransposeColumnTask task = dx::transpose_column_task(warp * kWarp + lane, packs_per_chunk);
      CHECK(task.quarter == lane % 4);  // the amax shuffles (xor 1, 2) stay within a pack's quarters
      CHECK(dx::transpose_column_task(warp * kWarp + (lane ^ 3), packs_per_chunk).pack == task.pack);
    }
    for (int run = 0; run < 2; ++run)
      for (int i = 0; i < 16; ++i) {
        std::vector<int> offsets;
        for (int lane = 0; lane < kWarp; ++lane) {
          const dx::TransposeColumnTask task = dx::transpose_column_task(warp * kWarp + lane, packs_per_chunk);
          const int row = 16 * (task.quarter + 4 * run) + i;
          const int offset = dx::transpose_column_base(task, run, packs_per_chunk, row_bytes) + i * row_bytes;
          CHECK(offset == dx::tile_byte_offset(row, task.pack * pack_bytes, row_bytes));
          ++column_reads[row * (row_bytes / pack_bytes) + task.pack];
          offsets.push_back(offset);
        }
        CHECK(wavefronts(offsets, pack_bytes) == min_wavefronts_pack);
      }
  }
  for (int n : column_reads) CHECK(n == 1);

  // Negative control: rows in lane order (lane / 2) put a phase's 4 rows in one 16-row block.
  std::vector<int> naive;
  for (int lane = 0; lane < kWarp; ++lane)
    naive.push_back(dx::tile_byte_offset(lane / 2, (lane % 2) * piece_chunks * dx::kChunkBytes, row_bytes));
  const int naive_wavefronts = wavefronts(naive, 16);
  std::printf("  naive row mapping: %d wavefronts (fewest %d)\n", naive_wavefronts, min_wavefronts16);
  CHECK(naive_wavefronts > min_wavefronts16);
}

}  // namespace

int main() {
  check_type(2);
  check_type(4);
  return report_checks();
}
