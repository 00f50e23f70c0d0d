// Bindings of the quantization launchers.
#include "bind/common.h"
#include "launch/quant.h"

namespace dx::bind {

void register_quant(pybind11::module_& m) {
  m.def(
      "per_token_cast_to_fp8",
      [](uintptr_t x, int x_dtype, int64_t ld_x, uintptr_t q, uintptr_t s, int64_t rows,
         int64_t cols, int64_t rows_per_batch, int64_t padded_rows, bool pow2_scale,
         uintptr_t stream) {
        return error_string(launch_per_token_cast_to_fp8(
            ptr<const void>(x), x_dtype, ld_x, ptr<void>(q), ptr<float>(s), rows, cols,
            rows_per_batch, padded_rows, pow2_scale, stream_of(stream)));
      },
      release_gil());
  m.def(
      "swiglu_cast_to_fp8",
      [](uintptr_t gate_up, int x_dtype, int64_t ld_x, uintptr_t q, uintptr_t s, int64_t rows,
         int64_t inter, int64_t rows_per_batch, int64_t padded_rows, bool pow2_scale,
         uintptr_t stream) {
        return error_string(launch_swiglu_cast_to_fp8(
            ptr<const void>(gate_up), x_dtype, ld_x, ptr<void>(q), ptr<float>(s), rows, inter,
            rows_per_batch, padded_rows, pow2_scale, stream_of(stream)));
      },
      release_gil());
  m.def(
      "per_block_cast_to_fp8",
      [](uintptr_t x, int x_dtype, int64_t ld_x, uintptr_t q, uintptr_t s, int64_t num_rows,
         int64_t rows_per_batch, int64_t cols, bool pow2_scale, uintptr_t stream) {
        return error_string(launch_per_block_cast_to_fp8(
            ptr<const void>(x), x_dtype, ld_x, ptr<void>(q), ptr<float>(s), num_rows,
            rows_per_batch, cols, pow2_scale, stream_of(stream)));
      },
      release_gil());
  m.def(
      "cast_with_transpose",
      [](uintptr_t x, int x_dtype, int64_t ld_x, uintptr_t q, uintptr_t s, uintptr_t qt,
         uintptr_t st, int64_t rows, int64_t cols, int64_t s_padded_rows, int64_t st_padded_rows,
         bool pow2_scale, uintptr_t stream) {
        return error_string(launch_cast_with_transpose(
            ptr<const void>(x), x_dtype, ld_x, ptr<void>(q), ptr<float>(s), ptr<void>(qt),
            ptr<float>(st), rows, cols, s_padded_rows, st_padded_rows, pow2_scale,
            stream_of(stream)));
      },
      release_gil());
  m.def(
      "transpose_block_fp8",
      [](uintptr_t q, uintptr_t s, uintptr_t qt, uintptr_t st, int64_t batch, int64_t rows,
         int64_t cols, uintptr_t stream) {
        return error_string(launch_transpose_block_fp8(ptr<const void>(q), ptr<const float>(s),
                                                       ptr<void>(qt), ptr<float>(st), batch, rows,
                                                       cols, stream_of(stream)));
      },
      release_gil());
  m.def(
      "dequantize",
      [](uintptr_t q, uintptr_t s, uintptr_t out, int out_dtype, int64_t num_rows, int64_t cols,
         int64_t rows_per_batch, int64_t block_rows, int64_t s_batch, int64_t s_row,
         int64_t s_col, uintptr_t stream) {
        return error_string(launch_dequantize(ptr<const void>(q), ptr<const float>(s),
                                              ptr<void>(out), out_dtype, num_rows, cols,
                                              rows_per_batch, block_rows, s_batch, s_row, s_col,
                                              stream_of(stream)));
      },
      release_gil());
}

}  // namespace dx::bind
