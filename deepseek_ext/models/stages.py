"""A DeepSeekV3 cut into pipeline stages for dx.pipeline (DualPipe / DualPipeV).

The stages carry the main next-token path: the first embeds token ids, the last returns logits.
The MTP loss and the sequence-wise balance loss are not part of a pipelined step (they need the
embedding and head of both ends); gate-bias balancing is, through update_stage_balancing.
"""
from __future__ import annotations

import torch
from torch import nn

from deepseek_ext.models.deepseek_v3 import DeepSeekV3
from deepseek_ext.nn import DeepSeekMoE


class PipelineStage(nn.Module):
    """Blocks [start, stop) of a DeepSeekV3 (sharing its modules), plus the embedding on the
    first stage and the final norm and head on the last."""

    def __init__(self, model: DeepSeekV3, start: int, stop: int):
        super().__init__()
        self.dtype = model.config.dtype
        self.embed = model.embed if start == 0 else None
        self.layers = model.layers[start:stop]
        last = stop == len(model.layers)
        self.norm = model.norm if last else None
        self.head = model.head if last else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).to(self.dtype) if self.embed is not None else x
        for layer in self.layers:
            h = layer(h)
        return self.head(self.norm(h)).float() if self.head is not None else h


def pipeline_stages(model: DeepSeekV3, num_stages: int) -> list[PipelineStage]:
    """Splits the model's blocks into `num_stages` contiguous, near-equal stages."""
    n = len(model.layers)
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or not 1 <= num_stages <= n:
        raise ValueError(f"num_stages must be an int in [1, {n}] (the model's blocks), got {num_stages!r}")
    bounds = [round(i * n / num_stages) for i in range(num_stages + 1)]
    return [PipelineStage(model, bounds[i], bounds[i + 1]) for i in range(num_stages)]


@torch.no_grad()
def update_stage_balancing(*stages: nn.Module) -> list[torch.Tensor]:
    """After each optimizer step: every gate in the stages moves its bias by the step's load."""
    return [m.gate.update_bias() for stage in stages for m in stage.modules() if isinstance(m, DeepSeekMoE)]
