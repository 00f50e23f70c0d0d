"""python -m deepseek_ext.demo (or `deepseek-ext`): train the tiny DeepSeek-V3 on the shipped
corpus, then report loss, tokens/s, expert load balance and the MTP speculative-decoding
acceptance rate, and draw the loss curve and the expert-load history.

Ctrl-C stops after the current step and saves a checkpoint; `--resume` continues it, and the
resumed run ends exactly where an uninterrupted one would (bit for bit on the CPU).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

import deepseek_ext as dx
from deepseek_ext._backend import uses_kernels
from deepseek_ext.demo.corpus import Corpus, decode, load_corpus_bytes
from deepseek_ext.demo.plots import write_training_png
from deepseek_ext.demo.progress import training_bar
from deepseek_ext.demo.trainer import PRESET_DEFAULTS, DemoRun, NonFiniteLoss, RunSettings, tmp_path_for
from deepseek_ext.models import generate
from deepseek_ext.nn.moe import DeepSeekMoE

SETTING_FLAGS = ("steps", "batch", "seq", "lr", "seed")
REPORT_STEPS = 20  # expert load is averaged over the first and the last this many steps
TINY = PRESET_DEFAULTS["tiny"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m deepseek_ext.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESET_DEFAULTS), default=None, help="model size (default tiny)")
    p.add_argument("--steps", type=int, help=f"optimizer steps (tiny: {TINY['steps']})")
    p.add_argument("--batch", type=int, help=f"sequences per step (tiny: {TINY['batch']})")
    p.add_argument("--seq", type=int, help=f"bytes per sequence (tiny: {TINY['seq']})")
    p.add_argument("--lr", type=float, help=f"peak learning rate (tiny: {TINY['lr']})")
    p.add_argument("--seed", type=int, help="initialization and data order (default 0)")
    p.add_argument("--fp8", choices=("auto", "on", "off"), default="auto",
                   help="FP8 linears and experts; auto = on where our kernels run (sm_90), off elsewhere, "
                        "where FP8 would only be emulated")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--out", type=Path, default=Path("deepseek_ext_demo"), help="output directory")
    p.add_argument("--checkpoint", type=Path, help="checkpoint file (default OUT/checkpoint.pt)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint (its settings are kept)")
    p.add_argument("--prompt-bytes", type=int, default=64, help="held-out prompt for speculative decoding")
    p.add_argument("--new-bytes", type=int, default=64, help="bytes generated from that prompt")
    args = p.parse_args(argv)
    if args.checkpoint_every < 1:
        p.error(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    if args.prompt_bytes < 1 or args.new_bytes < 2:
        p.error("--prompt-bytes must be >= 1 and --new-bytes >= 2")
    args.checkpoint = args.checkpoint or args.out / "checkpoint.pt"
    return args


def load_corpus() -> Corpus:
    return Corpus(load_corpus_bytes())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name}: not a torch device ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this torch sees no CUDA device")
    return device


def check_backend(device: torch.device) -> None:
    """DEEPSEEK_EXT_BACKEND asking for kernels that cannot run here fails now, not at the first step."""
    try:
        uses_kernels(torch.empty(0, device=device))
        dx.backend()
    except RuntimeError as e:
        raise ValueError(str(e)) from None


def check_writable_dir(directory: Path, flag: str) -> None:
    """Create `directory` and write, fsync and remove a file in it, so that a bad --out or --checkpoint
    fails before training rather than at the first save."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".deepseek_ext_demo_write_test.{os.getpid()}"
        try:
            with open(probe, "wb") as f:
                f.write(b"ok")
                f.flush()
                os.fsync(f.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError as e:
        raise ValueError(f"{flag} {directory}: cannot write there ({e.strerror or e})") from None


def preflight_paths(args: argparse.Namespace) -> None:
    check_writable_dir(args.out, "--out")
    check_writable_dir(args.checkpoint.parent, "--checkpoint")
    if args.checkpoint.is_dir():
        raise ValueError(f"--checkpoint {args.checkpoint} is a directory")
    # a save killed before its rename leaves this behind; the checkpoint itself is intact
    tmp_path_for(args.checkpoint).unlink(missing_ok=True)


def fp8_wanted(choice: str, device: torch.device) -> bool:
    if choice == "auto":
        return uses_kernels(torch.empty(0, device=device))
    return choice == "on"


def start_run(args: argparse.Namespace, corpus: Corpus, device: torch.device) -> DemoRun:
    min_seq_len = args.prompt_bytes + args.new_bytes + 1
    corpus.check_prompt(args.prompt_bytes)
    if not args.resume:
        settings = RunSettings.for_preset(args.preset or "tiny", fp8=fp8_wanted(args.fp8, device),
                                          **{k: getattr(args, k) for k in SETTING_FLAGS})
        return DemoRun(settings, corpus, device, min_seq_len)
    if not args.checkpoint.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {args.checkpoint}")
    if not args.checkpoint.is_file():
        raise ValueError(f"--resume: {args.checkpoint} is not a file")
    try:
        run = DemoRun.load(args.checkpoint, corpus, device, min_seq_len)
    except ValueError as e:  # CheckpointError included
        raise ValueError(f"--checkpoint {args.checkpoint}: {e}") from None
    saved = run.settings
    for name in (*SETTING_FLAGS, "preset"):
        given = getattr(args, name)
        if given is not None and given != getattr(saved, name):
            raise ValueError(f"--{name} {given} differs from the checkpoint's {getattr(saved, name)}; "
                             f"a resumed run keeps its settings")
    if args.fp8 != "auto" and (args.fp8 == "on") != saved.fp8:
        raise ValueError(f"--fp8 {args.fp8} differs from the checkpoint's fp8={saved.fp8}")
    return run


@contextmanager
def stop_on_sigint():
    """The first Ctrl-C asks the loop to stop after its current step; a second one stops at once."""
    requested = []

    def handler(signum, frame):
        requested.append(True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nstopping after this step (Ctrl-C again to abort without a checkpoint)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)


def moe_layer_names(run: DemoRun) -> list[str]:
    model = run.model
    names = [f"layer {i}" for i, layer in enumerate(model.layers) if isinstance(layer.ffn, DeepSeekMoE)]
    if model.mtp is not None:
        names += [f"MTP {d + 1}" for d, m in enumerate(model.mtp.depths) if isinstance(m.block.ffn, DeepSeekMoE)]
    return names


def mean_rows(rows: list[list[float]]) -> list[float]:
    return [sum(col) / len(col) for col in zip(*rows)]


def summarize(run: DemoRun, args: argparse.Namespace) -> dict:
    h, steps = run.history, run.step
    last = min(REPORT_STEPS, steps)
    prompt = run.corpus.prompt(args.prompt_bytes).to(run.device)
    spec = generate(run.model, prompt, args.new_bytes, speculative=True)
    plain = generate(run.model, prompt, args.new_bytes)
    return {
        "device": str(run.device), "backend": dx.backend(), "settings": dataclasses.asdict(run.settings), "steps": steps,
        "train_seconds": run.train_seconds, "tokens_per_second": steps * run.tokens_per_step / run.train_seconds,
        "loss_first": h["loss"][0], "loss_final": h["loss"][-1], "loss_final_mean": sum(h["loss"][-last:]) / last,
        "mtp_loss_final_mean": sum(h["mtp_loss"][-last:]) / last, "held_out_loss": run.held_out_loss(),
        "expert_load_layers": moe_layer_names(run),
        "expert_load_first": mean_rows(h["load_max_over_mean"][:last]),
        "expert_load_last": mean_rows(h["load_max_over_mean"][-last:]),
        "mtp_acceptance_rate": spec.acceptance_rate, "mtp_drafts": spec.drafts, "main_forwards": spec.main_forwards,
        "plain_forwards": plain.main_forwards, "speculative_equals_greedy": bool(torch.equal(spec.tokens, plain.tokens)),
        "prompt": decode(prompt[0].cpu()), "continuation": decode(spec.tokens[0, prompt.shape[1]:].cpu()),
    }


def print_summary(s: dict, files: list[Path]) -> None:
    cfg = s["settings"]
    print(f"\ntrained {s['steps']} steps of {cfg['batch']}x{cfg['seq']} bytes in {s['train_seconds']:.1f} s: "
          f"{s['tokens_per_second']:,.0f} tokens/s ({s['device']}, backend {s['backend']}, "
          f"{'FP8' if cfg['fp8'] else 'bf16'})")
    print(f"loss (nats/byte): {s['loss_first']:.3f} at step 1 -> {s['loss_final_mean']:.3f} "
          f"(mean of the last {min(REPORT_STEPS, s['steps'])} steps); MTP {s['mtp_loss_final_mean']:.3f}; "
          f"held-out text {s['held_out_loss']:.3f}")
    print(f"expert load, max/mean tokens per expert (1.00 = balanced), first -> last {REPORT_STEPS} steps:")
    for name, first, last in zip(s["expert_load_layers"], s["expert_load_first"], s["expert_load_last"]):
        print(f"  {name:8s} {first:5.2f} -> {last:5.2f}")
    print(f"speculative decoding with the MTP module on a held-out prompt: {s['mtp_drafts']} drafts, "
          f"{s['mtp_acceptance_rate']:.0%} accepted; {s['main_forwards']} main forwards instead of "
          f"{s['plain_forwards']}; output identical to plain greedy decoding: {s['speculative_equals_greedy']}")
    print(f"  prompt:       {s['prompt']!r}\n  continuation: {s['continuation']!r}")
    print("wrote " + ", ".join(str(f) for f in files))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
        check_backend(device)
        preflight_paths(args)
        run = start_run(args, load_corpus(), device)
    except (ValueError, OSError, RuntimeError) as e:  # every setup error: one line, exit code 2
        print("deepseek_ext.demo: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    cfg = run.model.config
    print(f"deepseek_ext demo: {run.settings.preset} DeepSeek-V3 ({sum(p.numel() for p in run.model.parameters()):,} "
          f"parameters: MLA, {cfg.n_routed_experts} routed experts top-{cfg.n_activated_experts} with bias balancing, "
          f"{cfg.n_mtp_modules} MTP module) on {device}, backend {dx.backend()}, "
          f"{'FP8' if run.settings.fp8 else 'bf16'}" + (f"; resumed at step {run.step}" if run.step else ""),
          flush=True)
    bar = training_bar(run.settings.steps, run.step)
    with stop_on_sigint() as stop:
        try:
            while not run.done and not stop:
                loss = run.train_step()
                bar.set_postfix_str(f"loss {loss:.3f}", refresh=False)
                bar.update()
                if run.step % args.checkpoint_every == 0 or run.done:
                    run.save(args.checkpoint)
        except NonFiniteLoss as e:
            bar.close()
            kept = f"the last good checkpoint {args.checkpoint} is kept" if args.checkpoint.exists() \
                else "no checkpoint was written"
            print(f"deepseek_ext.demo: training diverged: {e}; stopped ({kept}). Try a lower --lr.", file=sys.stderr)
            return 1
    bar.close()
    if not run.done:
        run.save(args.checkpoint)
        print(f"stopped at step {run.step}/{run.settings.steps}; checkpoint {args.checkpoint}. Continue with:\n"
              f"  python -m deepseek_ext.demo --out {args.out} --checkpoint {args.checkpoint} --resume")
        return 130
    summary = summarize(run, args)
    args.out.mkdir(parents=True, exist_ok=True)
    files = [args.checkpoint, args.out / "summary.json"]
    (args.out / "summary.json").write_text(json.dumps({**summary, "history": run.history}, indent=1))
    png = args.out / "training.png"
    if write_training_png(run.history, summary["expert_load_layers"], png):
        files.append(png)
    else:
        print("no PNG: matplotlib is not installed (pip install matplotlib)")
    print_summary(summary, files)
    return 0
