"""fast_divide (csrc/include/deepseek_ext/quant/fast_divisor.cuh), the division by a launch-time divisor
in the quantization kernels, against n / d: tests/cpp/fast_divisor.cpp checks the
edges of its domain (every divisor up to 2^16, around every power of two and random ones, against the
dividends where the quotient steps and the ends of [0, 2^31)), and shows a multiplier one too small fails."""
from __future__ import annotations

import re
import subprocess

from host_cpp_build import build_host_cpp


def test_fast_divide_matches_integer_division(tmp_path):
    exe = build_host_cpp(["tests/cpp/fast_divisor.cpp"], tmp_path)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines and lines[-1] == "all passed", proc.stdout + proc.stderr
    checked = int(re.search(r"(\d+) divisions checked, 0 mismatches", proc.stdout).group(1))
    control = int(re.search(r"negative control .*: (\d+) mismatches", proc.stdout).group(1))
    assert checked > 5 * 10**7 and control > 0, proc.stdout
