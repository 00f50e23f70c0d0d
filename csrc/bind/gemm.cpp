// Bindings of the FP8 GEMM launchers (dense and grouped).
#include <pybind11/stl.h>

#include <optional>
#include <tuple>
#include <vector>

#include "bind/common.h"
#include "deepseek_ext/gemm/heuristic.h"
#include "launch/gemm.h"

namespace dx::bind {

namespace {

// (block_m, block_n, multicast) from Python; None: the launcher's heuristic chooses.
using ConfigArg = std::optional<std::tuple<int, int, int>>;

struct Config {
  gemm::GemmConfig value{};
  const gemm::GemmConfig* ptr = nullptr;
  explicit Config(const ConfigArg& arg) {
    if (!arg) return;
    value = {std::get<0>(*arg), std::get<1>(*arg), static_cast<gemm::Multicast>(std::get<2>(*arg))};
    ptr = &value;
  }
};

}  // namespace

void register_gemm(pybind11::module_& m) {
  m.def(
      "fp8_gemm_nt",
      [](uintptr_t a, int64_t lda, uintptr_t sa, int64_t ld_sa, uintptr_t b, int64_t ldb,
         uintptr_t sb, int64_t ld_sb, bool sb_per_row, uintptr_t d, int d_dtype, uintptr_t c,
         int64_t rows, int64_t cols, int64_t depth, const ConfigArg& config, int num_sms, uintptr_t stream) {
        return error_string(launch_fp8_gemm_nt(
            ptr<const void>(a), lda, ptr<const float>(sa), ld_sa, ptr<const void>(b), ldb,
            ptr<const float>(sb), ld_sb, sb_per_row, ptr<void>(d), d_dtype, ptr<const float>(c),
            rows, cols, depth, Config(config).ptr, num_sms, stream_of(stream)));
      },
      release_gil());
  m.def(
      "m_grouped_fp8_gemm_nt_contiguous",
      [](uintptr_t a, uintptr_t sa, int64_t ld_sa, uintptr_t b, uintptr_t sb, uintptr_t m_indices, uintptr_t d,
         int d_dtype, int64_t rows, int64_t cols, int64_t depth, int64_t groups, const ConfigArg& config, int num_sms,
         uintptr_t stream) {
        return error_string(launch_m_grouped_fp8_gemm_nt_contiguous(
            ptr<const void>(a), ptr<const float>(sa), ld_sa, ptr<const void>(b), ptr<const float>(sb),
            ptr<const int>(m_indices), ptr<void>(d), d_dtype, rows, cols, depth, groups, Config(config).ptr, num_sms,
            stream_of(stream)));
      },
      release_gil());
  m.def(
      "m_grouped_fp8_gemm_nt_masked",
      [](uintptr_t a, uintptr_t sa, int64_t ld_sa, uintptr_t b, uintptr_t sb, uintptr_t masked_m, uintptr_t d,
         int d_dtype, int64_t groups, int64_t m_max, int64_t cols, int64_t depth, int64_t expected_m,
         const ConfigArg& config, int num_sms, uintptr_t stream) {
        return error_string(launch_m_grouped_fp8_gemm_nt_masked(
            ptr<const void>(a), ptr<const float>(sa), ld_sa, ptr<const void>(b), ptr<const float>(sb),
            ptr<const int>(masked_m), ptr<void>(d), d_dtype, groups, m_max, cols, depth, expected_m, Config(config).ptr,
            num_sms,
            stream_of(stream)));
      },
      release_gil());
  m.def(
      "k_grouped_fp8_gemm_tn_contiguous",
      [](uintptr_t a, uintptr_t sa, int64_t ld_sa, uintptr_t b, uintptr_t sb, int64_t ld_sb, uintptr_t k_offsets,
         uintptr_t d, uintptr_t c, int64_t groups, int64_t rows, int64_t cols, int64_t depth, const ConfigArg& config,
         int num_sms, uintptr_t stream) {
        return error_string(launch_k_grouped_fp8_gemm_tn_contiguous(
            ptr<const void>(a), ptr<const float>(sa), ld_sa, ptr<const void>(b), ptr<const float>(sb), ld_sb,
            ptr<const int>(k_offsets), ptr<float>(d), ptr<const float>(c), groups, rows, cols, depth, Config(config).ptr,
            num_sms,
            stream_of(stream)));
      },
      release_gil());
  // Every compiled variant as (out_bytes, sb_per_row, block_m, block_n): the heuristic's choices.
  m.def("fp8_gemm_variants", [] {
    std::vector<std::tuple<int, bool, int, int>> variants;
    for (int out_bytes : {2, 4})
      for (bool sb_per_row : {false, true})
        for (int block_m : {64, 128})
          for (int block_n = gemm::kBlockNStep; block_n <= gemm::kMaxBlockN; block_n += gemm::kBlockNStep)
            if (gemm::instantiated(out_bytes, sb_per_row, block_m, block_n))
              variants.emplace_back(out_bytes, sb_per_row, block_m, block_n);
    return variants;
  });
  // The config the launchers' heuristic picks: kind 0-3 (gemm::GemmKind), m rows per group
  // (masked: expected_m), groups of output tiles sharing the SMs.
  m.def("fp8_gemm_config", [](int kind, int64_t rows, int64_t cols, int64_t depth, int64_t groups, int out_bytes,
                              bool sb_per_row, int num_sms) {
    const gemm::GemmConfig c = gemm::choose_config(
        {static_cast<gemm::GemmKind>(kind), rows, cols, depth, groups, out_bytes, sb_per_row, num_sms});
    return std::make_tuple(c.block_m, c.block_n, static_cast<int>(c.multicast));
  });
}

}  // namespace dx::bind
