"""The benchmark report plumbing (runs on the CPU; the timings themselves need a GPU)."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import report  # noqa: E402
import run  # noqa: E402


def _rows():
    return report.with_ratios([
        report.make_row("quant", "cast", "8x128", report.OURS, 1.0, 3.0, "TB/s"),
        report.make_row("quant", "cast", "8x128", "torch.compile", 2.0, 1.5, "TB/s"),
        report.make_row("quant", "cast", "16x128", "torch.compile", 2.0, 1.5, "TB/s"),
    ])


def test_ratios_are_ours_over_each_baseline_of_the_same_case():
    assert [r["ratio"] for r in _rows()] == [None, pytest.approx(2.0), None]


def test_markdown_and_json_reports(tmp_path):
    meta = {"device": "NVIDIA H100", "date": "2026-11-22", "torch": "2.11", "backend": "cuda"}
    report.write_markdown(_rows(), meta, tmp_path / "report.md")
    text = (tmp_path / "report.md").read_text()
    assert "NVIDIA H100, 2026-11-22" in text
    assert "| quant | cast | 8x128 | torch.compile | 2.0000 | 1.5 TB/s | 2.00x |" in text
    report.write_json(_rows(), meta, tmp_path / "all.json")
    assert json.loads((tmp_path / "all.json").read_text())["rows"][1]["ratio"] == pytest.approx(2.0)


def test_run_without_a_gpu_says_so(capsys, monkeypatch):
    monkeypatch.setattr(run.torch.cuda, "is_available", lambda: False)
    assert run.main(["--suite", "quant"]) == 0
    assert "no CUDA GPU here" in capsys.readouterr().out
