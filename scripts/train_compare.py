"""Train the same DeepSeek-V3 twice from the same seed, FP8 and bf16, and compare the losses.

    python scripts/train_compare.py OUT_DIR [--preset small] [--steps 300] [--device cuda]

Data: a synthetic language with a fixed, learnable structure, identical in both runs: each token
b has 4 successors (a fixed random table); which one follows is drawn with probabilities
0.6/0.25/0.1/0.05 rotated by the token before b, so the best loss (~1.03 nats) needs both previous
tokens (attention), and a bigram model stops near ln 4. Writes
OUT_DIR/train_compare.json (both curves, the relative difference of the final losses, averaged
over the last 20 steps) and OUT_DIR/train_compare.png. The DeepSeek-V3 report's bound for the
FP8 vs bf16 relative loss difference is 0.25%.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import deepseek_ext as dx
from deepseek_ext._plot import pyplot
from deepseek_ext.demo.trainer import lr_at
from deepseek_ext.models import DeepSeekV3, DeepSeekV3Config

NEXT_PROBS = (0.6, 0.25, 0.1, 0.05)
AVERAGE_LAST = 20


class SyntheticLanguage:
    """The order-2 language of the module doc, sampled from its own generator."""

    def __init__(self, vocab: int, seed: int, device):
        self.gen = torch.Generator().manual_seed(seed)
        self.successors = torch.randint(0, vocab, (vocab, len(NEXT_PROBS)), generator=self.gen).to(device)
        self.vocab, self.device = vocab, device

    def batch(self, batch: int, seq: int) -> torch.Tensor:
        """[batch, seq + 1] tokens."""
        n = len(NEXT_PROBS)
        draws = torch.multinomial(torch.tensor(NEXT_PROBS).expand(batch * (seq - 1), -1), 1,
                                  generator=self.gen).view(batch, seq - 1).to(self.device)
        out = list(torch.randint(0, self.vocab, (2, batch), generator=self.gen).to(self.device))
        for i in range(seq - 1):
            choice = (draws[:, i] + out[-2]) % n  # the token before b rotates b's successor probabilities
            out.append(self.successors[out[-1], choice])
        return torch.stack(out, 1)


def train(cfg: DeepSeekV3Config, args) -> list[float]:
    torch.manual_seed(args.seed)
    model = DeepSeekV3(cfg, device=args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    data = SyntheticLanguage(cfg.vocab_size, args.seed + 1, args.device)
    losses, start = [], time.time()
    for step in range(args.steps):
        ids = data.batch(args.batch, args.seq)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr)
        out = model(ids[:, :-1], ids[:, 1:])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        model.update_balancing()
        losses.append(out.main_loss.item())
        if step % 25 == 0 or step == args.steps - 1:
            print(f"  {'fp8' if cfg.fp8 else 'bf16'} step {step:4d} loss {losses[-1]:.4f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    return losses


def write_plot(curves: dict[str, list[float]], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        print("train_compare: matplotlib missing, no PNG")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, losses in curves.items():
        ax.plot(losses, label=name, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (main next-token CE)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    print(f"train_compare: preset {args.preset}, {args.steps} steps of {args.batch}x{args.seq} tokens on "
          f"{args.device} (backend {dx.backend()})", flush=True)
    curves = {}
    for name, fp8 in (("fp8", True), ("bf16", False)):
        cfg = DeepSeekV3Config.preset(args.preset, fp8=fp8, max_seq_len=max(args.seq, 16))
        curves[name] = train(cfg, args)
    last = min(AVERAGE_LAST, args.steps)
    final = {name: sum(c[-last:]) / last for name, c in curves.items()}
    relative = abs(final["fp8"] - final["bf16"]) / final["bf16"]
    result = {"preset": args.preset, "steps": args.steps, "batch": args.batch, "seq": args.seq, "seed": args.seed,
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
              "backend": dx.backend(), "final_loss_avg_last": last, "final_loss": final,
              "relative_difference": relative, "bound": 0.0025, "curves": curves}
    (args.out_dir / "train_compare.json").write_text(json.dumps(result, indent=1))
    write_plot(curves, args.out_dir / "train_compare.png")
    print(f"train_compare: final loss (mean of the last {last} steps) fp8 {final['fp8']:.4f}, bf16 "
          f"{final['bf16']:.4f}, relative difference {relative:.4%} (DeepSeek-V3 bound 0.25%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
