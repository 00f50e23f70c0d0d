"""MTP loss and speculative decoding (lossless against greedy); CPUEMA."""
import pytest
import torch
import torch.nn.functional as F

import deepseek_ext as dx
from deepseek_ext.models import DeepSeekV3, DeepSeekV3Config, generate


def _fp32_tiny(**kw):
    torch.manual_seed(0)
    cfg = DeepSeekV3Config.preset("tiny", fp8=False, dtype=torch.float32, n_layers=2, **kw)
    return DeepSeekV3(cfg)


def test_mtp_loss_is_the_weighted_depth_cross_entropies():
    model = _fp32_tiny(n_mtp_modules=2, mtp_lambda=0.5)
    ids = torch.randint(0, 256, (2, 12))
    labels = torch.randint(0, 256, (2, 12))
    h = model.hidden_states(ids)
    got = model.mtp(h, labels, model.embed_tokens, model.head)
    expected, prev = 0.0, h
    for k, module in enumerate(model.mtp.depths, start=1):
        prev = module(prev[:, : 12 - k], model.embed_tokens(labels[:, k - 1: 11]))
        logits = model.head(module.out_norm(prev))
        expected = expected + F.cross_entropy(logits.flatten(0, 1), labels[:, k:].flatten())
    torch.testing.assert_close(got, 0.5 * expected / 2)
    out = model(ids, labels)
    torch.testing.assert_close(out.mtp_loss, got)
    assert out.loss.item() > out.main_loss.item()


def _pattern_trained_model():
    """A tiny model trained briefly on a repeating sequence, so the MTP draft is often right."""
    model = _fp32_tiny(seq_balance_alpha=0.0)
    pattern = torch.tensor([3, 17, 42, 99, 5, 61, 8, 200] * 5)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for step in range(24):
        start = step % 8
        ids = pattern[start:start + 25].unsqueeze(0)
        loss = model(ids[:, :-1], ids[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_balancing()
    return model, pattern


def test_speculative_decoding_is_lossless():
    model, pattern = _pattern_trained_model()
    prompt = pattern[:6].unsqueeze(0)
    greedy = generate(model, prompt, 20)
    spec = generate(model, prompt, 20, speculative=True)
    assert torch.equal(spec.tokens, greedy.tokens)
    assert spec.tokens.shape == (1, 26)
    assert 0.0 <= spec.acceptance_rate <= 1.0 and spec.accepted > 0
    # one forward per draft (plus the prompt's): each accepted draft saves one of greedy's forwards
    assert spec.main_forwards == 1 + spec.drafts and spec.main_forwards < greedy.main_forwards
    # an untrained model: the drafts are mostly wrong, the output still equals greedy
    fresh = _fp32_tiny()
    prompts = torch.randint(0, 256, (2, 4))
    assert torch.equal(generate(fresh, prompts, 9, speculative=True).tokens, generate(fresh, prompts, 9).tokens)


def test_generate_errors():
    model = _fp32_tiny(n_mtp_modules=0)
    with pytest.raises(ValueError, match="speculative=True needs a model with MTP"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), 2, speculative=True)
    with pytest.raises(ValueError, match="prompt must be"):
        generate(model, torch.zeros(3, dtype=torch.long), 2)


def test_cpu_ema_matches_the_closed_form():
    layer = torch.nn.Linear(8, 4)
    ema = dx.nn.CPUEMA(layer, decay=0.9)
    expected = {n: p.detach().clone() for n, p in layer.named_parameters()}
    for step in range(5):
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(torch.randn_like(p))
        ema.update()  # returns before the average is folded in
        for n, p in layer.named_parameters():
            expected[n] = 0.9 * expected[n] + 0.1 * p.detach()
    ema.wait()
    for n, avg in ema.state_dict().items():
        torch.testing.assert_close(avg, expected[n])
        assert avg.device.type == "cpu"
    target = torch.nn.Linear(8, 4)
    ema.copy_to(target)
    torch.testing.assert_close(target.weight, expected["weight"])
    assert ema.num_updates == 5
    ema.close()
    with pytest.raises(ValueError, match="decay must be in"):
        dx.nn.CPUEMA(layer, decay=1.5)
