"""Runs every CUDA kernel once on a few small odd shapes (for compute-sanitizer in scripts/gpu.sh)."""
import torch

import deepseek_ext as dx

assert dx.backend() == "cuda", "compute-sanitizer run needs the kernels (sm_90 GPU + extension)"
torch.manual_seed(0)
for m, k in ((1, 16), (7, 144), (200, 4112)):
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        for pow2 in (False, True):
            dx.quant.per_token_cast_to_fp8(x, pow2)
torch.cuda.synchronize()
print("sanitize_kernels: done")
