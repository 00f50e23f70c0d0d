"""CPU tests of the FP8 GEMM kernels' host-compilable logic, built with nvcc: the index math
(tests/cpp/gemm_scheduler.cu) and an emulation of every GEMM kind's data flow over the
launcher's shapes (tests/cpp/gemm_emulation.cu)."""
from __future__ import annotations

import subprocess

import pytest

from host_build import build_host_driver


@pytest.mark.parametrize("source", ["gemm_scheduler.cu", "gemm_emulation.cu"])
def test_gemm_host_checks(tmp_path, source):
    exe = build_host_driver(source, tmp_path)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith("all passed"), run.stdout
