// Launchers of the grouped-layout kernels (permute/unpermute).
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>

#include "deepseek_ext/permute/copy_rows.cuh"
#include "deepseek_ext/permute/grouped_layout.cuh"
#include "deepseek_ext/permute/unpermute.cuh"
#include "launch/launch_kernel.h"
#include "launch/permute.h"

namespace dx {

namespace {

constexpr int64_t kMaxGrid = 1 << 20;  // grid-stride loops cover the rest
constexpr int kDefaultSharedBytes = 48 * 1024;  // dynamic shared memory a CTA gets without opting in

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

int grid_for(int64_t items, int per_cta) { return static_cast<int>(std::min(ceil_div(items, per_cta), kMaxGrid)); }

}  // namespace

cudaError_t launch_count_experts(const int64_t* topk_idx, int64_t pairs, int num_experts, int* counts,
                                 int* chunk_counts, int* inverse_map, cudaStream_t stream) {
  if (pairs < 0 || num_experts < 1 || num_experts > permute::kLayoutMaxExperts) return cudaErrorInvalidValue;
  if (pairs == 0) return cudaSuccess;
  const int64_t chunks = ceil_div(pairs, permute::kLayoutChunkPairs);
  if (chunks > INT32_MAX) return cudaErrorInvalidValue;
  const size_t smem = (num_experts + size_t{1}) * sizeof(int);
  return launch_kernel(permute::count_experts_kernel, static_cast<unsigned>(chunks), permute::kLayoutThreads, smem,
                       stream, false, topk_idx, pairs, num_experts, counts, chunk_counts, inverse_map);
}

cudaError_t launch_grouped_layout(const int64_t* topk_idx, int64_t pairs, int topk, const int* counts,
                                  int* chunk_counts, int num_experts, int alignment, int* row_token, int* m_indices,
                                  int* inverse_map, cudaStream_t stream) {
  if (pairs < 0 || topk < 1 || num_experts < 1 || num_experts > permute::kLayoutMaxExperts || alignment < 1) {
    return cudaErrorInvalidValue;
  }
  if (pairs == 0) return cudaSuccess;
  const int64_t chunks = ceil_div(pairs, permute::kLayoutChunkPairs);
  if (chunks > INT32_MAX) return cudaErrorInvalidValue;
  cudaError_t err = launch_kernel(permute::chunk_offsets_kernel, static_cast<unsigned>(ceil_div(num_experts, 32)),
                                  permute::kOffsetThreads, 0, stream, false, counts, num_experts, chunks, alignment,
                                  chunk_counts, row_token, m_indices);
  if (err != cudaSuccess) return err;
  const int smem = permute::kLayoutWarps * num_experts * static_cast<int>(sizeof(int));
  if (smem > kDefaultSharedBytes) {  // many experts: opt in (the op syncs anyway, so never inside a graph capture)
    err = cudaFuncSetAttribute(reinterpret_cast<const void*>(permute::scatter_pairs_kernel),
                               cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
  }
  return launch_kernel(permute::scatter_pairs_kernel, static_cast<unsigned>(chunks), permute::kLayoutThreads, smem,
                       stream, false, topk_idx, pairs, topk, num_experts, static_cast<const int*>(chunk_counts),
                       row_token, m_indices, inverse_map);
}

cudaError_t launch_permute_rows(const void* x, int64_t row_bytes, const float* sx, int64_t ld_sx, int scale_cols,
                                const int* row_token, int64_t rows, void* out, float* s_out, int64_t ld_s_out,
                                cudaStream_t stream) {
  if (rows < 0 || row_bytes < 0 || row_bytes % 16 != 0 || !aligned16(x) || !aligned16(out)) {
    return cudaErrorInvalidValue;
  }
  if (rows == 0) return cudaSuccess;  // empty outputs may have null pointers
  if (sx != nullptr && (scale_cols < 0 || ld_s_out < rows || s_out == nullptr)) return cudaErrorInvalidValue;
  return launch_kernel(permute::permute_rows_kernel, grid_for(rows, permute::kCopyRowsPerCta), permute::kCopyThreads,
                       0, stream, false, static_cast<const uint8_t*>(x), row_bytes, sx, ld_sx, scale_cols, row_token,
                       rows, static_cast<uint8_t*>(out), s_out, ld_s_out);
}

cudaError_t launch_unpermute(const void* y, int y_dtype, int64_t rows, const int* inverse_map, const float* weights,
                             int64_t tokens, int topk, int64_t hidden, void* out, cudaStream_t stream) {
  if (rows < 0 || rows > INT32_MAX || tokens < 0 || topk < 0 || hidden < 0 || hidden % 8 != 0 || !aligned16(y) ||
      !aligned16(out)) {
    return cudaErrorInvalidValue;
  }
  if (tokens == 0 || hidden == 0) return cudaSuccess;
  const int grid = grid_for(tokens, 1);
  auto* dst = static_cast<__nv_bfloat16*>(out);
  switch (static_cast<DType>(y_dtype)) {
    case DType::kBF16:
      return launch_kernel(permute::unpermute_kernel<__nv_bfloat16>, grid, permute::kUnpermuteThreads, 0, stream,
                           false, static_cast<const __nv_bfloat16*>(y), rows, inverse_map, weights, tokens, topk,
                           hidden, dst);
    case DType::kF32:
      return launch_kernel(permute::unpermute_kernel<float>, grid, permute::kUnpermuteThreads, 0, stream, false,
                           static_cast<const float*>(y), rows, inverse_map, weights, tokens, topk, hidden, dst);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace dx
