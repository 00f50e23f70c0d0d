"""python -m deepseek_ext.demo on bad input and faults: corrupted and crafted checkpoints, lengths that
do not fit the corpus, unwritable outputs, divergence, setup errors (one line, exit code 2), and
kill -9 at random points followed by --resume, bit for bit."""
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import deepseek_ext.demo.trainer as trainer
from deepseek_ext.demo.cli import load_corpus, main, parse_args, preflight_paths
from deepseek_ext.demo.trainer import CheckpointError, DemoRun, RunSettings

TINY_RUN = ["--batch", "2", "--seq", "16", "--prompt-bytes", "8", "--new-bytes", "4"]
MIN_SEQ_LEN = 8 + 4 + 1  # what the CLI asks of the model for TINY_RUN


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("deepseek_ext.demo: "), err
    return err


def small_run(steps: int = 4) -> DemoRun:
    return DemoRun(RunSettings.for_preset("tiny", steps=steps, batch=2, seq=16), load_corpus(), "cpu", MIN_SEQ_LEN)


@pytest.fixture(scope="module")
def saved_state():
    run = small_run()
    run.train_step()
    return run, run.state_dict()


def write_crafted(run: DemoRun, path: Path, state: dict) -> None:
    run.state_dict = lambda: state  # save() wraps whatever state_dict() returns, checksum included
    try:
        run.save(path)
    finally:
        del run.state_dict


def test_flipped_bytes_in_a_stored_tensor_fail_the_sha256(tmp_path, capsys, saved_state):
    run, _ = saved_state
    ck = tmp_path / "checkpoint.pt"
    run.save(ck)
    data = bytearray(ck.read_bytes())
    middle = len(data) // 2  # inside the payload, i.e. inside the model's stored tensors
    data[middle: middle + 64] = bytes(b ^ 0xFF for b in data[middle: middle + 64])
    ck.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        DemoRun.load(ck, load_corpus())
    assert main(["--out", str(tmp_path), "--resume"]) == 2
    assert "SHA-256" in one_line_error(capsys)


CRAFTED = {
    "preset v3_671b": ({"settings": {"preset": "v3_671b"}}, "preset must be one of"),
    "step -1000": ({"step": -1000}, "step must be an int in"),
    "step past steps": ({"step": 5}, "step must be an int in"),
    "steps as str": ({"settings": {"steps": "4"}}, "steps must be an int"),
    "batch 0": ({"settings": {"batch": 0}}, "batch must be >= 1"),
    "seq too long": ({"settings": {"seq": 10**6}}, "seq must be in"),
    "lr nan": ({"settings": {"lr": float("nan")}}, "lr must be"),
    "lr inf": ({"settings": {"lr": float("inf")}}, "lr must be"),
    "fp8 str": ({"settings": {"fp8": "yes"}}, "fp8 must be a bool"),
    "seed negative": ({"settings": {"seed": -1}}, "seed must be in"),
    "settings not a dict": ({"settings": None}, "settings must be a dict"),
    "settings extra field": ({"settings": {"extra": 1}}, "settings must have the fields"),
    "train_seconds nan": ({"train_seconds": float("nan")}, "train_seconds must be"),
    "history too short": ({"history": {"loss": [], "mtp_loss": [], "load_max_over_mean": []}}, "history must hold"),
    "no model": ({"model": None}, "invalid demo checkpoint"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_checkpoint_settings_are_validated_on_resume(tmp_path, capsys, saved_state, case):
    run, good = saved_state
    changes, message = CRAFTED[case]
    state = dict(good)
    for key, value in changes.items():
        state[key] = {**good[key], **value} if isinstance(value, dict) and key == "settings" else value
    write_crafted(run, tmp_path / "checkpoint.pt", state)
    assert main(["--out", str(tmp_path), "--resume"]) == 2
    err = one_line_error(capsys)
    assert message in err and "invalid demo checkpoint" in err


@pytest.mark.parametrize("flags, message", [
    (["--seq", "5000"], "seq must be in"),
    (["--prompt-bytes", "100000"], "prompt length must be in"),
    (["--lr", "inf"], "lr must be > 0, finite"),
    (["--lr", "1e6"], "lr must be > 0, finite"),
    (["--lr", "nan"], "lr must be > 0, finite"),
    (["--device", "foo"], "--device foo"),
])
def test_bad_lengths_lr_and_device_fail_before_the_first_step(tmp_path, capsys, flags, message):
    assert main(["--out", str(tmp_path), *TINY_RUN, "--steps", "3", *flags]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_unwritable_outputs_fail_before_the_first_step(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    cases = [(["--out", str(tmp_path / "file" / "out")], "--out"),
             (["--out", str(tmp_path / "ok"), "--checkpoint", str(tmp_path / "file" / "ck.pt")], "--checkpoint")]
    if sys.platform.startswith("linux"):
        cases.append((["--out", str(tmp_path / "ok"), "--checkpoint", "/proc/x"], "--checkpoint"))
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        cases.append((["--out", str(ro)], "--out"))
    for flags, message in cases:
        assert main([*TINY_RUN, "--steps", "3", *flags]) == 2, flags
        err = one_line_error(capsys)
        assert message in err and "cannot write there" in err, err
    assert not list(tmp_path.rglob("*.pt"))


def test_setup_errors_are_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "dir.pt").mkdir()
    for ck in ("empty.pt", "dir.pt"):
        assert main(["--out", str(tmp_path), "--resume", "--checkpoint", str(tmp_path / ck)]) == 2
        assert ck in one_line_error(capsys)
    monkeypatch.setenv("DEEPSEEK_EXT_BACKEND", "bogus")
    assert main(["--out", str(tmp_path), *TINY_RUN, "--steps", "1"]) == 2
    assert "DEEPSEEK_EXT_BACKEND must be one of" in one_line_error(capsys)
    if not torch.cuda.is_available():
        monkeypatch.setenv("DEEPSEEK_EXT_BACKEND", "cuda")
        assert main(["--out", str(tmp_path), *TINY_RUN, "--steps", "1", "--device", "cpu"]) == 2
        assert "DEEPSEEK_EXT_BACKEND=cuda" in one_line_error(capsys)
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.parametrize("every", [1, 2])
def test_divergence_stops_with_exit_1_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch, every):
    schedule = trainer.lr_at
    monkeypatch.setattr(trainer, "lr_at", lambda step, steps, peak: float("nan") if step >= 2 else
                        schedule(step, steps, peak))  # step 3 turns the model into NaN
    assert main(["--out", str(tmp_path), *TINY_RUN, "--steps", "6", "--checkpoint-every", str(every)]) == 1
    err = capsys.readouterr().err
    assert "training diverged" in err and "last good checkpoint" in err
    run = DemoRun.load(tmp_path / "checkpoint.pt", load_corpus())
    assert run.step == 2 and run.model_is_finite()
    assert not (tmp_path / "summary.json").exists()


def test_save_fsyncs_the_file_and_the_directory_and_a_stale_tmp_is_removed(tmp_path, monkeypatch, saved_state):
    run, _ = saved_state
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_mode), real_fsync(fd))[1])
    run.save(tmp_path / "checkpoint.pt")
    assert any(stat.S_ISREG(m) for m in synced) and any(stat.S_ISDIR(m) for m in synced)
    monkeypatch.undo()
    (tmp_path / "checkpoint.pt.tmp").write_bytes(b"half a checkpoint")
    preflight_paths(parse_args(["--out", str(tmp_path)]))
    assert not (tmp_path / "checkpoint.pt.tmp").exists() and (tmp_path / "checkpoint.pt").exists()


def checkpoint_step(path: Path) -> int:
    try:
        return torch.load(path, weights_only=True)["step"]
    except Exception:
        return -1


def test_kill_9_at_random_points_then_resume_is_bitwise(tmp_path):
    steps, kills = 20, 3
    ck = tmp_path / "checkpoint.pt"
    rng = random.Random(0)
    last = 0
    for i in range(kills):
        cmd = [sys.executable, "-m", "deepseek_ext.demo", "--out", str(tmp_path), *TINY_RUN, "--steps", str(steps),
               "--checkpoint-every", "1", *(["--resume"] if ck.exists() else [])]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while checkpoint_step(ck) <= last and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.25))  # a random point: mid-step or mid-save
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (-signal.SIGKILL, 0), err
        last = checkpoint_step(ck)
        assert 0 < last < steps, (i, last)
    corpus = load_corpus()
    resumed = DemoRun.load(ck, corpus, "cpu", MIN_SEQ_LEN)
    while not resumed.done:
        resumed.train_step()
    whole = DemoRun(resumed.settings, corpus, "cpu", MIN_SEQ_LEN)
    while not whole.done:
        whole.train_step()
    assert resumed.history == whole.history
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
