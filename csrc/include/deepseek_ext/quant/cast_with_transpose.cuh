// Fused 1x128 cast in both orientations from one read of x [M, K]: q/s quantized along K
// (rows of a 128x128 tile), qt/st = x^T quantized along M (columns of the tile). Persistent CTAs
// walk the tiles; each stages a tile in shared memory, issues the loads of its next tile into
// registers, and runs both passes on the staged tile while those loads are in flight. Nothing is
// re-quantized and x is read once. The thread mappings are in cast_transpose_map.cuh.
#pragma once
#include <cstdint>

#include "deepseek_ext/ptx/max_nan.cuh"
#include "deepseek_ext/ptx/opaque.cuh"
#include "deepseek_ext/quant/cast_transpose_map.cuh"
#include "deepseek_ext/quant/scale_math.cuh"
#include "deepseek_ext/quant/store.cuh"
#include "deepseek_ext/quant/tile_load.cuh"
#include "deepseek_ext/shared_memory.cuh"

namespace dx {

// CTAs per SM the kernel is built for: 128 registers a thread, for the next tile held in registers
// (32 for bf16, 64 for fp32) beside the passes' working set (at 80 registers, 3 CTAs, bf16 spills).
constexpr int kCastTransposeMinBlocks = 2;

template <typename T>
constexpr int cast_with_transpose_smem_bytes() {
  return kTile * TileShape<T>::kRowBytes;
}

template <typename T>
struct CastTransposeShape {
  using Tile = TileShape<T>;
  static constexpr int kPieceElems = 16;                         // one 16-byte e4m3 store
  static constexpr int kPieces = kTile / 2 / kPieceElems;        // per half row (4)
  static constexpr int kPieceChunks = kPieceElems / Tile::kVec;  // staged chunks per piece
  static constexpr int kPacksPerChunk = kChunkBytes / (2 * static_cast<int>(sizeof(T)));  // 2-column packs
  static constexpr int kRunRows = 16;  // rows of a column run: one 16-byte qt store
  static constexpr int kLoadRowStep = kTileThreads / Tile::kChunks;  // rows between a thread's loads
};

// One staged pack (two adjacent columns of a row) as raw bits, and the amax of each of its two
// columns over the packs added: bf16 keeps both in one word (one packed max per pack), fp32 two floats.
template <typename T>
struct PairAmax;

template <>
struct PairAmax<__nv_bfloat16> {
  using Pack = uint32_t;
  uint32_t m = 0;  // |amax| per 16-bit half; the sign bits are junk (masked by lo/hi)
  __device__ __forceinline__ void add(Pack w) { m = ptx::max_nan_xorsign_abs_bf16x2(m, w); }
  __device__ __forceinline__ void add(const PairAmax& o) { add(o.m); }
  __device__ __forceinline__ void shuffle_max(int lane_mask) { add(__shfl_xor_sync(0xffffffffu, m, lane_mask)); }
  __device__ __forceinline__ float lo() const { return __uint_as_float((m << 16) & 0x7fff0000u); }
  __device__ __forceinline__ float hi() const { return __uint_as_float(m & 0x7fff0000u); }
  __device__ __forceinline__ static void unpack(Pack w, float& lo, float& hi) {
    lo = __uint_as_float(w << 16), hi = __uint_as_float(w & 0xffff0000u);
  }
};

template <>
struct PairAmax<float> {
  using Pack = uint2;
  float a = 0.0f, b = 0.0f;
  __device__ __forceinline__ void add(Pack w) {
    a = ptx::max_nan(a, fabsf(__uint_as_float(w.x))), b = ptx::max_nan(b, fabsf(__uint_as_float(w.y)));
  }
  __device__ __forceinline__ void add(const PairAmax& o) { a = ptx::max_nan(a, o.a), b = ptx::max_nan(b, o.b); }
  __device__ __forceinline__ void shuffle_max(int lane_mask) {
    a = ptx::max_nan(a, __shfl_xor_sync(0xffffffffu, a, lane_mask));
    b = ptx::max_nan(b, __shfl_xor_sync(0xffffffffu, b, lane_mask));
  }
  __device__ __forceinline__ float lo() const { return a; }
  __device__ __forceinline__ float hi() const { return b; }
  __device__ __forceinline__ static void unpack(Pack w, float& lo, float& hi) {
    lo = __uint_as_float(w.x), hi = __uint_as_float(w.y);
  }
};

// The amax of one staged 16-byte chunk (its packs combined pairwise: a short dependency chain).
template <typename T>
__device__ __forceinline__ PairAmax<T> chunk_amax(const uint4& raw) {
  using Pack = typename PairAmax<T>::Pack;
  const Pack* packs = reinterpret_cast<const Pack*>(&raw);
  constexpr int kPacks = kChunkBytes / static_cast<int>(sizeof(Pack));
  PairAmax<T> half[2];
#pragma unroll
  for (int i = 0; i < kPacks; ++i) half[i % 2].add(packs[i]);
  half[0].add(half[1]);
  return half[0];
}

// Loads this thread's chunks of a tile (the tile_load mapping) from p, row_step elements apart.
// Only loads whose rows are below rows_left and whose chunk is in bounds (col_ok) are issued: the
// others leave stale registers, which every amax masks out (rows_left is a multiple of 16 and the
// thread's first row is below kRowStep <= 16, so row u is valid iff kRowStep u < rows_left).
template <int kRowStep, typename T, int kLoads>
__device__ __forceinline__ void fetch_chunks(const T* p, int64_t row_step, int rows_left, bool col_ok,
                                             uint4 (&raw)[kLoads]) {
#pragma unroll
  for (int u = 0; u < kLoads; ++u, p += row_step)
    if (col_ok && kRowStep * u < rows_left) raw[u] = ptx::ld_nc_v4(p);
}

// One CTA's tiles: blockIdx.x, + gridDim.x, ... in row-major order, (row, col) followed by addition.
struct TileWalk {
  unsigned tile;  // + gridDim.x stays below 2^32 (tiles < 2^31)
  int row, col;
  __device__ __forceinline__ void advance(int step_rows, int step_cols, int col_tiles) {
    tile += gridDim.x, row += step_rows, col += step_cols;
    if (col >= col_tiles) col -= col_tiles, ++row;
  }
};

// x: [rows, cols] (row stride ld_x); q: [rows, cols]; s: M-major [rows, ceil(cols/128)] with
// s_padded_rows; qt: [cols, rows]; st: M-major [cols, ceil(rows/128)] with st_padded_rows.
// rows and cols are multiples of 16; gridDim.x <= tiles = ceil(rows/128) * ceil(cols/128) < 2^31.
template <typename T>
__global__ void __launch_bounds__(kTileThreads, kCastTransposeMinBlocks) cast_with_transpose_kernel(
    const T* __restrict__ x, int64_t ld_x, uint8_t* __restrict__ q, float* __restrict__ s,
    uint8_t* __restrict__ qt, float* __restrict__ st, int64_t rows, int64_t cols,
    int64_t s_padded_rows, int64_t st_padded_rows, bool pow2_scale) {
  using Shape = CastTransposeShape<T>;
  using Tile = TileShape<T>;
  using Amax = PairAmax<T>;
  using Pack = typename Amax::Pack;
  uint8_t* tile_smem = dynamic_shared_memory<uint8_t>();
  const int col_tiles = static_cast<int>(ceil_div(cols, kTile));
  const unsigned tiles = static_cast<unsigned>(ceil_div(rows, kTile) * col_tiles);
  const int step_rows = static_cast<int>(gridDim.x) / col_tiles, step_cols = static_cast<int>(gridDim.x) % col_tiles;

  const int load_row = tile_load_row(threadIdx.x, 0, Tile::kChunks);
  const int load_chunk = tile_load_chunk(threadIdx.x, Tile::kChunks);
  const int load_base = transpose_load_base(load_row, load_chunk, Tile::kRowBytes);
  const int64_t load_step = int64_t{Shape::kLoadRowStep} * ld_x;
  const TransposeRowTask rt = transpose_row_task(threadIdx.x, Shape::kPieceChunks);
  const int row_task_base = transpose_row_base(rt, Shape::kPieceChunks, Tile::kRowBytes);
  const TransposeColumnTask ct = transpose_column_task(threadIdx.x, Shape::kPacksPerChunk);
  const int column_base[2] = {transpose_column_base(ct, 0, Shape::kPacksPerChunk, Tile::kRowBytes),
                              transpose_column_base(ct, 1, Shape::kPacksPerChunk, Tile::kRowBytes)};

  // A software pipeline: each iteration stages the tile the previous one loaded, issues the loads of
  // the next tile, and quantizes the staged one while they are in flight.
  uint4 raw[Tile::kLoads] = {};
  TileWalk next{blockIdx.x, static_cast<int>(blockIdx.x) / col_tiles, static_cast<int>(blockIdx.x) % col_tiles};
  TileWalk cur = next;
  for (bool staged = false;; staged = true) {
    if (staged) {  // the previous tile's readers passed the barrier at the end of the last iteration
      const int base = ptx::opaque(load_base);  // the staged addresses are not kept across the loop
#pragma unroll
      for (int u = 0; u < Tile::kLoads; ++u)
        *reinterpret_cast<uint4*>(tile_smem + transpose_stage_offset(base, u, Shape::kLoadRowStep, Tile::kRowBytes)) = raw[u];
    }
    const bool more = next.tile < tiles;
    if (more) {
      const int64_t row0 = int64_t{next.row} * kTile, col0 = int64_t{next.col} * kTile;
      fetch_chunks<Shape::kLoadRowStep>(x + (row0 + load_row) * ld_x + col0 + load_chunk * Tile::kVec, load_step,
                                        static_cast<int>(rows - row0 < kTile ? rows - row0 : kTile),
                                        load_chunk * Tile::kVec < cols - col0, raw);
    }
    if (staged) {
      __syncthreads();
      const int64_t row0 = int64_t{cur.row} * kTile, col0 = int64_t{cur.col} * kTile;
      const int rows_left = static_cast<int>(rows - row0 < kTile ? rows - row0 : kTile);
      const int cols_left = static_cast<int>(cols - col0 < kTile ? cols - col0 : kTile);

      // Row pass: the amax of the thread's half row (its in-bounds pieces) and its partner lane's,
      // then the quantized pieces (the staged values are read twice, not held beside the next tile).
      {
        const int base = ptx::opaque(row_task_base);  // likewise the row pass's addresses
        Amax amax;
#pragma unroll
        for (int p = 0; p < Shape::kPieces; ++p) {
          Amax piece;
#pragma unroll
          for (int m = 0; m < Shape::kPieceChunks; ++m)
            piece.add(chunk_amax<T>(*reinterpret_cast<const uint4*>(
                tile_smem + transpose_row_chunk_offset(base, Shape::kPieceChunks, p, m))));
          if (2 * Shape::kPieceElems * p + Shape::kPieceElems * rt.half < cols_left) amax.add(piece);
        }
        const GroupScale g = group_scale(lanes_abs_max<2>(ptx::max_nan(amax.lo(), amax.hi())), pow2_scale);
        const bool row_ok = rt.row < rows_left;
        uint8_t* q_row = q + (row0 + rt.row) * cols + col0 + rt.half * Shape::kPieceElems;
#pragma unroll
        for (int p = 0; p < Shape::kPieces; ++p) {
          float v[Shape::kPieceElems];
#pragma unroll
          for (int m = 0; m < Shape::kPieceChunks; ++m) {
            float w[Tile::kVec];
            unpack_to_float(x, *reinterpret_cast<const uint4*>(tile_smem + transpose_row_chunk_offset(base, Shape::kPieceChunks, p, m)), w);
#pragma unroll
            for (int e = 0; e < Tile::kVec; ++e) v[m * Tile::kVec + e] = w[e];
          }
          if (row_ok && 2 * Shape::kPieceElems * p + Shape::kPieceElems * rt.half < cols_left)
            quantize_store(q_row + 2 * Shape::kPieceElems * p, v, g);
        }
        if (rt.half == 0 && row_ok) s[cur.col * s_padded_rows + row0 + rt.row] = g.s;
      }

      // Column pass: the amax of the thread's in-bounds runs of two columns and the other quarters',
      // then the quantized runs.
      {
        Amax amax;
#pragma unroll
        for (int run = 0; run < 2; ++run) {
          Amax part;
#pragma unroll
          for (int i = 0; i < Shape::kRunRows; ++i)
            part.add(*reinterpret_cast<const Pack*>(tile_smem + column_base[run] + i * Tile::kRowBytes));
          if (Shape::kRunRows * (ct.quarter + 4 * run) < rows_left) amax.add(part);
        }
        amax.shuffle_max(1);
        amax.shuffle_max(2);
        const GroupScale g[2] = {group_scale(amax.lo(), pow2_scale), group_scale(amax.hi(), pow2_scale)};
        const bool cols_ok = 2 * ct.pack < cols_left;
        uint8_t* qt_col = qt + (col0 + 2 * ct.pack) * rows + row0;
#pragma unroll
        for (int run = 0; run < 2; ++run) {
          float v[2][Shape::kRunRows];
#pragma unroll
          for (int i = 0; i < Shape::kRunRows; ++i)
            Amax::unpack(*reinterpret_cast<const Pack*>(tile_smem + column_base[run] + i * Tile::kRowBytes), v[0][i], v[1][i]);
          const int row = Shape::kRunRows * (ct.quarter + 4 * run);
          if (cols_ok && row < rows_left) {
            quantize_store(qt_col + row, v[0], g[0]);
            quantize_store(qt_col + rows + row, v[1], g[1]);
          }
        }
        if (ct.quarter == 0 && cols_ok) {
          float* st_col = st + cur.row * st_padded_rows + col0 + 2 * ct.pack;
          st_col[0] = g[0].s, st_col[1] = g[1].s;
        }
      }
    }
    if (!more) break;
    if (staged) __syncthreads();  // every thread is done with the staged tile before the next one is staged
    cur = next;
    next.advance(step_rows, step_cols, col_tiles);
  }
}

}  // namespace dx
