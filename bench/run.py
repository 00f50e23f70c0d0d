"""Benchmarks: every kernel beside the baseline a user would otherwise pick, in the same run.

    python bench/run.py --suite quant [--out bench/results] [--quick]

Each suite is bench/suite_<name>.py with `run(quick: bool) -> list[row]` (rows from report.make_row);
"host" is bench/host_overhead.py (host time per op call, launches stubbed), the one suite that runs
without a GPU.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

SUITES = {"quant": "suite_quant", "gemm": "suite_gemm", "grouped": "suite_grouped", "moe": "suite_moe",
          "ep": "suite_ep", "host": "host_overhead"}
CPU_SUITES = ("host",)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="all", choices=(*SUITES, "all"))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    args = parser.parse_args(argv)
    suites = list(SUITES) if args.suite == "all" else [args.suite]
    if not torch.cuda.is_available():
        suites = [suite for suite in suites if suite in CPU_SUITES]
        print("bench: no CUDA GPU here; the kernel benchmarks need one "
              f"({'running ' + ', '.join(suites) if suites else 'nothing to measure on the CPU'}).")
        if not suites:
            return 0
    import deepseek_ext as dx

    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "CPU"
    meta = {"device": device, "date": datetime.date.today().isoformat(),
            "torch": torch.__version__, "backend": dx.backend(), "cuda_ext": dx.has_cuda_ext()}
    print(f"bench on {meta['device']} ({meta['date']}, torch {meta['torch']}, backend {meta['backend']})")
    all_rows = []
    for suite in suites:
        rows = report.with_ratios(importlib.import_module(SUITES[suite]).run(args.quick))
        report.write_json(rows, meta, args.out / f"{suite}.json")
        report.write_plot(rows, suite, args.out / f"{suite}.png")
        print(report.format_table(rows), flush=True)
        all_rows += rows
    report.write_json(all_rows, meta, args.out / "all.json")
    report.write_markdown(all_rows, meta, args.out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
