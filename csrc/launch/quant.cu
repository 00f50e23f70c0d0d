// Launchers of the quantization kernels.
#include <cuda_bf16.h>

#include <atomic>
#include <type_traits>

#include "deepseek_ext/quant/cast_with_transpose.cuh"
#include "deepseek_ext/quant/dequantize.cuh"
#include "deepseek_ext/quant/per_block_cast.cuh"
#include "deepseek_ext/quant/per_token_cast.cuh"
#include "deepseek_ext/quant/swiglu_cast.cuh"
#include "deepseek_ext/quant/transpose_block.cuh"
#include "launch/launch_kernel.h"
#include "launch/quant.h"

namespace dx {

namespace {

// Grid size for `work` items, `per_block` per CTA; 0 means nothing to launch.
cudaError_t grid_for(int64_t work, int64_t per_block, unsigned* blocks) {
  const int64_t n = ceil_div(work, per_block);
  if (n > INT32_MAX) return cudaErrorInvalidConfiguration;
  *blocks = static_cast<unsigned>(n);
  return cudaSuccess;
}

// Raises kernel's dynamic shared-memory limit to `bytes` (fp32 transpose tiles need 64 KB, above
// the 48 KB a CTA gets without opting in) once per device, so that launches inside a CUDA-graph
// capture make no attribute call.
template <typename Kernel>
cudaError_t allow_dynamic_smem(Kernel kernel, int bytes) {
  constexpr int kMaxDevices = 64;
  static std::atomic<bool> done[kMaxDevices];
  int device = 0;
  if (cudaError_t err = cudaGetDevice(&device)) return err;
  const bool tracked = device < kMaxDevices;
  if (tracked && done[device].load(std::memory_order_acquire)) return cudaSuccess;
  const cudaError_t err = cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess && tracked) done[device].store(true, std::memory_order_release);
  return err;
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
  return dispatch_float_input(x_dtype, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    constexpr int64_t kGroupsPerBlock = kTileThreads / (kQuantGroup / Vec16<T>::kElems) * kTokenSteps;
    unsigned blocks = 0;
    if (cudaError_t err = grid_for(rows * ceil_div(cols, kQuantGroup), kGroupsPerBlock, &blocks)) return err;
    if (blocks == 0) return cudaSuccess;
    return launch_kernel(per_token_cast_to_fp8_kernel<Loader<T>>, blocks, kTileThreads, 0, stream, false,
                         Loader<T>{static_cast<const T*>(x), ld_x, extra...}, static_cast<uint8_t*>(q), s, rows,
                         cols, rows_per_batch, padded_rows, pow2_scale);
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
  const int64_t tile_rows = ceil_div(rows_per_batch, kTile), tile_cols = ceil_div(cols, kTile);
  unsigned blocks = 0;
  if (cudaError_t err = grid_for(num_rows / rows_per_batch * tile_rows * tile_cols, 1, &blocks)) return err;
  return dispatch_float_input(x_dtype, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    return launch_kernel(per_block_cast_to_fp8_kernel<T>, blocks, kTileThreads, 0, stream, false,
                         static_cast<const T*>(x), ld_x, static_cast<uint8_t*>(q), s, rows_per_batch, cols,
                         tile_rows, tile_cols, pow2_scale);
  });
}

cudaError_t launch_cast_with_transpose(const void* x, int x_dtype, int64_t ld_x, void* q, float* s,
                                       void* qt, float* st, int64_t rows, int64_t cols,
                                       int64_t s_padded_rows, int64_t st_padded_rows,
                                       bool pow2_scale, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  unsigned blocks = 0;
  if (cudaError_t err = grid_for(ceil_div(rows, kTile) * ceil_div(cols, kTile), 1, &blocks)) return err;
  return dispatch_float_input(x_dtype, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    constexpr int kSmem = cast_with_transpose_smem_bytes<T>();
    if (cudaError_t err = allow_dynamic_smem(cast_with_transpose_kernel<T>, kSmem)) return err;
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
  constexpr int kThreads = 256;
  unsigned blocks = 0;
  if (cudaError_t err = grid_for(num_rows * (cols / kDequantVec), kThreads, &blocks)) return err;
  if (blocks == 0) return cudaSuccess;
  const ScaleStrides strides{s_batch, s_row, s_col};
  const auto* q8 = static_cast<const uint8_t*>(q);
  switch (static_cast<DType>(out_dtype)) {
    case DType::kBF16:
      return launch_kernel(dequantize_kernel<__nv_bfloat16>, blocks, kThreads, 0, stream, false, q8, s,
                           static_cast<__nv_bfloat16*>(out), num_rows, cols, rows_per_batch, block_rows, strides);
    case DType::kF32:
      return launch_kernel(dequantize_kernel<float>, blocks, kThreads, 0, stream, false, q8, s,
                           static_cast<float*>(out), num_rows, cols, rows_per_batch, block_rows, strides);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace dx
