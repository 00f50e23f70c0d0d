// Quantization launchers: raw pointers, sizes, strides and a stream in; cudaError_t out.
// They choose launch shapes and never allocate.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

namespace dx {

// x: rows x cols (row stride ld_x elements) of dtype x_dtype (DType::kBF16 / kF32);
// q: rows x cols e4m3 (contiguous); s: M-major scales, see m_major_scale_offset.
cudaError_t launch_per_token_cast_to_fp8(const void* x, int x_dtype, int64_t ld_x, void* q,
                                         float* s, int64_t rows, int64_t cols,
                                         int64_t rows_per_batch, int64_t padded_rows,
                                         bool pow2_scale, cudaStream_t stream);

}  // namespace dx
