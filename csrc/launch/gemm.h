// FP8 GEMM launchers (dense and grouped): raw pointers, sizes, strides and a stream in; cudaError_t out.
// Builds the TMA descriptors per call and never allocates.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

#include "deepseek_ext/gemm/config.cuh"

namespace dx {

// D[M,N] (row stride N, dtype d_dtype = DType::kBF16 / kF32) = c + A @ B^T.
// a: [M,K] e4m3 (row stride lda); sa: 1x128 scales, element (m, kb) at sa[kb * ld_sa + m];
// b: [N,K] e4m3 (row stride ldb); sb: if sb_per_row, element (n, kb) at sb[kb * ld_sb + n],
// else 128x128 block scales, element (nb, kb) at sb[nb * ld_sb + kb]; c: fp32 [M,N] (row
// stride N) or null. N and K multiples of 16, K > 0; pointers 16-byte aligned.
// Uses at most num_sms CTAs (one per SM). Every launcher runs the variant `config` (null: the
// one gemm::choose_config picks); a config that does not apply fails with cudaErrorInvalidValue.
cudaError_t launch_fp8_gemm_nt(const void* a, int64_t lda, const float* sa, int64_t ld_sa,
                               const void* b, int64_t ldb, const float* sb, int64_t ld_sb,
                               bool sb_per_row, void* d, int d_dtype, const float* c, int64_t m,
                               int64_t n, int64_t k, const gemm::GemmConfig* config, int num_sms,
                               cudaStream_t stream);

// Groups along M, rows of A concatenated: D[M,N] (row stride N) row i = A[i] @ B[g]^T with
// g = m_indices[i // 128 * 128] (device int32 [M]); a block whose first row is -1 is padding and
// rows whose m_indices differ from their block's group are written as zeros. a: [M,K] e4m3
// contiguous, M a multiple of 128; sa: element (m, kb) at sa[kb * ld_sa + m]; b: [G,N,K] e4m3
// contiguous; sb: [G, ceil(N/128), ceil(K/128)] contiguous 128x128 scales.
cudaError_t launch_m_grouped_fp8_gemm_nt_contiguous(const void* a, const float* sa, int64_t ld_sa,
                                                    const void* b, const float* sb, const int* m_indices,
                                                    void* d, int d_dtype, int64_t m, int64_t n, int64_t k,
                                                    int64_t groups, const gemm::GemmConfig* config, int num_sms,
                                                    cudaStream_t stream);

// Groups [G, Mmax]: D[g, i] = A[g, i] @ B[g]^T for i < masked_m[g] (device int32 [G], read only by
// the kernel); the other rows are not written (the kernel visits only the tiles holding rows). a: [G,Mmax,K] e4m3 contiguous; sa: element (g, m, kb) at
// sa[(g * Kb + kb) * ld_sa + m]; b, sb as for the contiguous form; d: [G,Mmax,N] contiguous.
// expected_m (> 0) sizes the tiles (the config heuristic); it never changes the values.
cudaError_t launch_m_grouped_fp8_gemm_nt_masked(const void* a, const float* sa, int64_t ld_sa, const void* b,
                                                const float* sb, const int* masked_m, void* d, int d_dtype,
                                                int64_t groups, int64_t m_max, int64_t n, int64_t k,
                                                int64_t expected_m, const gemm::GemmConfig* config, int num_sms,
                                                cudaStream_t stream);

// Groups along K: D[g] (fp32 [M,N] contiguous, G of them) = c[g] + A[:, seg_g] @ B[:, seg_g]^T with
// seg_g = [k_offsets[g], k_offsets[g+1]) (device int32 [G+1], multiples of 128, k_offsets[G] = K).
// a: [M,K] e4m3 contiguous with sa element (m, kb) at sa[kb * ld_sa + m]; b: [N,K] e4m3
// contiguous with sb element (n, kb) at sb[kb * ld_sb + n]; c: fp32 [G,M,N] contiguous or null.
cudaError_t launch_k_grouped_fp8_gemm_tn_contiguous(const void* a, const float* sa, int64_t ld_sa,
                                                    const void* b, const float* sb, int64_t ld_sb,
                                                    const int* k_offsets, float* d, const float* c,
                                                    int64_t groups, int64_t m, int64_t n, int64_t k,
                                                    const gemm::GemmConfig* config, int num_sms, cudaStream_t stream);

}  // namespace dx
