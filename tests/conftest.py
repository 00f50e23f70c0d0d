import os

import pytest
import torch

import deepseek_ext as dx


def _has_sm90() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def _emulated(item) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("kernel_device") == "emulate"


def pytest_collection_modifyitems(config, items):
    if _has_sm90() and dx.has_cuda_ext():
        return
    why = "needs an sm_90 GPU and the compiled extension"
    for item in items:
        if "gpu" in item.keywords and not _emulated(item):
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(params=["cuda", "emulate"])
def kernel_device(request, monkeypatch) -> str:
    """Where a kernel test runs: "cuda" (an sm_90 GPU), or "cpu" with the kernels' own device code
    compiled for the host (DEEPSEEK_EXT_BACKEND=emulate). Skips where that is not available."""
    if request.param == "cuda":
        if not (_has_sm90() and dx.has_cuda_ext()):
            pytest.skip("needs an sm_90 GPU and the compiled extension")
        return "cuda"
    if not dx.has_emulation():
        pytest.skip("needs the emulation module deepseek_ext._emu")
    monkeypatch.setenv("DEEPSEEK_EXT_BACKEND", "emulate")
    return "cpu"


def emulation_too_large(device: str, work: int, limit: int = 1 << 22) -> None:
    """Skips an emulated test whose shape is beyond what the emulator runs quickly (`work`:
    elements moved or multiply-adds done); on the GPU every shape runs."""
    if device == "cpu" and work > limit:
        pytest.skip(f"too large for the emulator ({work} > {limit})")


@pytest.fixture
def reference_backend(monkeypatch):
    """Forces DEEPSEEK_EXT_BACKEND=reference for the test."""
    monkeypatch.setenv("DEEPSEEK_EXT_BACKEND", "reference")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(int(os.environ.get("DEEPSEEK_EXT_TEST_SEED", "0")))
