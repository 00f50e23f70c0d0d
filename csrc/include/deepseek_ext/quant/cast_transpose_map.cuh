// Thread mappings and staged-tile addresses of the cast with transpose (cast_with_transpose.cuh),
// shared by host and device so tests/cpp/cast_transpose_map.cpp checks them on the CPU against
// tile_byte_offset, for coverage, bank conflicts and store coalescing.
//
// Both passes give each thread 64 elements of one or two groups, so a group's amax takes one or
// two shuffles and each scale is computed by two or four lanes, not by eight or more. Addresses are
// a per-thread base XOR or plus a compile-time constant: one instruction per access.
#pragma once

#include "deepseek_ext/quant/tile.cuh"

namespace dx {

// Staging: the thread's chunk load_chunk of rows load_row + row_step u (the tile_load mapping) lands
// at transpose_stage_offset(load_base, ...). A row's swizzle (row >> 4) & 7 depends on u alone, as
// load_row < row_step <= 16.
DX_HOST_DEVICE int transpose_load_base(int load_row, int load_chunk, int row_bytes) {
  return load_row * row_bytes + load_chunk * kChunkBytes;
}
DX_HOST_DEVICE int transpose_stage_offset(int load_base, int u, int row_step, int row_bytes) {
  return (load_base ^ (row_step * u / 16 % 8 * kChunkBytes)) + row_step * u * row_bytes;
}

// Row pass: the thread quantizes half `half` of tile row `row`: pieces p = 0..3 of 16 columns at
// 32 p + 16 half (a 16-byte store each; a row's two halves are adjacent lanes, so every store
// instruction writes whole 32-byte sectors). piece_chunks = staged chunks per piece (2 for bf16,
// 4 for fp32); an 8-lane shared-memory phase holds 4 rows x 2 halves, the rows in 16-row blocks
// whose swizzles differ from one another and from each other's XOR with piece_chunks, so the 8
// reads of a phase land in 8 different bank groups.
struct TransposeRowTask {
  int row, half;
};
DX_HOST_DEVICE TransposeRowTask transpose_row_task(int thread, int piece_chunks) {
  const int lane = thread % 32, index = thread / 32 * 4 + lane / 8;  // 32 indices x 4 rows
  const int r = (lane >> 1) & 3;
  const int block = (r & (piece_chunks - 1)) | ((r & ~(piece_chunks - 1)) << 1) | ((index & 1) * piece_chunks);
  return {block * 16 + (index >> 1), lane & 1};
}

// Chunk m of piece p of the task is staged at transpose_row_base(...) ^ 16 (2 p piece_chunks + m):
// the base holds the row, its half's chunk and the swizzle, in bits the XOR leaves alone or flips.
DX_HOST_DEVICE int transpose_row_base(TransposeRowTask t, int piece_chunks, int row_bytes) {
  return t.row * row_bytes + ((t.half * piece_chunks) ^ ((t.row >> 4) & 7)) * kChunkBytes;
}
DX_HOST_DEVICE int transpose_row_chunk_offset(int row_base, int piece_chunks, int p, int m) {
  return row_base ^ ((2 * p * piece_chunks + m) * kChunkBytes);
}

// Column pass: the thread quantizes the two columns of pack `pack` (2 x sizeof(T) bytes of a
// staged row) on rows 16 (quarter + 4 run) .. +15, run = 0, 1; a pack's four quarters are adjacent
// lanes, so every 16-byte store instruction writes 64 contiguous bytes of a qt row. A
// shared-memory phase (32 lanes for 4-byte packs, 16 for 8-byte ones) reads chunks c and c + 4 of
// four quarters (swizzles quarter + 4 run): 8 different bank groups.
struct TransposeColumnTask {
  int pack, quarter;
};
DX_HOST_DEVICE TransposeColumnTask transpose_column_task(int thread, int packs_per_chunk) {
  const int lane = thread % 32, j = lane >> 2;
  const int phase = thread / 32 * (4 / packs_per_chunk) + j / (2 * packs_per_chunk);
  const int chunk = (phase & 3) + 8 * (phase >> 2) + 4 * ((j / packs_per_chunk) & 1);
  return {chunk * packs_per_chunk + j % packs_per_chunk, lane & 3};
}

// Row i of the task's run is staged at transpose_column_base(...) + i * row_bytes.
DX_HOST_DEVICE int transpose_column_base(TransposeColumnTask t, int run, int packs_per_chunk, int row_bytes) {
  const int block = t.quarter + 4 * run;  // 16-row block of the run, also the swizzle of its rows
  return block * 16 * row_bytes + ((t.pack / packs_per_chunk) ^ block) * kChunkBytes +
         t.pack % packs_per_chunk * (kChunkBytes / packs_per_chunk);
}

}  // namespace dx
