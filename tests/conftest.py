import os

import pytest
import torch

import deepseek_ext as dx


def _has_sm90() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def pytest_collection_modifyitems(config, items):
    if _has_sm90() and dx.has_cuda_ext():
        return
    why = "needs an sm_90 GPU and the compiled extension"
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture
def reference_backend(monkeypatch):
    """Forces DEEPSEEK_EXT_BACKEND=reference for the test."""
    monkeypatch.setenv("DEEPSEEK_EXT_BACKEND", "reference")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(int(os.environ.get("DEEPSEEK_EXT_TEST_SEED", "0")))
