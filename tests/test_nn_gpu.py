"""dx.nn on the GPU: the kernel path against the reference path on the same inputs (sm_90 only)."""
import pytest
import torch

import deepseek_ext as dx
from deepseek_ext.gemm import calc_diff
from deepseek_ext.models import DeepSeekV3Config
from test_models import train_steps

pytestmark = pytest.mark.gpu


def _forward_backward(module, x, grad):
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    y = module(x)
    y.backward(grad)
    return [y.detach(), x.grad] + [p.grad.clone() for p in module.parameters() if p.grad is not None]


def _kernels_vs_reference(module, x, grad, monkeypatch, bound):
    assert dx.backend() == "cuda"
    got = _forward_backward(module, x, grad)
    with monkeypatch.context() as m:
        m.setenv("DEEPSEEK_EXT_BACKEND", "reference")
        want = _forward_backward(module, x, grad)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert calc_diff(a, b) < bound


def test_fp8_linear_kernels(monkeypatch):
    layer = dx.nn.FP8Linear(2048, 1536, device="cuda")
    x = torch.randn(1000, 2048, device="cuda", dtype=torch.bfloat16)
    _kernels_vs_reference(layer, x, torch.randn(1000, 1536, device="cuda", dtype=torch.bfloat16), monkeypatch, 1e-5)


def test_moe_kernels(monkeypatch):
    torch.manual_seed(0)
    moe = dx.nn.DeepSeekMoE(512, 256, 16, 4, n_groups=4, topk_groups=2, device="cuda")
    x = torch.randn(700, 512, device="cuda", dtype=torch.bfloat16)
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
