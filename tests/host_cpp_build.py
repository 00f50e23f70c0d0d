"""Builds host C++ test programs of the emulator's pure models (tests/cpp/emu_*.cpp) with plain g++
against the CUDA headers, so they run on machines without nvcc or a GPU."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GXX = shutil.which("g++")
CUDA_INCLUDE = Path("/usr/local/cuda/include")


def build_host_cpp(sources: list[str], out_dir: Path, flags: tuple[str, ...] = ()) -> Path:
    """Compiles the repository-relative `sources` into one executable in out_dir, named after the last
    source, and returns it (skips without g++ or cuda.h). `flags` go to g++ after the sources."""
    if GXX is None:
        pytest.skip("needs g++")
    if not (CUDA_INCLUDE / "cuda.h").exists():
        pytest.skip(f"needs the CUDA headers ({CUDA_INCLUDE / 'cuda.h'})")
    exe = out_dir / Path(sources[-1]).stem
    proc = subprocess.run([GXX, "-std=c++17", "-O2", f"-I{CUDA_INCLUDE}", f"-I{ROOT / 'csrc'}",
                           f"-I{ROOT / 'csrc' / 'include'}", *(str(ROOT / s) for s in sources),
                           *flags, "-o", str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return exe
