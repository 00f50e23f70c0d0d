"""python -m deepseek_ext.demo: corpus, schedule, checkpoints that resume bit for bit, the CLI end
to end (progress, summary, PNG, Ctrl-C + --resume), its errors, and what the wheel ships."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from importlib import metadata
from io import StringIO
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

from deepseek_ext.demo.cli import load_corpus, main
from deepseek_ext.demo.corpus import Corpus, load_corpus_bytes
from deepseek_ext.demo.plots import moving_average
from deepseek_ext.demo.progress import training_bar
from deepseek_ext.demo.trainer import WARMUP_STEPS, DemoRun, RunSettings, lr_at

ROOT = Path(__file__).resolve().parents[1]
SMALL_RUN = ["--batch", "4", "--seq", "32", "--prompt-bytes", "12", "--new-bytes", "10"]


def demo_cmd(out: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "deepseek_ext.demo", "--out", str(out), *SMALL_RUN, *flags]


def test_corpus_ships_in_the_package_as_ascii_text():
    text = load_corpus_bytes()
    assert 40_000 < len(text) < 100_000
    assert all(b == 10 or 32 <= b < 127 for b in text)
    corpus = Corpus(text)
    assert len(corpus.train) + len(corpus.held_out) == len(text)
    assert 0.08 < len(corpus.held_out) / len(text) < 0.12
    assert text[len(corpus.train) - 2: len(corpus.train)] == b"\n\n"  # held-out part starts a paragraph


def test_batches_are_windows_of_the_training_text_in_a_seeded_order():
    corpus = load_corpus()
    first = corpus.batch(torch.Generator().manual_seed(3), 5, 17)
    again = corpus.batch(torch.Generator().manual_seed(3), 5, 17)
    assert first.shape == (5, 18) and torch.equal(first, again)
    train = bytes(corpus.train.tolist())
    assert all(bytes(row.tolist()) in train for row in first)
    windows = corpus.held_out_batches(4, 50)
    joined = torch.cat([w[:, 1:].flatten() for w in windows])
    assert torch.equal(joined, corpus.held_out[1: 1 + len(joined)])  # consecutive, nothing skipped
    with pytest.raises(ValueError, match="seq must be"):
        corpus.batch(torch.Generator(), 1, len(corpus.train))
    with pytest.raises(ValueError, match="prompt length"):
        corpus.prompt(0)


def test_learning_rate_schedule():
    steps, peak = 100, 1e-3
    assert lr_at(0, steps, peak) == pytest.approx(peak / WARMUP_STEPS)
    assert lr_at(WARMUP_STEPS - 1, steps, peak) == pytest.approx(peak)
    assert lr_at(WARMUP_STEPS, steps, peak) == pytest.approx(peak)
    assert lr_at(steps, steps, peak) == pytest.approx(0.1 * peak)
    middle = WARMUP_STEPS + (steps - WARMUP_STEPS) // 2
    assert lr_at(middle, steps, peak) == pytest.approx(peak * 0.55)


def test_settings_defaults_and_errors():
    s = RunSettings.for_preset("tiny", steps=7, seed=None)
    assert (s.steps, s.seed, s.batch) == (7, 0, 16)
    with pytest.raises(ValueError, match="preset must be one of"):
        RunSettings.for_preset("v3_671b")
    with pytest.raises(ValueError, match="batch must be >= 1"):
        DemoRun(RunSettings.for_preset("tiny", batch=0), load_corpus())
    with pytest.raises(ValueError, match="lr must be > 0"):
        DemoRun(RunSettings.for_preset("tiny", lr=0.0), load_corpus())


@pytest.mark.parametrize("fp8", [False, True])
def test_checkpoint_resume_is_bitwise(tmp_path, fp8):
    corpus = load_corpus()
    settings = RunSettings.for_preset("tiny", steps=9, batch=2, seq=32, fp8=fp8)
    whole = DemoRun(settings, corpus)
    while not whole.done:
        whole.train_step()
    part = DemoRun(settings, corpus)
    for _ in range(4):
        part.train_step()
    part.save(tmp_path / "ck.pt")
    assert not (tmp_path / "ck.pt.tmp").exists()
    resumed = DemoRun.load(tmp_path / "ck.pt", corpus)
    assert resumed.step == 4 and resumed.settings == settings
    while not resumed.done:
        resumed.train_step()
    assert resumed.history == whole.history
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    biases = [m.gate.bias for m in resumed.model.moe_layers()]
    assert any(b.abs().sum() > 0 for b in biases)  # the balancing biases are part of what resumes


def test_training_lowers_the_loss_and_balances_the_experts():
    run = DemoRun(RunSettings.for_preset("tiny", steps=60, batch=8, seq=64), load_corpus())
    while not run.done:
        run.train_step()
    losses = run.history["loss"]
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5
    assert len(run.history["load_max_over_mean"][0]) == len(run.model.moe_layers())
    assert all(r >= 1.0 for row in run.history["load_max_over_mean"] for r in row)
    assert run.held_out_loss() < losses[0]


TQDM_BAR = r"training: +100%\|[^|]*\| {done}/{total} \[\d\d:\d\d<00:00, +[\d.]+(step/s|s/step), loss {loss}\]"


def test_progress_is_a_tqdm_bar_that_resumes_where_the_run_stopped():
    out = StringIO()
    bar = training_bar(50, 20, file=out)
    assert isinstance(bar, tqdm) and bar.n == 20
    for i in range(21, 51):
        bar.set_postfix_str(f"loss {i / 10:.3f}", refresh=False)
        bar.update()
    bar.close()
    final = out.getvalue().split("\r")[-1]
    assert re.match(TQDM_BAR.format(done=50, total=50, loss="5.000"), final), final


def test_progress_written_to_a_log_redraws_seldom():
    out = StringIO()  # not a terminal
    bar = training_bar(500, file=out)
    for _ in range(500):  # 0.5 s: five redraws at a terminal's 0.1 s interval
        time.sleep(0.001)
        bar.update()
    bar.close()
    assert out.getvalue().count("\r") <= 3  # the first draw, the last, and at most one in between


def test_moving_average():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_cli_end_to_end(tmp_path):
    res = subprocess.run(demo_cmd(tmp_path, "--steps", "30"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert re.search(TQDM_BAR.format(done=30, total=30, loss=r"\d+\.\d{3}"), res.stderr), res.stderr[-500:]
    for text in ("tokens/s", "expert load", "accepted", "identical to plain greedy decoding: True", "layer 1"):
        assert text in res.stdout
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["steps"] == 30 and len(s["history"]["loss"]) == 30 and s["settings"]["fp8"] is False
    assert s["loss_final_mean"] < s["loss_first"] and s["tokens_per_second"] > 0
    assert 0.0 <= s["mtp_acceptance_rate"] <= 1.0 and s["mtp_drafts"] > 0
    assert s["main_forwards"] == s["mtp_drafts"] + 1 <= s["plain_forwards"] == 10  # one draft per main forward
    assert len(s["expert_load_last"]) == len(s["expert_load_layers"]) == 3  # 2 MoE layers + the MTP block
    assert math.isfinite(s["held_out_loss"])
    png = (tmp_path / "training.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert (tmp_path / "checkpoint.pt").exists()


def test_cli_interrupt_and_resume_match_an_uninterrupted_run(tmp_path):
    steps = "200"
    whole = subprocess.run(demo_cmd(tmp_path / "whole", "--steps", steps), capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    cut = tmp_path / "cut"
    proc = subprocess.Popen(demo_cmd(cut, "--steps", steps, "--checkpoint-every", "3"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (cut / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Continue with" in out
    stopped_at = torch.load(cut / "checkpoint.pt", weights_only=True)["step"]
    assert 3 <= stopped_at < int(steps)
    resumed = subprocess.run(demo_cmd(cut, "--resume"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at step {stopped_at}" in resumed.stdout
    a = json.loads((tmp_path / "whole" / "summary.json").read_text())
    b = json.loads((cut / "summary.json").read_text())
    assert b["history"] == a["history"]  # every step's loss and expert load, bit for bit
    assert b["loss_final"] == a["loss_final"]


def test_cli_errors_name_the_flag(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--resume"]) == 2
    assert "--resume: no checkpoint" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), *SMALL_RUN, "--steps", "2"]) == 0
    capsys.readouterr()
    assert main(["--out", str(tmp_path), "--resume", "--steps", "5"]) == 2
    assert "--steps 5 differs from the checkpoint's 2" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["--out", str(tmp_path), "--resume", "--checkpoint", str(tmp_path / "junk.pt")]) == 2
    assert "junk.pt: not a demo checkpoint" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--steps", "0"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["--out", str(tmp_path), "--device", "cuda"]) == 2
        assert "--device cuda" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--preset", "huge"])


def test_console_script_and_corpus_are_in_the_wheel(tmp_path):
    env = {**os.environ, "DEEPSEEK_EXT_CUDA": "0", "DEEPSEEK_EXT_EMULATE": "0"}  # the package files only: no compile
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w",
                    str(tmp_path), "-C", f"build-dir={tmp_path / 'build'}", str(ROOT)], check=True, env=env, timeout=600)
    (wheel,) = tmp_path.glob("deepseek_ext-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
        metadata_text = next(z.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "deepseek_ext/demo/corpus.txt" in names and "deepseek_ext/demo/__main__.py" in names
    assert "deepseek-ext = deepseek_ext.demo.cli:main" in entry_points
    assert re.search(r"^Requires-Dist: tqdm", metadata_text, re.M)  # the demo's progress bar


def test_console_script_is_installed():
    scripts = {e.name: e.value for e in metadata.entry_points(group="console_scripts")}
    assert scripts.get("deepseek-ext") == "deepseek_ext.demo.cli:main"
