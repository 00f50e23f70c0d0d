"""Runs every CUDA kernel once on a few small odd shapes (for compute-sanitizer in scripts/gpu.sh)."""
import torch

import deepseek_ext as dx

assert dx.backend() == "cuda", "compute-sanitizer run needs the kernels (sm_90 GPU + extension)"
torch.manual_seed(0)
for m, k in ((1, 16), (16, 144), (200, 4112), (144, 272)):
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        for pow2 in (False, True):
            q, s = dx.quant.per_token_cast_to_fp8(x, pow2)
            dx.quant.dequantize(q, s, out_dtype=torch.bfloat16)
            qb, sb = dx.quant.per_block_cast_to_fp8(x, pow2)
            dx.quant.dequantize(qb, sb)
            dx.quant.transpose_block_fp8(qb, sb)
            if k % 32 == 0:
                dx.quant.swiglu_cast_to_fp8(x, pow2)
            if m % 16 == 0:
                dx.quant.per_token_cast_to_fp8_with_transpose(x, pow2)
# Grouped GEMMs and their permute/unpermute glue (odd N/K, padding blocks, masked rows, empty groups).
idx = torch.randint(-1, 5, (200, 3), device="cuda")
q, s = dx.quant.per_token_cast_to_fp8(torch.randn(200, 272, device="cuda"))
rows, row_scales, m_indices, inverse_map = dx.gemm.permute_to_grouped(q, s, idx, 5)
w, ws = dx.quant.per_block_cast_to_fp8(torch.randn(5, 144, 272, device="cuda"))
y = dx.gemm.m_grouped_fp8_gemm_nt_contiguous(rows, row_scales, w, ws, m_indices)
dx.gemm.unpermute_from_grouped(y, inverse_map, torch.rand(200, 3, device="cuda"))
a, sa = dx.quant.per_token_cast_to_fp8(torch.randn(5, 200, 272, device="cuda"))
dx.gemm.m_grouped_fp8_gemm_nt_masked(a, sa, w, ws, torch.tensor([0, 200, 1, 130, 64], device="cuda").int(), 64)
_, _, ga, gsa = dx.quant.per_token_cast_to_fp8_with_transpose(torch.randn(512, 144, device="cuda"))
_, _, gb, gsb = dx.quant.per_token_cast_to_fp8_with_transpose(torch.randn(512, 272, device="cuda"))
dx.gemm.k_grouped_fp8_gemm_tn_contiguous(ga, gsa, gb, gsb, [128, 0, 384], torch.randn(3, 144, 272, device="cuda"))
torch.cuda.synchronize()
print("sanitize_kernels: done")
