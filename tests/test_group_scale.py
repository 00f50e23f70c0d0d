"""group_scale, the kernels' branch-free scale (csrc/include/deepseek_ext/quant/scale_math.cuh), against
scale_from_amax (the numerics contract's formula) on every amax bit pattern a kernel lane can hold,
both pow2 modes (tests/cpp/group_scale.cu)."""
from __future__ import annotations

import subprocess

from host_build import build_host_driver


def test_group_scale_matches_the_contract_on_every_amax(tmp_path):
    exe = build_host_driver("group_scale.cu", tmp_path)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines and lines[-1] == "all passed", proc.stdout + proc.stderr
    assert lines[-2] == f"{2**32} (amax, pow2) pairs checked", proc.stdout
