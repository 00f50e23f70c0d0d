"""The host model of the Tensor Memory Accelerator (csrc/emu/tensor_map.*): tests/cpp/emu_tma.cpp
checks cuTensorMapEncodeTiled's documented constraints and the tile-mode cp.async.bulk.tensor loads
and stores (out-of-bounds fill, transaction bytes, swizzle patterns, clipping) against the CUDA driver
API reference and the PTX ISA."""
from __future__ import annotations

import subprocess

from host_cpp_build import build_host_cpp


def test_tma_model(tmp_path):
    exe = build_host_cpp(["csrc/emu/tensor_map.cpp", "tests/cpp/emu_tma.cpp"], tmp_path)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines and lines[-1] == "all passed", proc.stdout + proc.stderr
