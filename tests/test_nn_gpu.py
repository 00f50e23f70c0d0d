"""dx.nn with the kernels: the kernel path against the reference path on the same inputs, on an
sm_90 GPU and under the host emulation of the kernels (kernel_device "cpu"), where the layer
tests run at small shapes (the GPU-size ones skip there)."""
import pytest
import torch

import deepseek_ext as dx
from conftest import emulation_too_large
from deepseek_ext.gemm import M_ALIGNMENT, calc_diff
from deepseek_ext.models import DeepSeekV3Config
from test_models import train_steps

pytestmark = pytest.mark.gpu

# Emulated layers above this many multiply-adds (forward and backward GEMMs together) skip: the
# emulator runs a GEMM single-threaded at a few ns per multiply-add.
_EMULATION_LIMIT = 1 << 30


def _forward_backward(module, x, grad):
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    y = module(x)
    y.backward(grad)
    return [y.detach(), x.grad] + [p.grad.clone() for p in module.parameters() if p.grad is not None]


def _kernels_vs_reference(module, x, grad, monkeypatch, bound):
    assert dx.backend() == ("cuda" if x.is_cuda else "emulate")
    got = _forward_backward(module, x, grad)
    with monkeypatch.context() as m:
        m.setenv("DEEPSEEK_EXT_BACKEND", "reference")
        want = _forward_backward(module, x, grad)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert calc_diff(a, b) < bound


@pytest.mark.parametrize("in_features,out_features,tokens", [(2048, 1536, 1000), (512, 272, 200)])
def test_fp8_linear_kernels(kernel_device, monkeypatch, in_features, out_features, tokens):
    emulation_too_large(kernel_device, 3 * tokens * out_features * in_features, _EMULATION_LIMIT)
    layer = dx.nn.FP8Linear(in_features, out_features, device=kernel_device)
    x = torch.randn(tokens, in_features, device=kernel_device, dtype=torch.bfloat16)
    grad = torch.randn(tokens, out_features, device=kernel_device, dtype=torch.bfloat16)
    _kernels_vs_reference(layer, x, grad, monkeypatch, 1e-5)


# the GPU size; 16 experts top-4 small enough to emulate; the tiny preset's MoE (8 experts, top-2)
@pytest.mark.parametrize("hidden,intermediate,experts,topk,tokens",
                         [(512, 256, 16, 4, 700), (256, 128, 16, 4, 96), (256, 128, 8, 2, 64)])
def test_moe_kernels(kernel_device, monkeypatch, hidden, intermediate, experts, topk, tokens):
    rows = tokens * topk + experts * (M_ALIGNMENT - 1)  # routed rows, each expert padded to M_ALIGNMENT
    emulation_too_large(kernel_device, 9 * rows * hidden * intermediate, _EMULATION_LIMIT)  # w13 is [2I, H]
    torch.manual_seed(0)
    moe = dx.nn.DeepSeekMoE(hidden, intermediate, experts, topk, n_groups=4, topk_groups=2, device=kernel_device)
    x = torch.randn(tokens, hidden, device=kernel_device, dtype=torch.bfloat16)
    _kernels_vs_reference(moe, x, torch.randn_like(x), monkeypatch, 1e-4)


def test_cpu_ema_of_gpu_parameters():
    layer = torch.nn.Linear(256, 128, device="cuda")
    ema = dx.nn.CPUEMA(layer, decay=0.5)
    expected = layer.weight.detach().cpu().clone()
    for _ in range(3):
        with torch.no_grad():
            layer.weight.mul_(1.5)
        ema.update()
        expected = 0.5 * expected + 0.5 * layer.weight.detach().cpu()
    torch.testing.assert_close(ema.state_dict()["weight"], expected)
    ema.close()


def test_tiny_model_trains_on_the_gpu():
    _, losses = train_steps(DeepSeekV3Config.preset("tiny"), 30, device="cuda", batch=8)
    assert losses[-1] < 0.5 * losses[0]
