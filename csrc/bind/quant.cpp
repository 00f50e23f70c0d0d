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
}

}  // namespace dx::bind
