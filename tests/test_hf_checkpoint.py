"""dx.models.load_hf_checkpoint / save_hf_checkpoint against a tiny checkpoint written here, tensor by
tensor, in the official DeepSeek-V3 Hugging Face format (2 layers: one dense, one MoE; one MTP layer)."""
import dataclasses
import json

import pytest
import torch

import deepseek_ext as dx
from deepseek_ext.models.hf_checkpoint import CheckpointFP8Linear
from deepseek_ext.reference.quant import dequantize, per_block_cast_to_fp8

safe_open = pytest.importorskip("safetensors").safe_open  # a dependency; the GPU machines install without them
save_file = pytest.importorskip("safetensors.torch").save_file

# dims with partial 128-blocks; the dense FFN's gate/up split on a block boundary (kept FP8), the
# experts' (64 rows) inside one (dequantized)
HF_CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 160, "hidden_size": 256,
    "intermediate_size": 384, "moe_intermediate_size": 64, "num_hidden_layers": 2, "first_k_dense_replace": 1,
    "num_attention_heads": 2, "num_key_value_heads": 2, "n_routed_experts": 8, "n_shared_experts": 1,
    "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5, "q_lora_rank": 96,
    "kv_lora_rank": 64, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32,
    "num_nextn_predict_layers": 1, "max_position_embeddings": 64, "rope_theta": 10000, "rms_norm_eps": 1e-6,
    "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 32, "beta_fast": 32,
                     "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
    "hidden_act": "silu", "scoring_func": "sigmoid", "topk_method": "noaux_tc", "norm_topk_prob": True,
    "moe_layer_freq": 1, "tie_word_embeddings": False, "attention_bias": False, "torch_dtype": "bfloat16",
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
    "bos_token_id": 0, "eos_token_id": 1, "initializer_range": 0.02, "use_cache": True,
    "transformers_version": "4.46.3",
}
OURS = dx.models.DeepSeekV3Config(
    vocab_size=160, hidden_size=256, intermediate_size=384, moe_intermediate_size=64, n_layers=2, n_dense_layers=1,
    n_heads=2, n_routed_experts=8, n_shared_experts=1, n_activated_experts=2, n_expert_groups=4, n_limited_groups=2,
    route_scale=2.5, q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
    max_seq_len=64, rope_factor=4.0, original_seq_len=32, mscale=0.707, n_mtp_modules=1)
FP8_LINEARS = ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def hf_views(model):
    """HF name -> our float32 tensor(s) holding it, written out by hand from the HF modeling file."""
    views = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm.weight,
             "lm_head.weight": model.head.weight}

    def swiglu(prefix, w13, w2):
        views[prefix + "gate_proj.weight"], views[prefix + "up_proj.weight"] = w13.chunk(2)
        views[prefix + "down_proj.weight"] = w2

    def layer(i, block):
        p = f"model.layers.{i}."
        views[p + "input_layernorm.weight"] = block.attn_norm.weight
        views[p + "post_attention_layernorm.weight"] = block.ffn_norm.weight
        a = block.attn
        for name, t in (("q_a_proj", a.wq_a), ("q_a_layernorm", a.q_norm), ("q_b_proj", a.wq_b),
                        ("kv_a_proj_with_mqa", a.wkv_a), ("kv_a_layernorm", a.kv_norm), ("kv_b_proj", a.wkv_b),
                        ("o_proj", a.wo)):
            views[f"{p}self_attn.{name}.weight"] = t.weight
        ffn = block.ffn
        if isinstance(ffn, dx.nn.MLP):
            swiglu(p + "mlp.", ffn.w13.weight, ffn.w2.weight)
            return
        views[p + "mlp.gate.weight"], views[p + "mlp.gate.e_score_correction_bias"] = ffn.gate.weight, ffn.gate.bias
        swiglu(p + "mlp.shared_experts.", ffn.shared_experts.w13.weight, ffn.shared_experts.w2.weight)
        for e in range(ffn.num_experts):
            swiglu(f"{p}mlp.experts.{e}.", ffn.w13[e], ffn.w2[e])

    for i, block in enumerate(model.layers):
        layer(i, block)
    mtp = model.mtp.depths[0]
    p = f"model.layers.{len(model.layers)}."
    layer(len(model.layers), mtp.block)
    h_half, e_half = mtp.proj.weight.chunk(2, dim=1)  # ours multiplies cat([h, emb]); HF's eh_proj cat([emb, h])
    views.update({p + "enorm.weight": mtp.embed_norm.weight, p + "hnorm.weight": mtp.hidden_norm.weight,
                  p + "eh_proj.weight": (e_half, h_half), p + "shared_head.norm.weight": mtp.out_norm.weight})
    return views


def reference_and_checkpoint(seed=0):
    """A float32 model with random weights, rounded in place to what the checkpoint stores (FP8
    dequantized, bf16), and that checkpoint's tensors."""
    torch.manual_seed(seed)
    model = dx.models.DeepSeekV3(dataclasses.replace(OURS, fp8=False, dtype=torch.float32))
    tensors = {}
    with torch.no_grad():
        for p in model.parameters():  # away from their init (norms 1), so a swap shows
            p.add_(torch.randn_like(p) * (0.2 if p.dim() == 1 else 0.02))
        for layer in model.moe_layers():
            layer.gate.bias.copy_(torch.randn_like(layer.gate.bias) * 0.1)
        for name, view in hf_views(model).items():
            if isinstance(view, tuple):  # eh_proj: two halves of ours, bf16
                tensors[name] = torch.cat(view, dim=1).bfloat16()
                for half in view:
                    half.copy_(half.bfloat16().float())
            elif name.split(".")[-2] in FP8_LINEARS:
                tensors[name], tensors[name + "_scale_inv"] = per_block_cast_to_fp8(view)
                view.copy_(dequantize(tensors[name], tensors[name + "_scale_inv"], (128, 128)))
            elif name.endswith("e_score_correction_bias"):
                tensors[name] = view.clone()
            else:
                view.copy_(view.bfloat16().float())
                tensors[name] = view.bfloat16()
    mtp = "model.layers.2."
    tensors[mtp + "embed_tokens.weight"] = tensors["model.embed_tokens.weight"].clone()
    tensors[mtp + "shared_head.head.weight"] = tensors["lm_head.weight"].clone()
    return model.eval(), tensors


def write_checkpoint(path, tensors, config=HF_CONFIG, shards=3):
    path.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n].contiguous() for n in names[i::shards]}
        save_file(part, str(path / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    (path / "config.json").write_text(json.dumps(config))
    return path


def read_checkpoint(path):
    index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    out = {}
    for name, shard in index.items():
        with safe_open(str(path / shard), "pt") as f:
            out[name] = f.get_tensor(name)
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    reference, tensors = reference_and_checkpoint()
    return reference, tensors, write_checkpoint(tmp_path_factory.mktemp("hf") / "ckpt", tensors)


def forward(model, seed=1):
    """(logits of the main model, of the MTP module for the token after next)."""
    torch.manual_seed(seed)
    ids = torch.randint(0, OURS.vocab_size, (2, 24))
    with torch.no_grad():
        h = model.hidden_states(ids)
        mtp = model.mtp.depths[0]
        return model.logits(h), model.logits(mtp(h[:, :-1], model.embed_tokens(ids[:, 1:])))


def test_config_json_fields_map_onto_ours(checkpoint):
    model = dx.models.load_hf_checkpoint(checkpoint[2])
    assert model.config == OURS  # fp8 (quantization_config), bf16 activations, yarn's mscale_all_dim


def test_logits_match_the_dequantized_float32_model(checkpoint):
    reference, tensors, path = checkpoint
    model = dx.models.load_hf_checkpoint(path)
    # FP8 activations, a bf16 residual stream and routing near-ties: ~1e-3 (main), ~6e-3 (MTP, a layer further)
    for got, want, limit in zip(forward(model), forward(reference), (3e-3, 1.5e-2)):
        assert dx.gemm.calc_diff(got, want) < limit
    # our FP8 model holding those dequantized weights as fp32 masters computes the same
    fp8_reference = dx.models.DeepSeekV3(OURS)
    fp8_reference.load_state_dict(reference.state_dict())
    for got, want in zip(forward(model), forward(fp8_reference.eval())):
        assert dx.gemm.calc_diff(got, want) < 1e-6
    # the same weights: the kept FP8 layers dequantize to the reference's, the rest equal it
    got, want = dict(model.named_parameters()), dict(reference.named_parameters())
    for name, param in got.items():
        assert torch.equal(param, want[name]), name
    for got_layer, want_layer in zip(model.moe_layers(), reference.moe_layers()):
        assert torch.equal(got_layer.gate.bias, want_layer.gate.bias)
    for name, layer in model.named_modules():
        if isinstance(layer, CheckpointFP8Linear):
            assert torch.equal(layer.effective_weight(), want[name + ".weight"]), name


def test_fp8_weights_stay_fp8(checkpoint):
    _, tensors, path = checkpoint
    model = dx.models.load_hf_checkpoint(path)
    kept = {name for name, m in model.named_modules() if isinstance(m, CheckpointFP8Linear)}
    block = "layers.{}.attn.{}"
    assert kept == {*(block.format(i, w) for i in (0, 1) for w in ("wq_a", "wq_b", "wkv_a", "wkv_b", "wo")),
                    *(f"mtp.depths.0.block.attn.{w}" for w in ("wq_a", "wq_b", "wkv_a", "wkv_b", "wo")),
                    "layers.0.ffn.w13", "layers.0.ffn.w2", "layers.1.ffn.shared_experts.w2",
                    "mtp.depths.0.block.ffn.shared_experts.w2"}
    wq_a = model.layers[0].attn.wq_a
    assert wq_a.weight.dtype == torch.float8_e4m3fn and not list(wq_a.parameters())
    stored = tensors["model.layers.0.self_attn.q_a_proj.weight"]
    assert torch.equal(wq_a.weight.view(torch.uint8), stored.view(torch.uint8))
    w13 = model.layers[0].ffn.w13  # gate and up stacked, bytes and scales as stored
    gate, up = (tensors[f"model.layers.0.mlp.{n}_proj.weight"] for n in ("gate", "up"))
    assert torch.equal(w13.weight_fp8.view(torch.uint8), torch.cat([gate, up]).view(torch.uint8))
    assert torch.equal(w13.weight_scale_inv, torch.cat([tensors[f"model.layers.0.mlp.{n}_proj.weight_scale_inv"]
                                                        for n in ("gate", "up")]))


def test_gradients_reach_the_input_through_kept_fp8_layers(checkpoint):
    model = dx.models.load_hf_checkpoint(checkpoint[2])
    wo = model.layers[0].attn.wo
    x = torch.randn(5, wo.in_features, dtype=torch.bfloat16, requires_grad=True)
    wo(x).float().square().sum().backward()
    exact = 2 * (x.detach().double() @ wo.effective_weight().double().T) @ wo.effective_weight().double()
    assert dx.gemm.calc_diff(x.grad, exact) < 2e-3


def test_save_load_round_trip(checkpoint, tmp_path):
    _, tensors, path = checkpoint
    model = dx.models.load_hf_checkpoint(path)
    dx.models.save_hf_checkpoint(model, tmp_path / "again", max_shard_bytes=200_000)
    index = json.loads((tmp_path / "again/model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    config = json.loads((tmp_path / "again/config.json").read_text())
    assert config["quantization_config"] == HF_CONFIG["quantization_config"]
    again = read_checkpoint(tmp_path / "again")
    assert set(again) == set(tensors)
    for name, t in tensors.items():
        assert again[name].dtype == t.dtype and again[name].shape == t.shape, name
        if "experts" in name and "weight_scale_inv" in name:
            # dequantized into fp32 (q * s rounded), quantized again: the scale moves by an ulp at most
            torch.testing.assert_close(again[name], t, rtol=2 ** -21, atol=0)
        else:
            assert torch.equal(again[name].view(torch.uint8), t.view(torch.uint8)), name
    reloaded = dx.models.load_hf_checkpoint(tmp_path / "again")
    assert reloaded.config == model.config
    for got, want in zip(forward(reloaded), forward(model)):
        assert dx.gemm.calc_diff(got, want) < 1e-5


def test_single_file_checkpoint(checkpoint, tmp_path):
    _, tensors, path = checkpoint
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIG))
    for got, want in zip(forward(dx.models.load_hf_checkpoint(tmp_path)), forward(dx.models.load_hf_checkpoint(path))):
        assert torch.equal(got, want)


def test_bad_checkpoints_are_named(checkpoint, tmp_path):
    _, tensors, _ = checkpoint
    broken = write_checkpoint(tmp_path / "missing_shard", tensors)
    (broken / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00003.safetensors"):
        dx.models.load_hf_checkpoint(broken)

    extra = dict(tensors, **{"model.layers.0.self_attn.indexer.wk.weight": torch.zeros(16, 256).bfloat16()})
    with pytest.raises(ValueError, match=r"no place for: \['model.layers.0.self_attn.indexer.wk.weight'\]"):
        dx.models.load_hf_checkpoint(write_checkpoint(tmp_path / "unknown_tensor", extra))
    with pytest.raises(ValueError, match=r"fields deepseek_ext does not know: \['index_topk'\]"):
        dx.models.load_hf_checkpoint(write_checkpoint(tmp_path / "field", tensors, {**HF_CONFIG, "index_topk": 8}))
    with pytest.raises(ValueError, match="scoring_func must be 'sigmoid'"):
        dx.models.load_hf_checkpoint(write_checkpoint(tmp_path / "softmax", tensors,
                                                      {**HF_CONFIG, "scoring_func": "softmax"}))

    name = "model.layers.1.mlp.experts.3.up_proj.weight"
    bad = dict(tensors, **{name + "_scale_inv": tensors[name + "_scale_inv"].bfloat16()})
    with pytest.raises(TypeError, match=f"{name}_scale_inv must be float32, got torch.bfloat16"):
        dx.models.load_hf_checkpoint(write_checkpoint(tmp_path / "bad_dtype", bad))
    bad = dict(tensors, **{"model.norm.weight": tensors["model.norm.weight"].to(torch.int16)})
    with pytest.raises(TypeError, match="model.norm.weight must be bf16, fp16 or fp32"):
        dx.models.load_hf_checkpoint(write_checkpoint(tmp_path / "int_norm", bad))

    missing = {n: t for n, t in tensors.items() if n != "model.layers.0.self_attn.o_proj.weight_scale_inv"}
    with pytest.raises(TypeError, match="model.layers.0.self_attn.o_proj.weight must be bf16, fp16 or fp32"):
        dx.models.load_hf_checkpoint(write_checkpoint(tmp_path / "no_scale", missing))
    missing = {n: t for n, t in tensors.items() if not n.startswith("model.layers.2.enorm")}
    with pytest.raises(ValueError, match="lacks tensor model.layers.2.enorm.weight"):
        dx.models.load_hf_checkpoint(write_checkpoint(tmp_path / "no_enorm", missing))
    with pytest.raises(ValueError, match=r"wq_a.weight the shape \(96, 256\), the config gives \(64, 256\)"):
        dx.models.load_hf_checkpoint(write_checkpoint(tmp_path / "shape", tensors, {**HF_CONFIG, "q_lora_rank": 64}))
    copies = dict(tensors, **{"model.layers.2.shared_head.head.weight": tensors["lm_head.weight"] * 2})
    with pytest.raises(ValueError, match="model.layers.2.shared_head.head.weight differs from lm_head.weight"):
        dx.models.load_hf_checkpoint(write_checkpoint(tmp_path / "copies", copies))
