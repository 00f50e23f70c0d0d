// Bindings of the grouped-layout launchers (permute/unpermute).
#include "bind/common.h"
#include "launch/permute.h"

namespace dx::bind {

void register_permute(pybind11::module_& m) {
  m.attr("PERMUTE_CHUNK_PAIRS") = permute::kLayoutChunkPairs;
  m.attr("PERMUTE_MAX_EXPERTS") = permute::kLayoutMaxExperts;
  m.def(
      "count_experts",
      [](uintptr_t topk_idx, int64_t pairs, int num_experts, uintptr_t counts, uintptr_t chunk_counts,
         uintptr_t inverse_map, uintptr_t stream) {
        return error_string(launch_count_experts(ptr<const int64_t>(topk_idx), pairs, num_experts, ptr<int>(counts),
                                                 ptr<int>(chunk_counts), ptr<int>(inverse_map), stream_of(stream)));
      },
      release_gil());
  m.def(
      "grouped_layout",
      [](uintptr_t topk_idx, int64_t pairs, int topk, uintptr_t counts, uintptr_t chunk_counts, int num_experts,
         int alignment, uintptr_t row_token, uintptr_t m_indices, uintptr_t inverse_map, uintptr_t stream) {
        return error_string(launch_grouped_layout(ptr<const int64_t>(topk_idx), pairs, topk, ptr<const int>(counts),
                                                  ptr<int>(chunk_counts), num_experts, alignment, ptr<int>(row_token),
                                                  ptr<int>(m_indices), ptr<int>(inverse_map), stream_of(stream)));
      },
      release_gil());
  m.def(
      "permute_rows",
      [](uintptr_t x, int64_t row_bytes, uintptr_t sx, int64_t ld_sx, int scale_cols, uintptr_t row_token,
         int64_t rows, uintptr_t out, uintptr_t s_out, int64_t ld_s_out, uintptr_t stream) {
        return error_string(launch_permute_rows(ptr<const void>(x), row_bytes, ptr<const float>(sx), ld_sx, scale_cols,
                                                ptr<const int>(row_token), rows, ptr<void>(out), ptr<float>(s_out),
                                                ld_s_out, stream_of(stream)));
      },
      release_gil());
  m.def(
      "unpermute",
      [](uintptr_t y, int y_dtype, int64_t rows, uintptr_t inverse_map, uintptr_t weights, int64_t tokens, int topk,
         int64_t hidden, uintptr_t out, uintptr_t stream) {
        return error_string(launch_unpermute(ptr<const void>(y), y_dtype, rows, ptr<const int>(inverse_map),
                                             ptr<const float>(weights), tokens, topk, hidden, ptr<void>(out),
                                             stream_of(stream)));
      },
      release_gil());
}

}  // namespace dx::bind
