"""token_scale, the per-token kernel's branch-free group_scale (csrc/include/deepseek_ext/quant/
per_token_cast.cuh), against group_scale on every amax bit pattern a kernel lane can hold, both pow2
modes (tests/cpp/token_scale.cu)."""
from __future__ import annotations

import subprocess

from host_build import build_host_driver


def test_token_scale_matches_group_scale_on_every_amax(tmp_path):
    exe = build_host_driver("token_scale.cu", tmp_path)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines and lines[-1] == "all passed", proc.stdout + proc.stderr
    assert lines[-2] == f"{2**32} (amax, pow2) pairs checked", proc.stdout
