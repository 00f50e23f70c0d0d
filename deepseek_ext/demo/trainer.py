"""DemoRun: the tiny DeepSeek-V3 trained on the shipped corpus, step by step, with checkpoints
that resume bit for bit (model, optimizer, gate biases, data order and history are all saved)."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from deepseek_ext.demo.corpus import Corpus
from deepseek_ext.models import DeepSeekV3, DeepSeekV3Config

WARMUP_STEPS = 20
CHECKPOINT_FORMAT = "deepseek_ext.demo checkpoint v2"
MAX_LR = 1.0  # AdamW steps of this size already wreck the model; larger is a typo


class CheckpointError(ValueError):
    """A checkpoint that is not a demo checkpoint, fails its SHA-256, or holds invalid settings."""


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the model was not updated by that step."""


def tmp_path_for(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


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

    @classmethod
    def from_dict(cls, values) -> "RunSettings":
        """Settings read from a checkpoint: exactly the known fields, with their types (then check())."""
        if not isinstance(values, dict):
            raise ValueError(f"settings must be a dict, got {type(values).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        if set(values) != names:
            raise ValueError(f"settings must have the fields {sorted(names)}, got {sorted(map(str, values))}")
        if not isinstance(values["preset"], str) or values["preset"] not in PRESET_DEFAULTS:
            raise ValueError(f"preset must be one of {sorted(PRESET_DEFAULTS)}, got {values['preset']!r}")
        for name in ("steps", "batch", "seq", "seed"):
            if type(values[name]) is not int:
                raise ValueError(f"{name} must be an int, got {values[name]!r}")
        if type(values["lr"]) not in (int, float):
            raise ValueError(f"lr must be a number, got {values['lr']!r}")
        if type(values["fp8"]) is not bool:
            raise ValueError(f"fp8 must be a bool, got {values['fp8']!r}")
        settings = cls(**{**values, "lr": float(values["lr"])})
        settings.check()
        return settings

    def check(self) -> None:
        for name in ("steps", "batch", "seq"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= MAX_LR):
            raise ValueError(f"lr must be > 0, finite and <= {MAX_LR}, got {self.lr}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")

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
        corpus.check_seq(settings.seq)
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
        if not torch.isfinite(out.loss.detach()):
            raise NonFiniteLoss(f"step {self.step + 1}: the loss is {out.loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(f"step {self.step + 1}: the gradient norm is {norm.item()}")
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

    def model_is_finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.model.state_dict().values() if t.is_floating_point())

    def save(self, path: Path) -> None:
        """Written to a temporary file, fsynced, renamed over `path` and the directory fsynced, so an
        interrupted save (even kill -9 or a power cut) never leaves a broken checkpoint. The file holds
        the serialized state and its SHA-256, checked by load(). A model with NaN/inf is never saved."""
        if not self.model_is_finite():
            raise NonFiniteLoss(f"step {self.step}: the model holds NaN/inf values; not saving it")
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        payload = buffer.getbuffer()
        wrapper = {"format": CHECKPOINT_FORMAT, "sha256": hashlib.sha256(payload).hexdigest(), "step": self.step,
                   "payload": torch.frombuffer(payload, dtype=torch.uint8) if len(payload) else torch.empty(0)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_path_for(path)
        with open(tmp, "wb") as f:
            torch.save(wrapper, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)

    @staticmethod
    def read_state(path: Path, device: torch.device | str = "cpu") -> dict:
        """The state saved by save(), after checking the format and the SHA-256 of the payload."""
        try:
            wrapper = torch.load(path, map_location="cpu", weights_only=True)
        except IsADirectoryError:
            raise CheckpointError("is a directory, not a demo checkpoint") from None
        except OSError:
            raise
        except Exception as e:  # torch.load reports a truncated or foreign file with many exception types
            raise CheckpointError(f"not a demo checkpoint ({type(e).__name__}: {e})") from None
        if not isinstance(wrapper, dict) or wrapper.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"not a demo checkpoint (no {CHECKPOINT_FORMAT!r} header)")
        payload = wrapper.get("payload")
        if not (isinstance(payload, torch.Tensor) and payload.dtype == torch.uint8 and payload.dim() == 1):
            raise CheckpointError("not a demo checkpoint (no payload)")
        data = payload.numpy().tobytes()
        if hashlib.sha256(data).hexdigest() != wrapper.get("sha256"):
            raise CheckpointError("corrupted: the SHA-256 of its payload does not match the one stored with it")
        try:
            return torch.load(io.BytesIO(data), map_location=device, weights_only=True)
        except Exception as e:
            raise CheckpointError(f"not a demo checkpoint ({type(e).__name__}: {e})") from None

    @classmethod
    def load(cls, path: Path, corpus: Corpus, device: torch.device | str = "cpu", min_seq_len: int = 0) -> "DemoRun":
        state = cls.read_state(path, device)
        if not isinstance(state, dict):
            raise CheckpointError("not a demo checkpoint (its state is not a dict)")
        try:
            settings = RunSettings.from_dict(state.get("settings"))
            step, seconds, history = state["step"], state["train_seconds"], state["history"]
            if type(step) is not int or not 0 <= step <= settings.steps:
                raise ValueError(f"step must be an int in [0, steps={settings.steps}], got {step!r}")
            if type(seconds) not in (int, float) or not (math.isfinite(seconds) and seconds >= 0):
                raise ValueError(f"train_seconds must be a finite number >= 0, got {seconds!r}")
            if not (isinstance(history, dict) and set(history) == {"loss", "mtp_loss", "load_max_over_mean"}
                    and all(isinstance(v, list) and len(v) == step for v in history.values())):
                raise ValueError(f"history must hold {step} entries per series")
            run = cls(settings, corpus, device, min_seq_len)
            run.model.load_state_dict(state["model"])
            run.optimizer.load_state_dict(state["optimizer"])
            run.data_generator.set_state(state["data_generator"].cpu())
        except CheckpointError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
            raise CheckpointError(f"invalid demo checkpoint ({type(e).__name__}: {e})") from None
        run.step, run.train_seconds, run.history = step, float(seconds), history
        return run


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
