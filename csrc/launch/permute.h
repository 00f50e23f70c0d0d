// Launchers of the grouped-layout glue between routing and the grouped GEMMs (permute,
// unpermute): raw pointers, sizes and a stream in; cudaError_t out; never allocate.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

#include "deepseek_ext/permute/params.cuh"

namespace dx {

// The grouped layout (deepseek_ext/reference/permute.py) by a counting sort over chunks of
// permute::kLayoutChunkPairs pairs; num_experts <= permute::kLayoutMaxExperts.
//
// topk_idx: int64 [pairs] (tokens x topk, row-major). counts: int32 [num_experts + 1], zeroed by
// the caller; receives the pairs per expert and, last, the pairs with an id outside
// [-1, num_experts). chunk_counts: int32 [ceil(pairs / kLayoutChunkPairs) * num_experts] scratch,
// handed on to launch_grouped_layout. inverse_map: int32 [pairs]; set to -1 where the id is not
// an expert.
cudaError_t launch_count_experts(const int64_t* topk_idx, int64_t pairs, int num_experts, int* counts,
                                 int* chunk_counts, int* inverse_map, cudaStream_t stream);

// With the counts and chunk_counts of launch_count_experts (all ids valid): writes row_token and
// m_indices ([rows] int32, rows = sum of counts padded to `alignment`) and inverse_map's expert
// slots; chunk_counts is overwritten.
cudaError_t launch_grouped_layout(const int64_t* topk_idx, int64_t pairs, int topk, const int* counts,
                                  int* chunk_counts, int num_experts, int alignment, int* row_token, int* m_indices,
                                  int* inverse_map, cudaStream_t stream);

// out[r] = x[row_token[r]] (zeros where -1), rows of row_bytes (a multiple of 16) bytes; scales
// (sx null for none): element (token, c) at sx[c * ld_sx + token] -> s_out[c * ld_s_out + r].
cudaError_t launch_permute_rows(const void* x, int64_t row_bytes, const float* sx, int64_t ld_sx, int scale_cols,
                                const int* row_token, int64_t rows, void* out, float* s_out, int64_t ld_s_out,
                                cudaStream_t stream);

// out [tokens, hidden] bf16 = fixed-order fp32 weighted sum of y rows (y_dtype DType::kBF16 or
// kF32, [rows, hidden] contiguous) named by inverse_map [tokens, topk] (-1: none; a value outside
// [-1, rows) fails the launch, read on the device), weights fp32 [tokens, topk]. hidden a multiple
// of 8; pointers 16-byte aligned.
cudaError_t launch_unpermute(const void* y, int y_dtype, int64_t rows, const int* inverse_map, const float* weights,
                             int64_t tokens, int topk, int64_t hidden, void* out, cudaStream_t stream);

}  // namespace dx
