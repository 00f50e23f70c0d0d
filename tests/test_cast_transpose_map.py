"""The cast with transpose's thread mappings and staged-tile addresses
(csrc/include/deepseek_ext/quant/cast_transpose_map.cuh), checked on the host by
tests/cpp/cast_transpose_map.cpp for bf16 and fp32 tiles: the tile.cuh layout, each staged element
read once per pass, conflict-free shared-memory accesses (a naive mapping shown to conflict), the
shuffle partners, and whole-sector stores."""
from __future__ import annotations

import re
import subprocess

from host_cpp_build import build_host_cpp


def test_cast_transpose_mappings(tmp_path):
    exe = build_host_cpp(["tests/cpp/cast_transpose_map.cpp"], tmp_path)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines and lines[-1] == "all passed", proc.stdout + proc.stderr
    naive = [int(n) for n in re.findall(r"naive row mapping: (\d+) wavefronts \(fewest 4\)", proc.stdout)]
    assert len(naive) == 2 and min(naive) > 4, proc.stdout
