"""RMSNorm and SwiGLU: analytic backward (recomputing from the input) against autograd."""
import pytest
import torch
import torch.nn.functional as F

import deepseek_ext as dx


def _saved(fn, *inputs):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fn(*inputs)
    return out, saved


@pytest.mark.parametrize("shape", [(3, 5, 48), (1, 7), (4, 130)])
def test_rmsnorm_gradcheck(shape):
    norm = dx.nn.RMSNorm(shape[-1]).double()
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(norm, (x,))


def test_rmsnorm_matches_fp32_autograd_and_keeps_only_the_input():
    norm = dx.nn.RMSNorm(96)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(4, 9, 96, requires_grad=True)
    y, saved = _saved(norm, x)
    grad = torch.randn_like(y)
    y.backward(grad)
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = norm.weight.detach().clone().requires_grad_(True)
    y_ref = x_ref * torch.rsqrt(x_ref.pow(2).mean(-1, keepdim=True) + norm.eps) * w_ref
    y_ref.backward(grad)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(norm.weight.grad, w_ref.grad)
    assert len(saved) == 2 and saved[0] is x  # input and weight: the output is recomputed


def test_rmsnorm_bf16_output_dtype():
    x = torch.randn(5, 32, dtype=torch.bfloat16)
    assert dx.nn.RMSNorm(32)(x).dtype == torch.bfloat16


def test_swiglu_gradcheck_and_saved_input():
    gate_up = torch.randn(4, 6, 2 * 24, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dx.nn.swiglu, (gate_up,))
    out, saved = _saved(dx.nn.swiglu, gate_up)
    g, u = gate_up.chunk(2, -1)
    torch.testing.assert_close(out, F.silu(g) * u)
    assert len(saved) == 1 and saved[0] is gate_up


def test_swiglu_bf16_and_odd_width_error():
    gate_up = torch.randn(3, 32, dtype=torch.bfloat16)
    g, u = gate_up.float().chunk(2, -1)
    torch.testing.assert_close(dx.nn.swiglu(gate_up), (F.silu(g) * u).bfloat16())
    with pytest.raises(ValueError, match=r"gate_up.shape\[-1\] must be even"):
        dx.nn.swiglu(torch.randn(2, 7))


def test_mlp_fp8_matches_fp32():
    mlp = dx.nn.MLP(128, 96)
    ref = dx.nn.MLP(128, 96, fp8=False)
    ref.load_state_dict(mlp.state_dict())
    x = torch.randn(40, 128)
    y = mlp(x.bfloat16())
    y.float().square().sum().backward()
    y_ref = ref(x)
    y_ref.square().sum().backward()
    assert dx.gemm.calc_diff(y.detach(), y_ref.detach()) < 2e-3
    for p, p_ref in zip(mlp.parameters(), ref.parameters()):
        assert dx.gemm.calc_diff(p.grad, p_ref.grad) < 5e-3
