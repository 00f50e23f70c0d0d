"""DeepSeekV3: presets, the 671B parameter counts on the meta device, FLOPs, FP8 training on CPU."""
import pytest
import torch

from deepseek_ext.gemm import calc_diff
from deepseek_ext.models import DeepSeekV3, DeepSeekV3Config, flops_per_token, param_counts


def test_v3_671b_parameter_counts():
    counts = param_counts(DeepSeekV3Config.preset("v3_671b"))
    assert 670e9 < counts["total"] < 672e9  # "671B total parameters"
    assert 36.5e9 < counts["activated"] < 38e9  # "37B activated for each token"
    # the released checkpoint: 671B main + ~14B MTP (own embedding and head copies) ~ 685B
    assert 13.3e9 < counts["mtp_checkpoint"] < 14.5e9
    assert 684e9 < counts["total"] + counts["mtp_checkpoint"] < 686e9
    assert counts["mtp"] == counts["mtp_checkpoint"] - counts["embedding"] - counts["head"]


def test_meta_build_of_671b():
    cfg = DeepSeekV3Config.preset("v3_671b")
    with torch.device("meta"):
        model = DeepSeekV3(cfg)
    assert len(model.layers) == 61 and len(model.moe_layers()) == 59  # 58 main + 1 MTP block
    moe = model.layers[3].ffn
    assert moe.w13.shape == (256, 4096, 7168) and moe.w2.shape == (256, 7168, 2048)
    assert model.layers[0].ffn.w13.weight.shape == (2 * 18432, 7168)
    assert model.layers[0].attn.wkv_a.weight.shape == (512 + 64, 7168)


def test_presets_and_overrides():
    tiny = DeepSeekV3Config.preset("tiny", n_layers=5)
    assert tiny.n_layers == 5 and DeepSeekV3Config.preset("tiny").n_layers == 3
    for name in ("tiny", "small"):
        c = DeepSeekV3Config.preset(name)
        dims = (c.hidden_size, c.intermediate_size, c.moe_intermediate_size, c.q_lora_rank,
                c.kv_lora_rank + c.qk_rope_head_dim, c.n_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim),
                c.n_heads * c.v_head_dim, c.vocab_size)
        assert all(d % 16 == 0 for d in dims), name
    with pytest.raises(ValueError, match="preset must be one of"):
        DeepSeekV3Config.preset("huge")


def test_flops_per_token():
    cfg = DeepSeekV3Config.preset("v3_671b")
    counts = param_counts(cfg)
    f4k, f8k = flops_per_token(cfg, 4096), flops_per_token(cfg, 8192)
    attention_per_position = 6 * 128 * (128 + 64 + 128) / 2 * (61 + 1)
    assert f8k - f4k == pytest.approx(attention_per_position * 4096)
    no_mtp = flops_per_token(cfg, 4096, include_mtp=False)
    matmul_params = counts["activated"] - counts["embedding"]
    assert no_mtp == pytest.approx(6 * matmul_params + attention_per_position * 4096 * 61 / 62)
    assert 6 * 36e9 < no_mtp < f4k < 6 * 45e9


def train_steps(cfg, steps, device="cpu", batch=2, seed=0):
    """`steps` AdamW steps (with the balancing update) on one fixed random batch [batch, 32]."""
    torch.manual_seed(seed)
    model = DeepSeekV3(cfg, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.randint(0, 64, (batch, 33), device=device)  # a fixed batch: the loss must go down on it
    losses = []
    for _ in range(steps):
        out = model(data[:, :-1], data[:, 1:])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.update_balancing()
        losses.append(out.main_loss.item())
    return model, losses


def test_tiny_model_trains_in_fp8_on_cpu():
    model, losses = train_steps(DeepSeekV3Config.preset("tiny"), 12)
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(m.gate.bias.abs().sum() > 0 for m in model.moe_layers())  # balancing moved the biases


def test_fp8_and_bf16_models_agree_at_init():
    cfg = DeepSeekV3Config.preset("tiny")
    torch.manual_seed(0)
    fp8 = DeepSeekV3(cfg)
    plain = DeepSeekV3(DeepSeekV3Config.preset("tiny", fp8=False, dtype=torch.float32))
    plain.load_state_dict(fp8.state_dict())
    ids = torch.randint(0, 256, (2, 17))
    a, b = fp8(ids[:, :-1], ids[:, 1:]), plain(ids[:, :-1], ids[:, 1:])
    assert abs(a.main_loss.item() - b.main_loss.item()) / b.main_loss.item() < 0.01
    a.loss.backward()
    b.loss.backward()
    for (name, p), q in zip(fp8.named_parameters(), plain.parameters()):
        # gates and routed experts follow discrete expert choices, which rounding flips for a few
        # tokens (their gradients are compared per module in test_nn_moe.py)
        routed = name.endswith(("gate.weight", "ffn.w13", "ffn.w2"))
        if q.grad is not None and q.grad.abs().sum() > 0 and not routed:
            assert calc_diff(p.grad, q.grad) < 0.05, name
