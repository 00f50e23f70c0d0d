"""dx.gemm: FP8 GEMMs with DeepSeek's fine-grained scaling (D = A @ B^T, both operands K-major)."""
from deepseek_ext.ops.gemm import (fp8_gemm_nt, k_grouped_fp8_gemm_tn_contiguous, m_grouped_fp8_gemm_nt_contiguous,
                                   m_grouped_fp8_gemm_nt_masked)
from deepseek_ext.ops.permute import permute_to_grouped, unpermute_from_grouped
from deepseek_ext.reference.gemm import M_ALIGNMENT
from deepseek_ext.reference.metrics import calc_diff

__all__ = ["M_ALIGNMENT", "calc_diff", "fp8_gemm_nt", "k_grouped_fp8_gemm_tn_contiguous",
           "m_grouped_fp8_gemm_nt_contiguous", "m_grouped_fp8_gemm_nt_masked", "permute_to_grouped",
           "unpermute_from_grouped"]
