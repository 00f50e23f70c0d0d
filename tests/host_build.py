"""Builds the host-only driver programs of tests/cpp/ with nvcc: they include the kernels'
__host__ __device__ index math, so it is tested on machines without a GPU."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_CUDA_NVCC = Path("/usr/local/cuda/bin/nvcc")
NVCC = shutil.which("nvcc") or (str(_CUDA_NVCC) if _CUDA_NVCC.exists() else None)


def build_host_driver(source: str, out_dir: Path) -> Path:
    """Compiles tests/cpp/<source> into out_dir and returns the executable (skips without nvcc)."""
    if NVCC is None:
        pytest.skip("needs nvcc")
    exe = out_dir / source.removesuffix(".cu")
    proc = subprocess.run([NVCC, "-std=c++17", "-O2", "--expt-relaxed-constexpr",
                           f"-I{ROOT / 'csrc' / 'include'}", str(ROOT / "tests" / "cpp" / source),
                           "-o", str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return exe
