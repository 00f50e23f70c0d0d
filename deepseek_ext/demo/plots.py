"""The demo's PNG: the loss curves and each MoE layer's expert-load history."""
from __future__ import annotations

from pathlib import Path

from deepseek_ext._plot import pyplot


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def write_training_png(history: dict[str, list], layer_names: list[str], path: Path) -> bool:
    """False (and nothing written) when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return False
    window = max(1, len(history["loss"]) // 40)
    fig, (loss_ax, load_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("loss", "main (next token)"), ("mtp_loss", "MTP (token after next)")):
        loss_ax.plot(history[key], linewidth=0.5, alpha=0.35)
        loss_ax.plot(moving_average(history[key], window), linewidth=1.5, label=label,
                     color=loss_ax.lines[-1].get_color())
    loss_ax.set(xlabel="step", ylabel="cross-entropy (nats per byte)", title="training loss")
    loss_ax.legend()
    per_layer = list(zip(*history["load_max_over_mean"]))
    for name, ratios in zip(layer_names, per_layer):
        load_ax.plot(moving_average(list(ratios), window), linewidth=1.2, label=name)
    load_ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    load_ax.set(xlabel="step", ylabel="max / mean tokens per expert",
                title="expert load (1 = balanced; bias balancing, no aux loss)")
    load_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
