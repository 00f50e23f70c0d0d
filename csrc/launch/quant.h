// Quantization launchers: raw pointers, sizes, strides and a stream in; cudaError_t out.
// They choose launch shapes and never allocate. Element types are dx::DType codes.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

namespace dx {

// x: rows x cols (row stride ld_x elements, bf16/fp32); q: rows x cols e4m3 (contiguous);
// s: M-major scales, see m_major_scale_offset.
cudaError_t launch_per_token_cast_to_fp8(const void* x, int x_dtype, int64_t ld_x, void* q,
                                         float* s, int64_t rows, int64_t cols,
                                         int64_t rows_per_batch, int64_t padded_rows,
                                         bool pow2_scale, cudaStream_t stream);

// gate_up: rows x 2*inter (row stride ld_x), [g | u] per row; q: rows x inter; s as above.
cudaError_t launch_swiglu_cast_to_fp8(const void* gate_up, int x_dtype, int64_t ld_x, void* q,
                                      float* s, int64_t rows, int64_t inter,
                                      int64_t rows_per_batch, int64_t padded_rows,
                                      bool pow2_scale, cudaStream_t stream);

// x: batches of rows_per_batch x cols (flattened into num_rows rows, row stride ld_x);
// q contiguous; s: [batch, ceil(rows_per_batch/128), ceil(cols/128)] contiguous.
cudaError_t launch_per_block_cast_to_fp8(const void* x, int x_dtype, int64_t ld_x, void* q,
                                         float* s, int64_t num_rows, int64_t rows_per_batch,
                                         int64_t cols, bool pow2_scale, cudaStream_t stream);

// x: rows x cols (row stride ld_x); q/s: 1x128 along cols (s M-major, s_padded_rows);
// qt: cols x rows, st: M-major [cols, ceil(rows/128)] (st_padded_rows). rows, cols % 16 == 0.
cudaError_t launch_cast_with_transpose(const void* x, int x_dtype, int64_t ld_x, void* q, float* s,
                                       void* qt, float* st, int64_t rows, int64_t cols,
                                       int64_t s_padded_rows, int64_t st_padded_rows,
                                       bool pow2_scale, cudaStream_t stream);

// q: batch x rows x cols e4m3, s: [batch, ceil(rows/128), ceil(cols/128)] (both contiguous);
// qt: batch x cols x rows, st: [batch, ceil(cols/128), ceil(rows/128)]. rows, cols % 16 == 0.
cudaError_t launch_transpose_block_fp8(const void* q, const float* s, void* qt, float* st,
                                       int64_t batch, int64_t rows, int64_t cols,
                                       cudaStream_t stream);

// out[r, c] = q[r, c] * s[batch * s_batch + ((r % rows_per_batch) / block_rows) * s_row +
// (c / 128) * s_col]; q and out contiguous num_rows x cols, cols % 16 == 0; out bf16/fp32.
cudaError_t launch_dequantize(const void* q, const float* s, void* out, int out_dtype,
                             int64_t num_rows, int64_t cols, int64_t rows_per_batch,
                             int64_t block_rows, int64_t s_batch, int64_t s_row, int64_t s_col,
                             cudaStream_t stream);

}  // namespace dx
