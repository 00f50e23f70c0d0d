// Launchers of the quantization kernels.
#include <cuda_bf16.h>

#include <type_traits>

#include "deepseek_ext/quant/cast_with_transpose.cuh"
#include "deepseek_ext/quant/dequantize.cuh"
#include "deepseek_ext/quant/per_block_cast.cuh"
#include "deepseek_ext/quant/per_token_cast.cuh"
#include "deepseek_ext/quant/swiglu_cast.cuh"
#include "deepseek_ext/quant/transpose_block.cuh"
#include "launch/kernel_attributes.h"
#include "launch/launch_kernel.h"
#include "launch/quant.h"
#include "launch/tensor_map.h"

namespace dx {

namespace {

// Grid size for `work` items, `per_block` per CTA; 0 means nothing to launch.
cudaError_t grid_for(int64_t work, int64_t per_block, unsigned* blocks) {
  const int64_t n = ceil_div(work, per_block);
  if (n > INT32_MAX) return cudaErrorInvalidConfiguration;
  *blocks = static_cast<unsigned>(n);
  return cudaSuccess;
}

// Runs fn.template operator()<T>() for the bf16/fp32 input type code.
template <typename Fn>
cudaError_t dispatch_float_input(int dtype, Fn&& fn) {
  switch (static_cast<DType>(dtype)) {
    case DType::kBF16:
      return fn(static_cast<const __nv_bfloat16*>(nullptr));
    case DType::kF32:
      return fn(static_cast<const float*>(nullptr));
    default:
      return cudaErrorInvalidValue;
  }
}

// The per-token kernel reading rows through Loader<T>{x, ld_x, extra...}, T from x_dtype.
template <template <typename> class Loader, typename... Extra>
cudaError_t launch_token_cast(const void* x, int x_dtype, int64_t ld_x, void* q, float* s,
                              int64_t rows, int64_t cols, int64_t rows_per_batch,
                              int64_t padded_rows, bool pow2_scale, cudaStream_t stream,
                              Extra... extra) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  // The kernel's row and column indices are 32-bit (a pass past the last column included).
  if (rows > INT32_MAX || cols > INT32_MAX / 2 || rows_per_batch < 1 || rows_per_batch > rows)
    return cudaErrorInvalidValue;
  return dispatch_float_input(x_dtype, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    // Slots per row: the fewest (a power of two, at most a CTA's) whose one pass covers the row;
    // longer rows take several passes, one per gridDim.y.
    int slot_shift = 0;
    while (slot_shift < kTokenMaxSlotShift && (int64_t{token_steps<Loader<T>>()} << slot_shift) * kQuantGroup < cols)
      ++slot_shift;
    dim3 grid;
    if (cudaError_t err = grid_for(rows, kTokenSlots >> slot_shift, &grid.x)) return err;
    const int64_t passes = ceil_div(cols, (int64_t{token_steps<Loader<T>>()} << slot_shift) * kQuantGroup);
    if (passes > 65535) return cudaErrorInvalidConfiguration;
    grid.y = static_cast<unsigned>(passes);
    return launch_kernel(per_token_cast_to_fp8_kernel<Loader<T>>, grid, kTileThreads, 0, stream, false,
                         Loader<T>{static_cast<const T*>(x), ld_x, extra...}, static_cast<uint8_t*>(q), s,
                         static_cast<uint32_t>(rows), static_cast<int>(cols),
                         make_fast_divisor(static_cast<uint32_t>(rows_per_batch)), padded_rows, slot_shift, pow2_scale);
  });
}

}  // namespace

cudaError_t launch_per_token_cast_to_fp8(const void* x, int x_dtype, int64_t ld_x, void* q,
                                         float* s, int64_t rows, int64_t cols,
                                         int64_t rows_per_batch, int64_t padded_rows,
                                         bool pow2_scale, cudaStream_t stream) {
  return launch_token_cast<RowLoader>(x, x_dtype, ld_x, q, s, rows, cols, rows_per_batch,
                                      padded_rows, pow2_scale, stream);
}

cudaError_t launch_swiglu_cast_to_fp8(const void* gate_up, int x_dtype, int64_t ld_x, void* q,
                                      float* s, int64_t rows, int64_t inter,
                                      int64_t rows_per_batch, int64_t padded_rows,
                                      bool pow2_scale, cudaStream_t stream) {
  return launch_token_cast<SwigluLoader>(gate_up, x_dtype, ld_x, q, s, rows, inter,
                                         rows_per_batch, padded_rows, pow2_scale, stream, inter);
}

cudaError_t launch_per_block_cast_to_fp8(const void* x, int x_dtype, int64_t ld_x, void* q,
                                         float* s, int64_t num_rows, int64_t rows_per_batch,
                                         int64_t cols, bool pow2_scale, cudaStream_t stream) {
  if (num_rows == 0 || cols == 0) return cudaSuccess;
  const int64_t batches = num_rows / rows_per_batch;
  const int64_t tile_rows = ceil_div(rows_per_batch, kTile), tile_cols = ceil_div(cols, kTile);
  const int64_t tiles = batches * tile_rows * tile_cols;
  // The kernel numbers tiles in 32 bits and addresses them by int32 TMA coordinates.
  if (tiles > INT32_MAX || rows_per_batch > INT32_MAX || cols > INT32_MAX) return cudaErrorInvalidValue;
  int device = 0, sms = 0;
  if (cudaError_t err = cudaGetDevice(&device)) return err;
  if (cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) return err;
  return dispatch_float_input(x_dtype, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    constexpr int64_t kSize = sizeof(T);
    constexpr CUtensorMapDataType kType =
        kSize == 2 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
    // A stride over a dim of size 1 addresses nothing (and a lone row's ld_x is unchecked): 16 will do.
    const int64_t row_bytes = rows_per_batch > 1 ? ld_x * kSize : 16;
    const int64_t batch_bytes = batches > 1 ? rows_per_batch * ld_x * kSize : 16;
    CUtensorMap x_map, q_map;
    if (cudaError_t err = encode_tensor_map(&x_map, kType, 3, x, {cols, rows_per_batch, batches},
                                               {row_bytes, batch_bytes}, {kTile, kTile, 1}))
      return err;
    if (cudaError_t err = encode_tensor_map(&q_map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 3, q,
                                               {cols, rows_per_batch, batches}, {cols, rows_per_batch * cols},
                                               {kTile, kTile, 1}))
      return err;
    constexpr int kSmem = BlockCastSmem<T>::kRequest;
    if (cudaError_t err = allow_dynamic_smem<per_block_cast_to_fp8_kernel<T>>(kSmem)) return err;
    // Persistent CTAs: one wave of what the launch bounds keep resident, each walking tiles.
    const int64_t resident = int64_t{sms} * kBlockCastCtasPerSm<T>;
    const int64_t ctas = tiles < resident ? tiles : resident;
    return launch_kernel(per_block_cast_to_fp8_kernel<T>, static_cast<unsigned>(ctas), kTileThreads, kSmem, stream,
                         false, x_map, q_map, s, static_cast<uint32_t>(tiles),
                         make_fast_divisor(static_cast<uint32_t>(tile_rows * tile_cols)),
                         make_fast_divisor(static_cast<uint32_t>(tile_cols)), pow2_scale);
  });
}

cudaError_t launch_cast_with_transpose(const void* x, int x_dtype, int64_t ld_x, void* q, float* s,
                                       void* qt, float* st, int64_t rows, int64_t cols,
                                       int64_t s_padded_rows, int64_t st_padded_rows,
                                       bool pow2_scale, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  unsigned tiles = 0;
  if (cudaError_t err = grid_for(ceil_div(rows, kTile) * ceil_div(cols, kTile), 1, &tiles)) return err;
  int device = 0, sms = 0;
  if (cudaError_t err = cudaGetDevice(&device)) return err;
  if (cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) return err;
  return dispatch_float_input(x_dtype, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    constexpr int kSmem = cast_with_transpose_smem_bytes<T>();
    if (cudaError_t err = allow_dynamic_smem<cast_with_transpose_kernel<T>>(kSmem)) return err;
    // Persistent CTAs: one wave (as many as the launch bounds keep resident), each walking tiles.
    const unsigned resident = static_cast<unsigned>(sms) * kCastTransposeMinBlocks;
    const unsigned blocks = tiles < resident ? tiles : resident;
    return launch_kernel(cast_with_transpose_kernel<T>, blocks, kTileThreads, kSmem, stream, false,
                         static_cast<const T*>(x), ld_x, static_cast<uint8_t*>(q), s, static_cast<uint8_t*>(qt),
                         st, rows, cols, s_padded_rows, st_padded_rows, pow2_scale);
  });
}

cudaError_t launch_transpose_block_fp8(const void* q, const float* s, void* qt, float* st,
                                       int64_t batch, int64_t rows, int64_t cols,
                                       cudaStream_t stream) {
  if (batch == 0 || rows == 0 || cols == 0) return cudaSuccess;
  const int64_t tile_rows = ceil_div(rows, kTile), tile_cols = ceil_div(cols, kTile);
  unsigned blocks = 0;
  if (cudaError_t err = grid_for(batch * tile_rows * tile_cols, 1, &blocks)) return err;
  return launch_kernel(transpose_block_fp8_kernel, blocks, kTileThreads, 0, stream, false,
                       static_cast<const uint8_t*>(q), s, static_cast<uint8_t*>(qt), st, rows, cols, tile_rows,
                       tile_cols);
}

cudaError_t launch_dequantize(const void* q, const float* s, void* out, int out_dtype,
                             int64_t num_rows, int64_t cols, int64_t rows_per_batch,
                             int64_t block_rows, int64_t s_batch, int64_t s_row, int64_t s_col,
                             cudaStream_t stream) {
  if (num_rows == 0 || cols == 0) return cudaSuccess;
  // The kernel's row and column indices are 32-bit (element offsets stay 64-bit).
  if (num_rows > INT32_MAX || cols > INT32_MAX || block_rows > INT32_MAX) return cudaErrorInvalidValue;
  const ScaleStrides strides{s_batch, s_row, s_col};
  const FastDivisor batch_rows = make_fast_divisor(static_cast<uint32_t>(rows_per_batch));
  const FastDivisor scale_rows = make_fast_divisor(static_cast<uint32_t>(block_rows));
  const auto launch = [&](auto* typed_out) {
    using Out = std::remove_pointer_t<decltype(typed_out)>;
    const dim3 grid(static_cast<unsigned>(ceil_div(num_rows, kDequantWarps)),
                    static_cast<unsigned>(ceil_div(cols, DequantShape<Out>::kCols)));
    if (grid.y > 65535) return cudaErrorInvalidConfiguration;
    return launch_kernel(dequantize_kernel<Out>, grid, kDequantThreads, 0, stream, false,
                         static_cast<const uint8_t*>(q), s, typed_out, static_cast<uint32_t>(num_rows),
                         static_cast<uint32_t>(cols), batch_rows, scale_rows, strides);
  };
  switch (static_cast<DType>(out_dtype)) {
    case DType::kBF16:
      return launch(static_cast<__nv_bfloat16*>(out));
    case DType::kF32:
      return launch(static_cast<float*>(out));
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace dx
