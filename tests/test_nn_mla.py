"""MLA: absorbed inference path == naive training path; FP8 latent cache; YaRN RoPE; gradients."""
import math

import pytest
import torch

import deepseek_ext as dx
from deepseek_ext.gemm import calc_diff
from deepseek_ext.nn.rope import RopeConfig, apply_rope, inverse_frequencies, rope_cos_sin, yarn_mscale


def _cfg(fp8=False, q_lora=48, factor=4.0, **kw):
    rope = RopeConfig(16, factor=factor, original_max_len=32)
    return dx.nn.MLAConfig(hidden=64, n_heads=3, q_lora_rank=q_lora, kv_lora_rank=32, qk_nope_head_dim=16,
                           qk_rope_head_dim=16, v_head_dim=32, max_seq_len=64, rope=rope, fp8=fp8, **kw)


@pytest.mark.parametrize("q_lora", [48, 0])
def test_absorbed_equals_naive_in_fp64(q_lora):
    torch.manual_seed(0)
    mla = dx.nn.MLA(_cfg(q_lora=q_lora)).double()
    x = torch.randn(2, 13, 64, dtype=torch.float64)
    naive = mla(x)
    cache = mla.new_cache(2, dtype=torch.float64)
    whole = mla(x, cache=cache, start_pos=0)
    torch.testing.assert_close(whole, naive, rtol=1e-10, atol=1e-12)
    # incremental decoding: a prefix, then one token at a time, reading back the cache
    cache = mla.new_cache(2, dtype=torch.float64)
    parts = [mla(x[:, :5], cache=cache, start_pos=0)]
    parts += [mla(x[:, t:t + 1], cache=cache, start_pos=t) for t in range(5, 13)]
    torch.testing.assert_close(torch.cat(parts, 1), naive, rtol=1e-10, atol=1e-12)


def test_cache_holds_only_the_latent_and_the_rope_key():
    mla = dx.nn.MLA(_cfg())
    cache = mla.new_cache(1)
    assert cache.data.shape == (1, 64, 32 + 16)
    assert cache.bytes_per_token() == (32 + 16) * 4
    fp8_cache = mla.new_cache(1, fp8=True)
    assert fp8_cache.data.dtype == torch.float8_e4m3fn and fp8_cache.bytes_per_token() == 48 + 4


@torch.no_grad()
def test_fp8_cache_is_close():
    torch.manual_seed(0)
    mla = dx.nn.MLA(_cfg())
    x = torch.randn(2, 10, 64)
    naive = mla(x)
    got = mla(x, cache=mla.new_cache(2, fp8=True), start_pos=0)
    assert calc_diff(got, naive) < 1e-3


def test_fp8_mla_matches_fp32_with_gradients():
    torch.manual_seed(0)
    cfg = dx.nn.MLAConfig(hidden=128, n_heads=2, q_lora_rank=64, kv_lora_rank=64, qk_nope_head_dim=32,
                          qk_rope_head_dim=16, v_head_dim=32, max_seq_len=32, rope=RopeConfig(16), fp8=True)
    mla = dx.nn.MLA(cfg)
    ref = dx.nn.MLA(dx.nn.MLAConfig(**{**cfg.__dict__, "fp8": False}))
    ref.load_state_dict(mla.state_dict())
    x = torch.randn(2, 24, 128)
    xb = x.bfloat16().requires_grad_(True)
    xr = xb.detach().float().requires_grad_(True)
    y, y_ref = mla(xb), ref(xr)
    grad = torch.randn_like(y_ref)
    y.backward(grad.bfloat16())
    y_ref.backward(grad)
    assert y.dtype == torch.bfloat16 and calc_diff(y.detach(), y_ref.detach()) < 5e-3
    assert calc_diff(xb.grad, xr.grad) < 1e-2
    for (name, p), p_ref in zip(mla.named_parameters(), ref.parameters()):
        assert calc_diff(p.grad, p_ref.grad) < 1e-2, name
    # absorbed path on the FP8 model uses the dequantized weights: close to its naive path
    with torch.no_grad():
        assert calc_diff(mla(x.bfloat16(), cache=mla.new_cache(2), start_pos=0), y.detach()) < 5e-3


def test_gradcheck_small_mla():
    torch.manual_seed(0)
    cfg = dx.nn.MLAConfig(hidden=16, n_heads=2, q_lora_rank=8, kv_lora_rank=8, qk_nope_head_dim=4,
                          qk_rope_head_dim=4, v_head_dim=4, max_seq_len=8, rope=RopeConfig(4), fp8=False)
    mla = dx.nn.MLA(cfg).double()
    x = torch.randn(1, 5, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mla, (x,))


def test_yarn_frequencies():
    plain = RopeConfig(64)
    yarn = RopeConfig(64, factor=40.0, original_max_len=4096)
    f0, f1 = inverse_frequencies(plain), inverse_frequencies(yarn)
    assert torch.equal(f0[:10], f1[:10])  # fast dims (many turns in 4096 positions) unchanged
    torch.testing.assert_close(f1[-5:], f0[-5:] / 40.0)  # slow dims interpolated by the factor
    assert ((f1 <= f0) & (f1 >= f0 / 40 - 1e-18)).all()
    assert yarn_mscale(yarn) == pytest.approx(0.1 * math.log(40) + 1) and yarn_mscale(plain) == 1.0


def test_rope_is_relative():
    cos, sin = rope_cos_sin(RopeConfig(16, factor=4.0, original_max_len=16), 40)
    q, k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)

    def rotated(v, pos):
        return apply_rope(v.view(1, 1, 1, 16), cos[pos:pos + 1].double(), sin[pos:pos + 1].double()).flatten()

    dot = [float(rotated(q, m) @ rotated(k, m - 3)) for m in (3, 10, 30)]
    assert dot == pytest.approx([dot[0]] * 3, rel=1e-5)
    assert float(rotated(q, 7).norm()) == pytest.approx(float(q.norm()))
