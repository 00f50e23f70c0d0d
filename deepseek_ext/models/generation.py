"""Greedy generation with DeepSeekV3, plain or speculative with the MTP module as the draft.

Speculative decoding here is lossless: a drafted token is kept only when it equals the main
model's own greedy choice at that position, so the output equals plain greedy decoding. Each main
forward then yields one or two tokens; the acceptance rate is the share of drafts kept.
(No KV cache: every step recomputes the sequence, which keeps the comparison exact and simple.)
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from deepseek_ext.models.deepseek_v3 import DeepSeekV3


class Generation(NamedTuple):
    tokens: torch.Tensor  # [B, prompt + max_new_tokens]
    main_forwards: int
    drafts: int
    accepted: int

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafts if self.drafts else 0.0


def _greedy_next(model: DeepSeekV3, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax logits at every position [B, S], hidden states [B, S, H])."""
    h = model.hidden_states(tokens)
    return model.logits(h).argmax(-1), h


@torch.no_grad()
def generate(model: DeepSeekV3, prompt: torch.Tensor, max_new_tokens: int, speculative: bool = False) -> Generation:
    """prompt [B, P] (P >= 1) -> greedy continuation of max_new_tokens tokens."""
    if speculative and model.mtp is None:
        raise ValueError("speculative=True needs a model with MTP modules (config.n_mtp_modules >= 1)")
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must be [B, P] with P >= 1, got shape {tuple(prompt.shape)}")
    was_training = model.training
    model.eval()
    try:
        run = _speculative if speculative else _plain
        return run(model, prompt, prompt.shape[1] + max_new_tokens)
    finally:
        model.train(was_training)


def _plain(model: DeepSeekV3, tokens: torch.Tensor, total: int) -> Generation:
    forwards = 0
    while tokens.shape[1] < total:
        greedy, _ = _greedy_next(model, tokens)
        forwards += 1
        tokens = torch.cat([tokens, greedy[:, -1:]], dim=1)
    return Generation(tokens, forwards, 0, 0)


def _speculative(model: DeepSeekV3, tokens: torch.Tensor, total: int) -> Generation:
    greedy, h = _greedy_next(model, tokens)
    forwards, drafts, accepted = 1, 0, 0
    nxt = greedy[:, -1:]  # the main model's next token after `tokens`
    while tokens.shape[1] + 1 < total:
        following = torch.cat([tokens[:, 1:], nxt], dim=1)
        draft = model.mtp.draft_logits(h, following, model.embed_tokens, model.head).argmax(-1, keepdim=True)
        greedy, h_new = _greedy_next(model, torch.cat([tokens, nxt, draft], dim=1))
        forwards, drafts = forwards + 1, drafts + 1
        tokens = torch.cat([tokens, nxt], dim=1)
        verified = greedy[:, -2:-1]  # the main model's choice after nxt
        if bool((verified == draft).all()):
            accepted += 1
            tokens = torch.cat([tokens, draft], dim=1)
            nxt, h = greedy[:, -1:], h_new
        else:
            nxt, h = verified, h_new[:, :-1]
    if tokens.shape[1] < total:
        tokens = torch.cat([tokens, nxt], dim=1)
    return Generation(tokens[:, :total], forwards, drafts, accepted)
