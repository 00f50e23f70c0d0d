// Bindings of the FP8 GEMM launchers (dense and grouped).
#include "bind/common.h"
#include "launch/gemm.h"

namespace dx::bind {

void register_gemm(pybind11::module_& m) {
  m.def(
      "fp8_gemm_nt",
      [](uintptr_t a, int64_t lda, uintptr_t sa, int64_t ld_sa, uintptr_t b, int64_t ldb,
         uintptr_t sb, int64_t ld_sb, bool sb_per_row, uintptr_t d, int d_dtype, uintptr_t c,
         int64_t rows, int64_t cols, int64_t depth, int num_sms, uintptr_t stream) {
        return error_string(launch_fp8_gemm_nt(
            ptr<const void>(a), lda, ptr<const float>(sa), ld_sa, ptr<const void>(b), ldb,
            ptr<const float>(sb), ld_sb, sb_per_row, ptr<void>(d), d_dtype, ptr<const float>(c),
            rows, cols, depth, num_sms, stream_of(stream)));
      },
      release_gil());
  m.def(
      "m_grouped_fp8_gemm_nt_contiguous",
      [](uintptr_t a, uintptr_t sa, int64_t ld_sa, uintptr_t b, uintptr_t sb, uintptr_t m_indices, uintptr_t d,
         int d_dtype, int64_t rows, int64_t cols, int64_t depth, int64_t groups, int num_sms, uintptr_t stream) {
        return error_string(launch_m_grouped_fp8_gemm_nt_contiguous(
            ptr<const void>(a), ptr<const float>(sa), ld_sa, ptr<const void>(b), ptr<const float>(sb),
            ptr<const int>(m_indices), ptr<void>(d), d_dtype, rows, cols, depth, groups, num_sms,
            stream_of(stream)));
      },
      release_gil());
  m.def(
      "m_grouped_fp8_gemm_nt_masked",
      [](uintptr_t a, uintptr_t sa, int64_t ld_sa, uintptr_t b, uintptr_t sb, uintptr_t masked_m, uintptr_t d,
         int d_dtype, int64_t groups, int64_t m_max, int64_t cols, int64_t depth, int64_t expected_m, int num_sms,
         uintptr_t stream) {
        return error_string(launch_m_grouped_fp8_gemm_nt_masked(
            ptr<const void>(a), ptr<const float>(sa), ld_sa, ptr<const void>(b), ptr<const float>(sb),
            ptr<const int>(masked_m), ptr<void>(d), d_dtype, groups, m_max, cols, depth, expected_m, num_sms,
            stream_of(stream)));
      },
      release_gil());
  m.def(
      "k_grouped_fp8_gemm_tn_contiguous",
      [](uintptr_t a, uintptr_t sa, int64_t ld_sa, uintptr_t b, uintptr_t sb, int64_t ld_sb, uintptr_t k_offsets,
         uintptr_t d, uintptr_t c, int64_t groups, int64_t rows, int64_t cols, int64_t depth, int num_sms,
         uintptr_t stream) {
        return error_string(launch_k_grouped_fp8_gemm_tn_contiguous(
            ptr<const void>(a), ptr<const float>(sa), ld_sa, ptr<const void>(b), ptr<const float>(sb), ld_sb,
            ptr<const int>(k_offsets), ptr<float>(d), ptr<const float>(c), groups, rows, cols, depth, num_sms,
            stream_of(stream)));
      },
      release_gil());
}

}  // namespace dx::bind
