"""FP8Linear: FP8 Fprop/Dgrad/Wgrad against fp32 autograd, the plain path, the FP8 saved activation."""
import pytest
import torch
import torch.nn.functional as F

import deepseek_ext as dx
from deepseek_ext.gemm import calc_diff

FP8_BOUND = 2e-3  # calc_diff of FP8 (1x128 / 128x128 scaled) products against fp32


def _fp32_reference(x, weight, grad):
    x32 = x.detach().float().requires_grad_(True)
    w32 = weight.detach().clone().requires_grad_(True)
    y = x32 @ w32.T
    y.backward(grad.float())
    return y.detach(), x32.grad, w32.grad


@pytest.mark.parametrize("shape", [(200, 256, 384), (7, 144, 48), (1, 128, 16), (300, 2, 272, 208)])
def test_fp8_matches_fp32_autograd(shape):
    *lead, k, n = shape
    layer = dx.nn.FP8Linear(k, n)
    x = torch.randn(*lead, k, dtype=torch.bfloat16, requires_grad=True)
    y = layer(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    ref_y, ref_dx, ref_dw = _fp32_reference(x, layer.weight, grad)
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16 and layer.weight.grad.dtype == torch.float32
    assert calc_diff(y.detach(), ref_y) < FP8_BOUND
    assert calc_diff(x.grad, ref_dx) < FP8_BOUND
    assert calc_diff(layer.weight.grad, ref_dw) < FP8_BOUND


def test_plain_path_is_tight():
    layer = dx.nn.FP8Linear(100, 37, fp8=False)
    x = torch.randn(13, 100, requires_grad=True)
    y = layer(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    ref_y, ref_dx, ref_dw = _fp32_reference(x, layer.weight, grad)
    torch.testing.assert_close(y, ref_y, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.grad, ref_dx, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(layer.weight.grad, ref_dw, rtol=1e-6, atol=1e-6)


def test_plain_path_in_bf16():
    layer = dx.nn.FP8Linear(64, 32, fp8=False)
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, F.linear(x, layer.weight.bfloat16()))


def test_dims_not_multiple_of_16_fall_back_to_bf16():
    layer = dx.nn.FP8Linear(100, 48)
    assert not layer.uses_fp8 and not dx.nn.fp8_supported(100, 48) and dx.nn.fp8_supported(112, 48)
    x = torch.randn(6, 100, dtype=torch.bfloat16)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight.bfloat16()))


def test_saves_the_activation_in_fp8_only():
    layer = dx.nn.FP8Linear(256, 128)
    x = torch.randn(64, 256, dtype=torch.bfloat16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(x)
    activation_sized = [t for t in saved if t.numel() == x.numel()]
    assert activation_sized and all(t.dtype == torch.float8_e4m3fn for t in activation_sized)
    assert all(t.dtype in (torch.float8_e4m3fn, torch.float32) for t in saved)
    assert not any(t.dtype == torch.float32 and t.numel() >= 256 * 128 for t in saved)  # no master copy


def test_non_contiguous_and_empty_inputs():
    layer = dx.nn.FP8Linear(128, 64)
    base = torch.randn(128, 40, dtype=torch.bfloat16)
    x = base.T  # [40, 128], not contiguous
    torch.testing.assert_close(layer(x), layer(x.contiguous()), rtol=0, atol=0)
    empty = torch.randn(0, 128, requires_grad=True)
    y = layer(empty)
    assert y.shape == (0, 64)
    y.sum().backward()
    assert empty.grad.shape == (0, 128)


def test_wrong_input_width_names_it():
    with pytest.raises(ValueError, match=r"x.shape\[-1\] must be in_features=128"):
        dx.nn.FP8Linear(128, 64)(torch.randn(3, 96))


def test_effective_weight_is_the_dequantized_fp8_weight():
    layer = dx.nn.FP8Linear(256, 128)
    w = layer.effective_weight()
    assert calc_diff(w, layer.weight.detach()) < 1e-3 and not torch.equal(w, layer.weight.detach())
    assert dx.nn.FP8Linear(256, 128, fp8=False).effective_weight() is not None


def test_inference_path_equals_the_training_forward():
    layer = dx.nn.FP8Linear(256, 96)
    x = torch.randn(33, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        inference = layer(x)
    assert torch.equal(inference, layer(x.requires_grad_(True)).detach())
