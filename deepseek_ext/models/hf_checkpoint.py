"""load_hf_checkpoint / save_hf_checkpoint: DeepSeekV3 in the Hugging Face format of the official
DeepSeek-V3 weights (huggingface.co/deepseek-ai/DeepSeek-V3; README_WEIGHTS.md of
github.com/deepseek-ai/DeepSeek-V3).

A checkpoint is a folder: config.json (HF field names: hidden_size, num_experts_per_tok, n_group,
first_k_dense_replace, rope_scaling of type yarn, quantization_config {quant_method fp8, fmt
e4m3, weight_block_size [128, 128], activation_scheme dynamic}, ...), model.safetensors.index.json
and its safetensors shards (or one model.safetensors). The linear layers of attention and MLPs
are float8_e4m3fn with a float32 ``weight_scale_inv`` per 128x128 block (value = q * scale, a
partial last block padded); embeddings, norms, the gate, eh_proj and the heads are bf16, the
gate's ``e_score_correction_bias`` fp32. The MTP module d is layer ``num_hidden_layers + d``.

Names, HF -> ours (per layer i, ``model.layers.i.`` -> ``layers.i.``):
  model.embed_tokens / model.norm / lm_head            -> embed / norm / head
  input_layernorm / post_attention_layernorm           -> attn_norm / ffn_norm
  self_attn.{q_a_proj, q_a_layernorm, q_b_proj, q_proj, kv_a_proj_with_mqa, kv_a_layernorm,
            kv_b_proj, o_proj}                         -> attn.{wq_a, q_norm, wq_b, wq, wkv_a, kv_norm, wkv_b, wo}
  mlp.{gate_proj, up_proj} / mlp.down_proj (dense)     -> ffn.w13 = cat([gate, up]) rows / ffn.w2
  mlp.gate.weight / mlp.gate.e_score_correction_bias   -> ffn.gate.weight / ffn.gate.bias
  mlp.shared_experts.*                                 -> ffn.shared_experts.{w13, w2} (as dense)
  mlp.experts.e.{gate_proj, up_proj, down_proj}        -> ffn.w13[e] (gate rows, then up) / ffn.w2[e]
  MTP layer L+d: enorm / hnorm / shared_head.norm      -> mtp.depths.d.{embed_norm, hidden_norm, out_norm}
                 eh_proj                               -> mtp.depths.d.proj, column halves swapped (HF
                                                          projects cat([enorm(emb), hnorm(h)]), we
                                                          cat([hidden_norm(h), embed_norm(emb)]))
                 the layer's attention and MLP         -> mtp.depths.d.block
                 embed_tokens / shared_head.head       -> none: our MTP shares embed and head (the
                                                          copies are checked equal on load, written on save)

FP8 weights stay FP8: an FP8Linear that runs FP8 gets the stored e4m3 weight and scales as they
are (a CheckpointFP8Linear: no fp32 master, no dequantize/re-quantize), also when its weight is
gate and up stacked or eh_proj's halves swapped, if those pieces split at 128-multiples. Where
our layer cannot use them (the routed experts, held as grouped fp32 weights and quantized per
step; pieces that split a 128-block; an FP8Linear running bf16) they are dequantized into its
fp32 weight. Saving writes those fp32 weights quantized 128x128 as the official checkpoint does;
the FP8 ones as they are. Our training settings without an HF field (mtp_lambda,
bias_update_speed) are not saved; seq_balance_alpha is aux_loss_alpha.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

import deepseek_ext.gemm as gemm
import deepseek_ext.quant as quant
from deepseek_ext.models.config import DeepSeekV3Config
from deepseek_ext.models.deepseek_v3 import DeepSeekV3
from deepseek_ext.nn.block import Block
from deepseek_ext.nn.fp8_linear import FP8Linear
from deepseek_ext.nn.mlp import MLP
from deepseek_ext.reference.quant import FP8_DTYPE, GROUP, ceil_div, dequantize, per_block_cast_to_fp8

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
SCALE_SUFFIX = "_scale_inv"
QUANTIZATION_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                       "weight_block_size": [GROUP, GROUP]}
_PLAIN_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_DTYPE_NAMES = {"bfloat16": torch.bfloat16, "float32": torch.float32}

# --- config.json -------------------------------------------------------------------------------

# HF field -> DeepSeekV3Config field (the same meaning and value)
_FIELDS = {"vocab_size": "vocab_size", "hidden_size": "hidden_size", "intermediate_size": "intermediate_size",
           "moe_intermediate_size": "moe_intermediate_size", "num_hidden_layers": "n_layers",
           "num_attention_heads": "n_heads", "n_routed_experts": "n_routed_experts",
           "num_experts_per_tok": "n_activated_experts", "kv_lora_rank": "kv_lora_rank",
           "qk_nope_head_dim": "qk_nope_head_dim", "qk_rope_head_dim": "qk_rope_head_dim", "v_head_dim": "v_head_dim",
           "n_group": "n_expert_groups", "topk_group": "n_limited_groups", "routed_scaling_factor": "route_scale",
           "rope_theta": "rope_theta", "rms_norm_eps": "norm_eps", "max_position_embeddings": "max_seq_len",
           "first_k_dense_replace": "n_dense_layers"}
_OPTIONAL_FIELDS = {"aux_loss_alpha": "seq_balance_alpha"}
# fields whose value must be this one: what our model computes
_FIXED = {"model_type": "deepseek_v3", "hidden_act": "silu", "scoring_func": "sigmoid", "topk_method": "noaux_tc",
          "norm_topk_prob": True, "moe_layer_freq": 1, "tie_word_embeddings": False, "attention_bias": False,
          "attention_dropout": 0.0, "rope_interleave": True}
# fields that do not change the function (bookkeeping, initialization, serving)
_IGNORED = {"architectures", "auto_map", "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range",
            "use_cache", "transformers_version", "ep_size", "pretraining_tp", "seq_aux", "head_dim", "_name_or_path"}
_HANDLED = {"n_shared_experts", "q_lora_rank", "num_nextn_predict_layers", "rope_scaling",
            "num_key_value_heads", "torch_dtype", "dtype", "quantization_config"}


def _rope_from_hf(scaling) -> dict:
    """rope_scaling (null or yarn) -> our RoPE fields."""
    if scaling is None:
        return {"rope_factor": 1.0}
    kind = scaling.get("type", scaling.get("rope_type"))
    if kind != "yarn":
        raise ValueError(f"config.json rope_scaling type must be 'yarn' (or rope_scaling null), got {kind!r}")
    mscale, mscale_all_dim = scaling.get("mscale", 1.0), scaling.get("mscale_all_dim", 0.0)
    if mscale != mscale_all_dim:  # else HF scales cos/sin by their ratio, which our RoPE does not
        raise ValueError(f"config.json rope_scaling: mscale ({mscale}) must equal mscale_all_dim ({mscale_all_dim})")
    return {"rope_factor": float(scaling["factor"]), "original_seq_len": scaling["original_max_position_embeddings"],
            "beta_fast": float(scaling.get("beta_fast", 32)), "beta_slow": float(scaling.get("beta_slow", 1)),
            "mscale": float(mscale)}


def config_from_hf(hf: dict, max_seq_len: int | None = None) -> DeepSeekV3Config:
    """DeepSeekV3Config of an HF config.json dict; ValueError names a missing, unknown or
    unsupported field. max_seq_len overrides max_position_embeddings (RoPE tables are that long)."""
    unknown = sorted(set(hf) - set(_FIELDS) - set(_OPTIONAL_FIELDS) - set(_FIXED) - _IGNORED - _HANDLED)
    if unknown:
        raise ValueError(f"config.json has fields deepseek_ext does not know: {unknown}")
    missing = [f for f in (*_FIELDS, "q_lora_rank") if f not in hf]
    if missing:
        raise ValueError(f"config.json lacks required fields: {missing}")
    for field, value in _FIXED.items():
        if field in hf and hf[field] != value:
            raise ValueError(f"config.json {field} must be {value!r} (what deepseek_ext computes), got {hf[field]!r}")
    if hf.get("num_key_value_heads", hf["num_attention_heads"]) != hf["num_attention_heads"]:
        raise ValueError("config.json num_key_value_heads must equal num_attention_heads (MLA)")
    quantization = hf.get("quantization_config")
    if quantization is not None and quantization != QUANTIZATION_CONFIG:
        raise ValueError(f"config.json quantization_config must be {QUANTIZATION_CONFIG}, got {quantization}")
    dtype_name = hf.get("torch_dtype", hf.get("dtype", "bfloat16"))
    if dtype_name not in _DTYPE_NAMES:
        raise ValueError(f"config.json torch_dtype must be one of {sorted(_DTYPE_NAMES)}, got {dtype_name!r}")
    fields = {ours: hf[theirs] for theirs, ours in {**_FIELDS, **_OPTIONAL_FIELDS}.items() if theirs in hf}
    fields["n_dense_layers"] = min(fields["n_dense_layers"], fields["n_layers"])
    if max_seq_len is not None:
        fields["max_seq_len"] = max_seq_len
    return DeepSeekV3Config(**fields, **_rope_from_hf(hf.get("rope_scaling")),
                            n_shared_experts=hf.get("n_shared_experts") or 0, q_lora_rank=hf["q_lora_rank"] or 0,
                            n_mtp_modules=hf.get("num_nextn_predict_layers", 0),
                            fp8=quantization is not None, dtype=_DTYPE_NAMES[dtype_name])


def config_to_hf(config: DeepSeekV3Config) -> dict:
    """The config.json of `config` (with the FP8 quantization_config save_hf_checkpoint writes)."""
    dtype_name = {v: k for k, v in _DTYPE_NAMES.items()}.get(config.dtype)
    if dtype_name is None:
        raise ValueError(f"config.dtype must be one of {sorted(_DTYPE_NAMES)}, got {config.dtype}")
    rope = None if config.rope_factor <= 1 else {
        "type": "yarn", "factor": config.rope_factor, "original_max_position_embeddings": config.original_seq_len,
        "beta_fast": config.beta_fast, "beta_slow": config.beta_slow, "mscale": config.mscale,
        "mscale_all_dim": config.mscale}
    return {"architectures": ["DeepseekV3ForCausalLM"], **_FIXED,
            **{theirs: getattr(config, ours) for theirs, ours in {**_FIELDS, **_OPTIONAL_FIELDS}.items()},
            "n_shared_experts": config.n_shared_experts, "q_lora_rank": config.q_lora_rank or None,
            "num_nextn_predict_layers": config.n_mtp_modules, "num_key_value_heads": config.n_heads,
            "rope_scaling": rope, "seq_aux": True,
            "torch_dtype": dtype_name, "quantization_config": QUANTIZATION_CONFIG}


# --- which HF tensor goes where ------------------------------------------------------------------

class _Piece(NamedTuple):
    name: str  # HF tensor
    chunk: int = 0  # which of `chunks` equal parts of it, along the slot's dim
    chunks: int = 1


class _Slot(NamedTuple):
    """One of our tensors (model path; an expert of a grouped weight) made of HF pieces stacked along dim."""
    path: str
    pieces: tuple[_Piece, ...]
    fp8: bool = False  # the official checkpoint stores it FP8
    dim: int = 0
    expert: int | None = None


_ATTENTION = {"wq_a": "q_a_proj", "wq_b": "q_b_proj", "wq": "q_proj", "wkv_a": "kv_a_proj_with_mqa",
              "wkv_b": "kv_b_proj", "wo": "o_proj"}
_ATTENTION_NORMS = {"q_norm": "q_a_layernorm", "kv_norm": "kv_a_layernorm"}


def _one(path: str, hf: str, fp8: bool = False) -> _Slot:
    return _Slot(path, (_Piece(hf),), fp8)


def _swiglu_slots(w13: str, w2: str, hf: str, expert: int | None = None) -> list[_Slot]:
    """gate_proj and up_proj stacked into w13 (gate rows first); down_proj is w2."""
    gate_up = (_Piece(f"{hf}.gate_proj.weight"), _Piece(f"{hf}.up_proj.weight"))
    down = (_Piece(f"{hf}.down_proj.weight"),)
    return [_Slot(w13, gate_up, True, expert=expert), _Slot(w2, down, True, expert=expert)]


def _block_slots(ours: str, hf: str, block: Block) -> list[_Slot]:
    slots = [_one(f"{ours}.attn_norm.weight", f"{hf}.input_layernorm.weight"),
             _one(f"{ours}.ffn_norm.weight", f"{hf}.post_attention_layernorm.weight")]
    for mine, theirs in _ATTENTION.items():
        if hasattr(block.attn, mine):
            slots.append(_one(f"{ours}.attn.{mine}.weight", f"{hf}.self_attn.{theirs}.weight", fp8=True))
    for mine, theirs in _ATTENTION_NORMS.items():
        if hasattr(block.attn, mine):
            slots.append(_one(f"{ours}.attn.{mine}.weight", f"{hf}.self_attn.{theirs}.weight"))
    ffn = f"{ours}.ffn"
    if isinstance(block.ffn, MLP):
        return slots + _swiglu_slots(f"{ffn}.w13.weight", f"{ffn}.w2.weight", f"{hf}.mlp")
    slots += [_one(f"{ffn}.gate.weight", f"{hf}.mlp.gate.weight"),
              _one(f"{ffn}.gate.bias", f"{hf}.mlp.gate.e_score_correction_bias")]
    if block.ffn.shared_experts is not None:
        shared = f"{ffn}.shared_experts"
        slots += _swiglu_slots(f"{shared}.w13.weight", f"{shared}.w2.weight", f"{hf}.mlp.shared_experts")
    for e in range(block.ffn.num_experts):
        slots += _swiglu_slots(f"{ffn}.w13", f"{ffn}.w2", f"{hf}.mlp.experts.{e}", expert=e)
    return slots


def _slots(model: DeepSeekV3) -> list[_Slot]:
    slots = [_one("embed.weight", "model.embed_tokens.weight"), _one("norm.weight", "model.norm.weight"),
             _one("head.weight", "lm_head.weight")]
    for i, block in enumerate(model.layers):
        slots += _block_slots(f"layers.{i}", f"model.layers.{i}", block)
    for d, module in enumerate(model.mtp.depths if model.mtp is not None else ()):
        ours, hf = f"mtp.depths.{d}", f"model.layers.{model.config.n_layers + d}"
        eh_proj = f"{hf}.eh_proj.weight"
        slots += [_one(f"{ours}.embed_norm.weight", f"{hf}.enorm.weight"),
                  _one(f"{ours}.hidden_norm.weight", f"{hf}.hnorm.weight"),
                  _Slot(f"{ours}.proj.weight", (_Piece(eh_proj, 1, 2), _Piece(eh_proj, 0, 2)), dim=1),
                  _one(f"{ours}.out_norm.weight", f"{hf}.shared_head.norm.weight"),
                  *_block_slots(f"{ours}.block", hf, module.block)]
    return slots


def _mtp_copies(config: DeepSeekV3Config) -> dict[str, str]:
    """The MTP layers' copies of the embedding and the head -> the main tensor they copy."""
    copies = {}
    for d in range(config.n_mtp_modules):
        layer = f"model.layers.{config.n_layers + d}"
        copies[f"{layer}.embed_tokens.weight"] = "model.embed_tokens.weight"
        copies[f"{layer}.shared_head.head.weight"] = "lm_head.weight"
    return copies


def _part(t: torch.Tensor, piece: _Piece, dim: int) -> torch.Tensor:
    size = t.shape[dim] // piece.chunks
    return t.narrow(dim, piece.chunk * size, size)


def _join(tensors: dict[str, torch.Tensor], slot: _Slot) -> torch.Tensor:
    """Our tensor from the HF tensors of its pieces."""
    return torch.cat([_part(tensors[p.name], p, slot.dim) for p in slot.pieces], slot.dim)


def _split(t: torch.Tensor, slot: _Slot) -> dict[str, torch.Tensor]:
    """The HF tensors of our tensor t (the inverse of _join)."""
    chunks: dict[str, dict[int, torch.Tensor]] = {}
    for piece, part in zip(slot.pieces, t.chunk(len(slot.pieces), slot.dim)):
        chunks.setdefault(piece.name, {})[piece.chunk] = part
    return {name: torch.cat([parts[c] for c in sorted(parts)], slot.dim).contiguous() for name, parts in chunks.items()}


def _splits_on_blocks(slot: _Slot, shapes: dict[str, torch.Size]) -> bool:
    """Whether the pieces' boundaries fall on 128-blocks, so the FP8 data and scales stack exactly."""
    if len(slot.pieces) == 1 and slot.pieces[0].chunks == 1:
        return True
    return all((shapes[p.name][slot.dim] // p.chunks) % GROUP == 0 for p in slot.pieces)


# --- an FP8Linear holding the checkpoint's FP8 weight --------------------------------------------

class _CheckpointFP8Function(torch.autograd.Function):
    """x [M, K] -> bf16 x @ dequant(q, s)^T with 1x128-quantized x; backward gives dx only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q, s)
        ctx.x_dtype = x.dtype
        return gemm.fp8_gemm_nt(*quant.per_token_cast_to_fp8(x), q, s)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        q, s = ctx.saved_tensors
        grad_x = gemm.fp8_gemm_nt(*quant.per_token_cast_to_fp8(grad_y.contiguous()), *quant.transpose_block_fp8(q, s))
        return grad_x.to(ctx.x_dtype), None, None


class CheckpointFP8Linear(FP8Linear):
    """An FP8Linear computing with a stored FP8 weight: weight_fp8 [out, in] e4m3 and
    weight_scale_inv [ceil(out/128), ceil(in/128)] fp32, used as they are (frozen buffers: no fp32
    master, no re-quantization; gradients flow to the input only). ``weight`` is the e4m3 tensor;
    effective_weight() dequantizes it. Do not cast the module's dtype (it would cast these too)."""

    def __init__(self, weight_fp8: torch.Tensor, weight_scale_inv: torch.Tensor):
        nn.Module.__init__(self)  # not FP8Linear's: it would allocate the fp32 master this layer has none of
        self.out_features, self.in_features = weight_fp8.shape
        self.fp8 = True
        self.register_buffer("weight_fp8", weight_fp8)
        self.register_buffer("weight_scale_inv", weight_scale_inv)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_fp8

    def effective_weight(self) -> torch.Tensor:
        return quant.dequantize(self.weight_fp8, self.weight_scale_inv, block=(GROUP, GROUP))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x.shape[-1] must be in_features={self.in_features}, got {x.shape[-1]}")
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] == 0:
            return x.new_zeros((*x.shape[:-1], self.out_features), dtype=torch.bfloat16)
        y = _CheckpointFP8Function.apply(flat.contiguous(), self.weight_fp8, self.weight_scale_inv)
        return y.reshape(*x.shape[:-1], self.out_features)


# --- reading ---------------------------------------------------------------------------------------

def _safe_open(file: Path):
    from safetensors import safe_open  # on use: the GPU machines install deepseek_ext without its dependencies
    return safe_open(str(file), framework="pt", device="cpu")


class _Checkpoint:
    """The tensors of a checkpoint folder, read on demand."""

    def __init__(self, path: Path):
        index = path / INDEX_FILE
        if index.is_file():
            self.weight_map = json.loads(index.read_text())["weight_map"]
        elif (path / SINGLE_FILE).is_file():
            with _safe_open(path / SINGLE_FILE) as f:
                self.weight_map = dict.fromkeys(f.keys(), SINGLE_FILE)
        else:
            raise FileNotFoundError(f"{path} holds neither {INDEX_FILE} nor {SINGLE_FILE}")
        for shard in sorted(set(self.weight_map.values())):
            if not (path / shard).is_file():
                raise FileNotFoundError(f"shard {shard} (listed in {INDEX_FILE}) is missing from {path}")
        self.path, self._files = path, {}

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def tensor(self, name: str) -> torch.Tensor:
        if name not in self.weight_map:
            raise ValueError(f"the checkpoint lacks tensor {name} (the config implies it)")
        shard = self.weight_map[name]
        if shard not in self._files:
            self._files[shard] = _safe_open(self.path / shard)
        return self._files[shard].get_tensor(name)

    def weight(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(tensor, its 128x128 scales or None), dtypes and scale shape checked."""
        t = self.tensor(name)
        if name + SCALE_SUFFIX not in self:
            if t.dtype not in _PLAIN_DTYPES:
                raise TypeError(f"{name} must be bf16, fp16 or fp32 (or float8_e4m3fn with {name}{SCALE_SUFFIX}), "
                                f"got {t.dtype}")
            return t, None
        s = self.tensor(name + SCALE_SUFFIX)
        if t.dtype != FP8_DTYPE or t.dim() != 2:
            raise TypeError(f"{name} has {SCALE_SUFFIX}, so it must be a 2-D float8_e4m3fn tensor, got {t.dtype} "
                            f"{tuple(t.shape)}")
        if s.dtype != torch.float32:
            raise TypeError(f"{name}{SCALE_SUFFIX} must be float32, got {s.dtype}")
        blocks = (ceil_div(t.shape[0], GROUP), ceil_div(t.shape[1], GROUP))
        if tuple(s.shape) != blocks:
            raise ValueError(f"{name}{SCALE_SUFFIX} must have shape {blocks} (one per 128x128 block), "
                             f"got {tuple(s.shape)}")
        return t, s


def _target(model: nn.Module, slot: _Slot) -> tuple[nn.Module, torch.Tensor]:
    """(the module owning slot.path, the tensor or expert slice the slot fills)."""
    module_path, attr = slot.path.rsplit(".", 1)
    module = model.get_submodule(module_path)
    tensor = getattr(module, attr)
    return module, tensor if slot.expert is None else tensor[slot.expert]


def _load_slot(model: DeepSeekV3, checkpoint: _Checkpoint, slot: _Slot) -> None:
    module, target = _target(model, slot)
    stored = {p.name: checkpoint.weight(p.name) for p in slot.pieces}
    shapes = {name: t.shape for name, (t, _) in stored.items()}
    keep_fp8 = (isinstance(module, FP8Linear) and module.uses_fp8 and all(s is not None for _, s in stored.values())
                and _splits_on_blocks(slot, shapes))
    if keep_fp8:
        value = _join({name: t for name, (t, _) in stored.items()}, slot)
    else:
        value = _join({name: t.float() if s is None else dequantize(t, s, (GROUP, GROUP))
                       for name, (t, s) in stored.items()}, slot)
    if value.shape != target.shape:
        raise ValueError(f"{', '.join(stored)} give {slot.path} the shape {tuple(value.shape)}, "
                         f"the config gives {tuple(target.shape)}")
    if keep_fp8:
        scales = _join({name: s for name, (_, s) in stored.items()}, slot)
        parent, _, attr = slot.path.rsplit(".", 1)[0].rpartition(".")
        layer = CheckpointFP8Linear(value.to(target.device), scales.to(target.device))
        setattr(model.get_submodule(parent), attr, layer)
    else:
        with torch.no_grad():
            target.copy_(value)


def _check_names(checkpoint: _Checkpoint, slots: list[_Slot], copies: dict[str, str]) -> None:
    """Every tensor of the checkpoint has a place in the model (before anything is read)."""
    names = {p.name for slot in slots for p in slot.pieces}
    known = names | {name + SCALE_SUFFIX for name in names} | set(copies)
    unknown = sorted(set(checkpoint.weight_map) - known)
    if unknown:
        raise ValueError(f"the checkpoint has tensors deepseek_ext has no place for: {unknown[:8]}"
                         f"{f' and {len(unknown) - 8} more' if len(unknown) > 8 else ''}")


def _check_mtp_copies(checkpoint: _Checkpoint, copies: dict[str, str]) -> None:
    for copy, main in copies.items():
        if copy in checkpoint and not torch.equal(checkpoint.tensor(copy), checkpoint.tensor(main)):
            raise ValueError(f"{copy} differs from {main}: deepseek_ext's MTP shares the main model's")


def load_hf_checkpoint(path: str | os.PathLike, *, device: torch.device | str | None = None,
                       max_seq_len: int | None = None) -> DeepSeekV3:
    """DeepSeekV3 (eval mode, on `device`) from a Hugging Face DeepSeek-V3 checkpoint folder.
    max_seq_len overrides max_position_embeddings (163840 for DeepSeek-V3: the RoPE tables of
    every layer are that long). FileNotFoundError: no index / a missing shard; ValueError: a
    missing, unknown or misshapen tensor or config field; TypeError: a tensor of the wrong dtype."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} holds no config.json")
    config = config_from_hf(json.loads(config_file.read_text()), max_seq_len)
    checkpoint = _Checkpoint(path)
    model = DeepSeekV3(config, device=device)
    slots, copies = _slots(model), _mtp_copies(config)
    _check_names(checkpoint, slots, copies)
    for slot in slots:
        _load_slot(model, checkpoint, slot)
    _check_mtp_copies(checkpoint, copies)
    return model.eval()


# --- writing ---------------------------------------------------------------------------------------

def _slot_tensors(model: DeepSeekV3, slot: _Slot, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The HF tensors (and scales) of one slot, as the official checkpoint stores them."""
    module, target = _target(model, slot)
    if isinstance(module, CheckpointFP8Linear):
        weights, scales = _split(module.weight_fp8, slot), _split(module.weight_scale_inv, slot)
        return {**weights, **{name + SCALE_SUFFIX: s for name, s in scales.items()}}
    out = {}
    for name, value in _split(target.detach().float().cpu(), slot).items():
        if slot.fp8:
            out[name], out[name + SCALE_SUFFIX] = per_block_cast_to_fp8(value)
        else:
            out[name] = value if name.endswith("e_score_correction_bias") else value.to(dtype)
    return out


class _ShardWriter:
    """Writes tensors into shards of at most max_bytes (one larger tensor alone), named
    model-0000i-of-0000n once n is known, and the index."""

    def __init__(self, path: Path, max_bytes: int):
        self.path, self.max_bytes = path, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = self.total_bytes = 0
        self.shards: list[list[str]] = []  # the names in each shard written

    def _temporary(self, i: int) -> Path:
        return self.path / f"model-{i + 1:05d}.safetensors.partial"

    def _flush(self) -> None:
        from safetensors.torch import save_file  # on use, as _safe_open
        save_file(self.pending, str(self._temporary(len(self.shards))), metadata={"format": "pt"})
        self.shards.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def add(self, name: str, t: torch.Tensor) -> None:
        if self.pending and self.pending_bytes + _nbytes(t) > self.max_bytes:
            self._flush()
        self.pending[name] = t
        self.pending_bytes += _nbytes(t)
        self.total_bytes += _nbytes(t)

    def finish(self) -> None:
        if self.pending or not self.shards:
            self._flush()
        weight_map = {}
        for i, names in enumerate(self.shards):
            shard = f"model-{i + 1:05d}-of-{len(self.shards):05d}.safetensors"
            self._temporary(i).replace(self.path / shard)
            weight_map.update(dict.fromkeys(names, shard))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.path / INDEX_FILE).write_text(json.dumps(index, indent=2))


def save_hf_checkpoint(model: DeepSeekV3, path: str | os.PathLike, *, max_shard_bytes: int = 5 << 30) -> None:
    """Writes `model` as a Hugging Face DeepSeek-V3 checkpoint folder: config.json, shards of at most
    max_shard_bytes (FP8 weights with 128x128 scales, the rest bf16) and model.safetensors.index.json."""
    if not isinstance(model, DeepSeekV3):
        raise TypeError(f"model must be a deepseek_ext DeepSeekV3, got {type(model).__name__}")
    if any(m.num_local_experts != m.num_experts for m in model.moe_layers()):
        raise ValueError("save_hf_checkpoint needs every expert on this rank (a model built without ep_group)")
    hf_config = config_to_hf(model.config)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    copies_of: dict[str, list[str]] = {}  # main tensor -> its MTP copies, written beside it
    for copy, main in _mtp_copies(model.config).items():
        copies_of.setdefault(main, []).append(copy)
    writer = _ShardWriter(path, max_shard_bytes)
    for slot in _slots(model):
        for name, t in _slot_tensors(model, slot, _DTYPE_NAMES[hf_config["torch_dtype"]]).items():
            writer.add(name, t)
            for copy in copies_of.get(name, ()):
                writer.add(copy, t.clone())
    writer.finish()
    (path / "config.json").write_text(json.dumps(hf_config, indent=2))


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
