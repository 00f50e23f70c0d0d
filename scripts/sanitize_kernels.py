"""Runs every CUDA kernel once on a few small odd shapes (for compute-sanitizer in scripts/gpu.sh)."""
import torch

import deepseek_ext as dx

assert dx.backend() == "cuda", "compute-sanitizer run needs the kernels (sm_90 GPU + extension)"
torch.manual_seed(0)


def mark(part: str) -> None:
    """Progress in the log once the GPU is done with the previous part: the last mark names where a timeout hit."""
    torch.cuda.synchronize()
    print(f"sanitize: {part}", flush=True)


mark("quant")
for m, k in ((1, 16), (16, 144), (200, 4112), (144, 272)):
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        for pow2 in (False, True):
            q, s = dx.quant.per_token_cast_to_fp8(x, pow2)
            dx.quant.dequantize(q, s, out_dtype=torch.bfloat16)
            qb, sb = dx.quant.per_block_cast_to_fp8(x, pow2)
            dx.quant.dequantize(qb, sb)
            if k % 32 == 0:
                dx.quant.swiglu_cast_to_fp8(x, pow2)
            if m % 16 == 0:
                dx.quant.transpose_block_fp8(qb, sb)
                dx.quant.per_token_cast_to_fp8_with_transpose(x, pow2)
mark("gemm")
# Dense GEMM: odd M/N/K tails, both B scale kinds, bf16/fp32 out, accumulate into c.
for m, n, k in ((1, 16, 16), (7, 144, 272), (200, 2112, 400)):
    a, sa = dx.quant.per_token_cast_to_fp8(torch.randn(m, k, device="cuda"))
    b = torch.randn(n, k, device="cuda")
    for bq, bs in (dx.quant.per_block_cast_to_fp8(b), dx.quant.per_token_cast_to_fp8(b)):
        dx.gemm.fp8_gemm_nt(a, sa, bq, bs)
        dx.gemm.fp8_gemm_nt(a, sa, bq, bs, out_dtype=torch.float32, c=torch.randn(m, n, device="cuda"))
mark("grouped gemm")
# Grouped GEMMs and their permute/unpermute glue (odd N/K, padding blocks, masked rows, empty groups).
idx = torch.randint(-1, 5, (200, 3), device="cuda")
q, s = dx.quant.per_token_cast_to_fp8(torch.randn(200, 272, device="cuda"))
rows, row_scales, m_indices, inverse_map = dx.gemm.permute_to_grouped(q, s, idx, 5)
w, ws = dx.quant.per_block_cast_to_fp8(torch.randn(5, 144, 272, device="cuda"))
y = dx.gemm.m_grouped_fp8_gemm_nt_contiguous(rows, row_scales, w, ws, m_indices)
dx.gemm.unpermute_from_grouped(y, inverse_map, torch.rand(200, 3, device="cuda"))
# The layout kernels over several 1024-pair chunks: 256 experts, and 2000 (shared memory above 48 KB).
for tokens, experts in ((1500, 256), (300, 2000)):
    dx.gemm.permute_to_grouped(torch.randn(tokens, 64, device="cuda").bfloat16(), None,
                               torch.randint(-1, experts, (tokens, 8), device="cuda"), experts, 4)
a, sa = dx.quant.per_token_cast_to_fp8(torch.randn(5, 200, 272, device="cuda"))
dx.gemm.m_grouped_fp8_gemm_nt_masked(a, sa, w, ws, torch.tensor([0, 200, 1, 130, 64], device="cuda").int(), 64)
_, _, ga, gsa = dx.quant.per_token_cast_to_fp8_with_transpose(torch.randn(512, 144, device="cuda"))
_, _, gb, gsb = dx.quant.per_token_cast_to_fp8_with_transpose(torch.randn(512, 272, device="cuda"))
dx.gemm.k_grouped_fp8_gemm_tn_contiguous(ga, gsa, gb, gsb, [128, 0, 384], torch.randn(3, 144, 272, device="cuda"))
mark("ep")
# Expert-parallel dispatch/combine with loopback peers (FP8 and bf16, token-major and expanded).
buffer = dx.ep.Buffer.loopback(hidden=256, num_experts=16, num_ranks=4, max_tokens_per_rank=64, num_sms=4)
x = torch.randn(50, 256, device="cuda", dtype=torch.bfloat16)
topk_idx = torch.randint(-1, 16, (50, 4), device="cuda")
topk_weights = torch.rand(50, 4, device="cuda")
for inputs in (x, dx.quant.per_token_cast_to_fp8(x, pow2_scale=True)):
    for alignment in (1, 128):
        received = buffer.dispatch(inputs, topk_idx, topk_weights, expert_alignment=alignment)
        rows = received.x if received.x_scales is None else dx.quant.dequantize(received.x, received.x_scales)
        buffer.combine(rows.to(torch.bfloat16), received.handle)
torch.cuda.synchronize()
print("sanitize_kernels: done")
