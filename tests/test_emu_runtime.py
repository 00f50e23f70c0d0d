"""The emulator's execution model (csrc/emu/scheduler.cpp, async_units.cpp, memory_order.cpp):
tests/cpp/emu_runtime.cpp runs small device programs written for the test (warp collectives,
barriers, shared-memory scoping, mbarrier phases, TMA through an mbarrier, the async proxy, wgmma's
fence/commit/wait rules, setmaxnreg, the release/acquire monitor) and checks the deadlock report."""
from __future__ import annotations

import subprocess

from host_cpp_build import ROOT, build_host_cpp

RUNTIME = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "emu").glob("*.cpp"))


def test_emulated_execution_model(tmp_path):
    exe = build_host_cpp([*RUNTIME, "tests/cpp/emu_runtime.cpp"], tmp_path,
                         ("-ffp-contract=off", "-U_FORTIFY_SOURCE", "-Wno-attributes", "-lrt"))
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines and lines[-1] == "all passed", proc.stdout + proc.stderr
