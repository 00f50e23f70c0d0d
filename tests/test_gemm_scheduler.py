"""CPU tests of the FP8 GEMM kernels' host-compilable logic, built with nvcc: the index math,
tile schedules, shared-memory layouts and config heuristic (tests/cpp/gemm_scheduler.cu). The
kernels themselves run under emulation in tests/test_gemm_*.py."""
from __future__ import annotations

import subprocess

import pytest

from host_build import NVCC, ROOT, build_host_driver


@pytest.mark.parametrize("source", ["gemm_scheduler.cu"])
def test_gemm_host_checks(tmp_path, source):
    exe = build_host_driver(source, tmp_path)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith("all passed"), run.stdout


def test_debug_hangs_build_times_out_waits(tmp_path):
    """DEEPSEEK_EXT_DEBUG_HANGS=1 (DX_DEBUG_HANGS): an mbarrier wait reads the global timer, prints
    its block, thread, stage and parity, and traps."""
    if NVCC is None:
        pytest.skip("needs nvcc")
    ptx = tmp_path / "debug_hangs.ptx"
    proc = subprocess.run([NVCC, "-std=c++17", "-arch=sm_90a", "-ptx", "-DDX_DEBUG_HANGS=1",
                           f"-I{ROOT / 'csrc' / 'include'}", str(ROOT / "tests" / "cpp" / "debug_hangs.cu"),
                           "-o", str(ptx)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = ptx.read_text()
    assert "%globaltimer" in text and "trap;" in text and "vprintf" in text

