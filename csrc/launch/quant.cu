// Launchers of the quantization kernels.
#include <cuda_bf16.h>

#include "deepseek_ext/quant/per_token_cast.cuh"
#include "launch/quant.h"

namespace dx {

namespace {
constexpr int kThreads = 256;

template <typename T>
cudaError_t per_token_cast_typed(const void* x, int64_t ld_x, void* q, float* s, int64_t rows,
                                 int64_t cols, int64_t rows_per_batch, int64_t padded_rows,
                                 bool pow2_scale, cudaStream_t stream) {
  constexpr int64_t kLanes = kQuantGroup / Vec16<T>::kElems;
  const int64_t threads = rows * ceil_div(cols, kQuantGroup) * kLanes;
  if (threads == 0) return cudaSuccess;
  const int64_t blocks = ceil_div(threads, kThreads);
  if (blocks > INT32_MAX) return cudaErrorInvalidConfiguration;
  per_token_cast_to_fp8_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const T*>(x), ld_x, static_cast<uint8_t*>(q), s, rows, cols, rows_per_batch,
      padded_rows, pow2_scale);
  return cudaGetLastError();
}
}  // namespace

cudaError_t launch_per_token_cast_to_fp8(const void* x, int x_dtype, int64_t ld_x, void* q,
                                         float* s, int64_t rows, int64_t cols,
                                         int64_t rows_per_batch, int64_t padded_rows,
                                         bool pow2_scale, cudaStream_t stream) {
  switch (static_cast<DType>(x_dtype)) {
    case DType::kBF16:
      return per_token_cast_typed<__nv_bfloat16>(x, ld_x, q, s, rows, cols, rows_per_batch,
                                                 padded_rows, pow2_scale, stream);
    case DType::kF32:
      return per_token_cast_typed<float>(x, ld_x, q, s, rows, cols, rows_per_batch, padded_rows,
                                         pow2_scale, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace dx
