"""DemoRun: the tiny DeepSeek-V3 trained on the shipped corpus, step by step, with checkpoints
that resume bit for bit (model, optimizer, gate biases, data order and history are all saved)."""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from deepseek_ext.demo.corpus import Corpus
from deepseek_ext.models import DeepSeekV3, DeepSeekV3Config

WARMUP_STEPS = 20


@dataclass(frozen=True)
class RunSettings:
    """What defines a run: a resumed run keeps these from its checkpoint."""
    preset: str
    steps: int
    batch: int
    seq: int
    lr: float
    seed: int = 0
    fp8: bool = False

    @classmethod
    def for_preset(cls, preset: str, **given) -> "RunSettings":
        """The preset's defaults (PRESET_DEFAULTS) with the given values (None = default) on top."""
        if preset not in PRESET_DEFAULTS:
            raise ValueError(f"preset must be one of {sorted(PRESET_DEFAULTS)}, got {preset!r}")
        values = {**PRESET_DEFAULTS[preset], **{k: v for k, v in given.items() if v is not None}}
        return cls(preset=preset, **values)

    def check(self) -> None:
        for name in ("steps", "batch", "seq"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def config(self, min_seq_len: int) -> DeepSeekV3Config:
        base = DeepSeekV3Config.preset(self.preset)
        if base.vocab_size < 256:
            raise ValueError(f"preset {self.preset!r} has vocab_size {base.vocab_size}; the demo needs >= 256 (bytes)")
        return dataclasses.replace(base, fp8=self.fp8, max_seq_len=max(base.max_seq_len, min_seq_len))


# a few minutes on a 2-core CPU (tiny) / on one GPU (small)
PRESET_DEFAULTS = {"tiny": {"steps": 600, "batch": 16, "seq": 128, "lr": 3e-3},
                   "small": {"steps": 300, "batch": 16, "seq": 512, "lr": 1e-3}}


def lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < WARMUP_STEPS:
        return peak * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(steps - WARMUP_STEPS, 1)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class DemoRun:
    def __init__(self, settings: RunSettings, corpus: Corpus, device: torch.device | str = "cpu",
                 min_seq_len: int = 0):
        settings.check()
        self.settings, self.corpus, self.device = settings, corpus, torch.device(device)
        torch.manual_seed(settings.seed)
        self.model = DeepSeekV3(settings.config(max(settings.seq, min_seq_len)), device=self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=settings.lr, betas=(0.9, 0.95),
                                           weight_decay=0.1)
        self.data_generator = torch.Generator().manual_seed(settings.seed + 1)  # CPU: same order on any device
        self.step = 0
        self.train_seconds = 0.0
        # per step: main and MTP loss; per step and MoE layer: max / mean tokens per expert
        self.history: dict[str, list] = {"loss": [], "mtp_loss": [], "load_max_over_mean": []}

    @property
    def done(self) -> bool:
        return self.step >= self.settings.steps

    @property
    def tokens_per_step(self) -> int:
        return self.settings.batch * self.settings.seq

    def train_step(self) -> float:
        """One optimizer step and the balancing update; returns the main loss."""
        start = time.perf_counter()
        ids = self.corpus.batch(self.data_generator, self.settings.batch, self.settings.seq).to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.settings.steps, self.settings.lr)
        out = self.model(ids[:, :-1], ids[:, 1:])
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        loads = self.model.update_balancing()
        self.history["loss"].append(out.main_loss.item())
        mtp = self.model.mtp
        # unweighted: the mean cross-entropy of the MTP depths, comparable with the main loss
        self.history["mtp_loss"].append(out.mtp_loss.item() / mtp.lambda_ if mtp is not None else float("nan"))
        self.history["load_max_over_mean"].append([(load.max() / load.float().mean()).item() for load in loads])
        self.step += 1
        self.train_seconds += time.perf_counter() - start
        return self.history["loss"][-1]

    @torch.no_grad()
    def held_out_loss(self) -> float:
        """Mean main next-token loss over the held-out text (eval mode: the gates' loads are not counted)."""
        was_training = self.model.training
        self.model.eval()
        try:
            total, count = 0.0, 0
            for window in self.corpus.held_out_batches(self.settings.batch, self.settings.seq):
                window = window.to(self.device)
                out = self.model(window[:, :-1], window[:, 1:])
                total += out.main_loss.item() * window[:, 1:].numel()
                count += window[:, 1:].numel()
            return total / count
        finally:
            self.model.train(was_training)

    def state_dict(self) -> dict:
        return {"settings": dataclasses.asdict(self.settings), "step": self.step, "train_seconds": self.train_seconds,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "data_generator": self.data_generator.get_state(), "history": self.history}

    def save(self, path: Path) -> None:
        """Written to a temporary file first, so an interrupted save never leaves a broken checkpoint."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, corpus: Corpus, device: torch.device | str = "cpu", min_seq_len: int = 0) -> "DemoRun":
        state = torch.load(path, map_location=device, weights_only=True)
        run = cls(RunSettings(**state["settings"]), corpus, device, min_seq_len)
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.data_generator.set_state(state["data_generator"].cpu())
        run.step, run.train_seconds, run.history = state["step"], state["train_seconds"], state["history"]
        return run
