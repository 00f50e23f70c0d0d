"""Benchmark rows -> table on stdout, JSON, and one PNG per suite."""
from __future__ import annotations

import json
from pathlib import Path

from deepseek_ext._plot import pyplot

OURS = "deepseek_ext"


def make_row(suite: str, op: str, shape: str, impl: str, ms: float, value: float, unit: str) -> dict:
    """One measurement: `value` is the throughput in `unit` (TB/s or TFLOPS) of `impl` on op/shape."""
    return {"suite": suite, "op": op, "shape": shape, "impl": impl, "ms": ms, "value": value, "unit": unit}


def with_ratios(rows: list[dict]) -> list[dict]:
    """Adds `ratio` = our value / this row's value for every baseline row of the same op and shape."""
    ours = {(r["op"], r["shape"]): r["value"] for r in rows if r["impl"] == OURS}
    out = []
    for r in rows:
        base = ours.get((r["op"], r["shape"]))
        ratio = base / r["value"] if base is not None and r["impl"] != OURS and r["value"] > 0 else None
        out.append({**r, "ratio": ratio})
    return out


def format_table(rows: list[dict]) -> str:
    lines = ["| suite | op | shape | impl | ms | throughput | ours / this |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") else ""
        lines.append(f"| {r['suite']} | {r['op']} | {r['shape']} | {r['impl']} | {r['ms']:.4f} | "
                     f"{r['value']:.3g} {r['unit']} | {ratio} |")
    return "\n".join(lines)


def write_json(rows: list[dict], meta: dict, path: Path) -> None:
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


def write_markdown(rows: list[dict], meta: dict, path: Path) -> None:
    """The whole run as one markdown report: where and when it ran, then the table."""
    header = (f"# deepseek_ext benchmarks\n\n{meta['device']}, {meta['date']}, torch {meta['torch']}, "
              f"backend {meta['backend']}. Throughput counts bytes read + written (TB/s), 2*M*N*K "
              f"(TFLOPS) or eager op calls with the launch stubbed (calls/us: host time, suite host); "
              f"every baseline was measured in the same run.\n\n")
    path.write_text(header + format_table(rows) + "\n")


def write_plot(rows: list[dict], suite: str, path: Path) -> bool:
    """Grouped bars per (op, shape), one bar per implementation. False when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return False
    cases = list(dict.fromkeys((r["op"], r["shape"]) for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    value = {(r["op"], r["shape"], r["impl"]): r["value"] for r in rows}
    width = 0.8 / max(len(impls), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cases)), 4))
    for i, impl in enumerate(impls):
        xs = [c + i * width for c in range(len(cases))]
        ax.bar(xs, [value.get((*case, impl), 0.0) for case in cases], width, label=impl)
    ax.set_xticks([c + 0.4 - width / 2 for c in range(len(cases))])
    ax.set_xticklabels([f"{op}\n{shape}" for op, shape in cases], fontsize=7)
    ax.set_ylabel(rows[0]["unit"] if rows else "")
    ax.set_title(f"deepseek_ext bench: {suite}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
