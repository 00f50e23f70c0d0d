import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import deepseek_ext as dx
from deepseek_ext import _backend

ROOT = Path(__file__).resolve().parents[1]


def test_backend_on_this_machine_matches_hardware(monkeypatch):
    monkeypatch.delenv("DEEPSEEK_EXT_BACKEND", raising=False)
    assert isinstance(dx.has_cuda_ext(), bool)
    expect_cuda = (dx.has_cuda_ext() and torch.cuda.is_available()
                   and torch.cuda.get_device_capability() == (9, 0))
    assert dx.backend() == ("cuda" if expect_cuda else "reference")


def test_reference_env_forces_fallback(monkeypatch):
    monkeypatch.setenv("DEEPSEEK_EXT_BACKEND", "reference")
    assert dx.backend() == "reference"
    assert not _backend.uses_kernels(torch.empty(1))


def test_cpu_tensors_never_use_kernels(monkeypatch):
    monkeypatch.delenv("DEEPSEEK_EXT_BACKEND", raising=False)
    assert not _backend.uses_kernels(torch.empty(1))


def test_bad_backend_env_is_named(monkeypatch):
    monkeypatch.setenv("DEEPSEEK_EXT_BACKEND", "fastest")
    with pytest.raises(ValueError, match="DEEPSEEK_EXT_BACKEND must be one of"):
        dx.backend()


def test_forcing_cuda_where_it_cannot_run_raises(monkeypatch):
    monkeypatch.setenv("DEEPSEEK_EXT_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="DEEPSEEK_EXT_BACKEND=cuda but the kernels cannot run on cpu"):
        _backend.uses_kernels(torch.empty(1))


def test_backend_agrees_with_forced_cuda(monkeypatch):
    """dx.backend() never says "reference" while the env var forces cuda: it says "cuda" where the
    kernels run, else raises the RuntimeError the ops raise."""
    monkeypatch.setenv("DEEPSEEK_EXT_BACKEND", "cuda")
    if dx.has_cuda_ext() and torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0):
        assert dx.backend() == "cuda"
    else:
        with pytest.raises(RuntimeError, match="DEEPSEEK_EXT_BACKEND=cuda but the kernels cannot run"):
            dx.backend()


@pytest.fixture
def restore_num_sms():
    saved = _backend._num_sms
    yield
    _backend._num_sms = saved


def test_set_num_sms_round_trip(restore_num_sms):
    dx.set_num_sms(20)
    assert dx.get_num_sms() == 20


def test_default_num_sms_is_the_device_count(restore_num_sms):
    _backend._num_sms = None
    expected = torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 0
    assert dx.get_num_sms() == expected


@pytest.mark.parametrize("bad, exc, match", [
    (0, ValueError, r"num_sms must be in \[1, "),
    (-3, ValueError, r"num_sms must be in \[1, "),
    (2.5, TypeError, "num_sms must be an int, got float"),
    (True, TypeError, "num_sms must be an int, got bool"),
])
def test_set_num_sms_rejects(bad, exc, match, restore_num_sms):
    with pytest.raises(exc, match=match):
        dx.set_num_sms(bad)


def test_emulate_env_runs_the_host_build_on_cpu_tensors(monkeypatch):
    monkeypatch.setenv("DEEPSEEK_EXT_BACKEND", "emulate")
    if not dx.has_emulation():
        with pytest.raises(RuntimeError, match="DEEPSEEK_EXT_BACKEND=emulate but deepseek_ext._emu was not built"):
            _backend.uses_kernels(torch.empty(1))
        with pytest.raises(RuntimeError, match="DEEPSEEK_EXT_BACKEND=emulate but deepseek_ext._emu was not built"):
            dx.backend()
        return
    assert dx.backend() == "emulate"
    assert _backend.uses_kernels(torch.empty(1))
    assert _backend.kernel_module(torch.device("cpu")) is _backend._emu
    assert dx.get_num_sms() == (torch.cuda.get_device_properties(0).multi_processor_count
                                if torch.cuda.is_available() else _backend.EMULATED_SMS)


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_says_what_it_does_not_build_in_one_line_each(tmp_path):
    proc = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path), "-DDEEPSEEK_EXT_CUDA=0",
                           "-DDEEPSEEK_EXT_EMULATE=0"], capture_output=True, text=True, check=True)
    lines = [line for line in proc.stdout.splitlines() if "deepseek_ext:" in line]
    assert lines == ["-- deepseek_ext: DEEPSEEK_EXT_EMULATE=0, not building the emulation module _emu",
                     "-- deepseek_ext: DEEPSEEK_EXT_CUDA=0, not building the CUDA extension _C"]
