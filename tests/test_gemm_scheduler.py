"""CPU tests of the FP8 GEMM kernels' host-compilable logic, built with nvcc: the index math
(tests/cpp/gemm_scheduler.cu) and an emulation of every GEMM kind's data flow over the
launcher's shapes (tests/cpp/gemm_emulation.cu)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
@pytest.mark.parametrize("source", ["gemm_scheduler.cu", "gemm_emulation.cu"])
def test_gemm_host_checks(tmp_path, source):
    exe = tmp_path / source.removesuffix(".cu")
    subprocess.run([NVCC, "-std=c++17", "-O2", "--expt-relaxed-constexpr", f"-I{ROOT / 'csrc' / 'include'}",
                    str(ROOT / "tests" / "cpp" / source), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith("all passed"), run.stdout
