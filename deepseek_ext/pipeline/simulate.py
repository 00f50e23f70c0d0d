"""simulate(method, pp, num_chunks, F, B, W, FB): timeline, bubble and peak activations of a
pipeline schedule, from the same schedule code the runtime executes.

    python -m deepseek_ext.pipeline.simulate --pp 4 --chunks 10 --out DIR

prints the bubble table of the four methods and writes one PNG timeline per method
(needs matplotlib; without it the table is still printed).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from deepseek_ext._plot import pyplot
from deepseek_ext.pipeline.schedule import BACKWARD, FORWARD, METHODS, Schedule, build_schedule
from deepseek_ext.pipeline.timeline import Costs, TimedOp, time_schedule


@dataclass(frozen=True)
class Simulation:
    schedule: Schedule
    costs: Costs
    timeline: list[list[TimedOp]]  # per rank, in execution order
    makespan: float
    bubble_per_rank: list[float]   # makespan minus the rank's busy time
    bubble: float                  # the largest of them
    peak_activations: int          # most chunks whose forward ran and whose backward did not, on one rank
    parameters: int                # stage modules held per rank (1x or 2x)


def peak_activations(schedule: Schedule) -> int:
    """An F&B op counts its forward before its backward frees anything."""
    peak = 0
    for ops in schedule.ops:
        live = 0
        for op in ops:
            for p in op.passes:
                live += (p.kind == FORWARD) - (p.kind == BACKWARD)
                peak = max(peak, live)
    return peak


def simulate(method: str, pp: int, num_chunks: int, F: float = 1.0, B: float = 2.0, W: float = 1.0,
             FB: float | None = None) -> Simulation:
    """F: forward of a chunk; B: its full backward; W: the weight-gradient part of B;
    FB: a forward and a backward overlapped (default F + B, i.e. no overlap gain)."""
    FB = F + B if FB is None else FB
    for name, value in (("F", F), ("B", B), ("W", W), ("FB", FB)):
        if value < 0:
            raise ValueError(f"{name}: expected a non-negative time, got {value}")
    if W > B:
        raise ValueError(f"W: the weight-gradient part cannot exceed the full backward B={B}, got {W}")
    schedule = build_schedule(method, pp, num_chunks)
    costs = Costs(F, B, W, FB)
    timeline = time_schedule(schedule, costs)
    makespan = max((ops[-1].end for ops in timeline if ops), default=0.0)
    bubbles = [makespan - sum(t.end - t.start for t in ops) for ops in timeline]
    return Simulation(schedule, costs, timeline, makespan, bubbles, max(bubbles),
                      peak_activations(schedule), schedule.modules_per_rank)


def published_bubble(method: str, pp: int, F: float, B: float, W: float, FB: float) -> float:
    """The table of the DualPipe publication. Its PP counts pipeline stages: the ranks for
    1F1B, ZB1P and DualPipe, twice the ranks for DualPipeV (two stages per rank, one route)."""
    stages = 2 * pp if method == "dualpipev" else pp
    return {"1f1b": (stages - 1) * (F + B),
            "zb1p": (stages - 1) * (F + B - 2 * W),
            "dualpipe": (stages / 2 - 1) * (FB + B - 3 * W),
            "dualpipev": (stages / 2 - 1) * (FB + B - 3 * W)}[method]


_COLORS = {"F": "#f2c14e", "B": "#5b8def", "Bz": "#8fd3f4", "W": "#7bc47f", "FB": "#e26d5c"}


def _label(op) -> tuple[str, str]:
    if op.overlapped:
        f, b = op.passes
        return "FB", f"{f.chunk}&{b.chunk}"
    p = op.passes[0]
    key = "Bz" if p.kind == BACKWARD and p.defer_weight_grad else p.kind
    return key, str(p.chunk)


def draw_timeline(sim: Simulation, path: str | Path) -> Path:
    """One row per rank; colour = pass kind, hatching = the rank's second module, text = chunk. Needs matplotlib."""
    plt = pyplot()
    if plt is None:
        raise ImportError("draw_timeline needs matplotlib: pip install matplotlib")
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(max(8.0, sim.makespan / max(sim.costs.F, 1e-9) * 0.35), 0.5 * sim.schedule.num_ranks + 1.5))
    for rank, ops in enumerate(sim.timeline):
        for t in ops:
            key, text = _label(t.op)
            hatch = "//" if t.op.passes[0].module == 1 else None
            ax.barh(rank, t.end - t.start, left=t.start, color=_COLORS[key], edgecolor="black",
                    linewidth=0.4, hatch=hatch)
            ax.text((t.start + t.end) / 2, rank, text, ha="center", va="center", fontsize=6)
    ax.set_yticks(range(sim.schedule.num_ranks), [f"rank {r}" for r in range(sim.schedule.num_ranks)])
    ax.invert_yaxis()
    ax.set_xlabel("time")
    ax.set_title(f"{sim.schedule.method}: bubble {sim.bubble:g}, peak activations {sim.peak_activations}")
    names = {"F": "forward", "B": "full backward", "Bz": "input backward", "W": "weight backward", "FB": "F&B"}
    handles = [Patch(color=_COLORS[k], label=v) for k, v in names.items()]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="rank's second stage"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=6, fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bubble_table(pp: int, num_chunks: int, F: float, B: float, W: float, FB: float) -> list[dict]:
    rows = []
    for method in METHODS:
        sim = simulate(method, pp, num_chunks, F, B, W, FB)
        rows.append({"method": method, "bubble": sim.bubble,
                     "published": published_bubble(method, pp, F, B, W, FB),
                     "peak_activations": sim.peak_activations, "parameters": f"{sim.parameters}x",
                     "makespan": sim.makespan, "stages": len(sim.schedule.routes[0]), "simulation": sim})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pp", type=int, default=4, help="pipeline ranks")
    parser.add_argument("--chunks", type=int, default=10, help="micro-batches per step")
    parser.add_argument("--F", type=float, default=2.0)
    parser.add_argument("--B", type=float, default=3.0)
    parser.add_argument("--W", type=float, default=1.0)
    parser.add_argument("--FB", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNG timelines")
    args = parser.parse_args(argv)
    rows = bubble_table(args.pp, args.chunks, args.F, args.B, args.W, args.FB)
    print(f"pp={args.pp} chunks={args.chunks} F={args.F:g} B={args.B:g} W={args.W:g} F&B={args.FB:g}")
    print(f"{'method':<10} {'bubble':>8} {'published':>10} {'activations':>12} {'parameters':>11} {'makespan':>9} {'stages':>7}")
    for r in rows:
        print(f"{r['method']:<10} {r['bubble']:>8g} {r['published']:>10g} {r['peak_activations']:>12} "
              f"{r['parameters']:>11} {r['makespan']:>9g} {r['stages']:>7}")
    if args.out is None:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed: no PNG written")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    for r in rows:
        print("wrote", draw_timeline(r["simulation"], args.out / f"{r['method']}_pp{args.pp}_chunks{args.chunks}.png"))


if __name__ == "__main__":
    main()
