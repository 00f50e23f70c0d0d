"""The host models of wgmma (descriptors, canonical K-major layouts, m64nNk32 e4m3 MMA, accumulator
fragment) and of the fp8 conversions: tests/cpp/emu_wgmma.cpp checks them against the PTX ISA, and the
conversions are compared here with torch.float8_e4m3fn bit for bit."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
GXX = shutil.which("g++")
CUDA_INCLUDE = Path("/usr/local/cuda/include")
E4M3_MAX = 448.0


@pytest.fixture(scope="module")
def emu_wgmma(tmp_path_factory) -> Path:
    if GXX is None:
        pytest.skip("needs g++")
    exe = tmp_path_factory.mktemp("emu_wgmma") / "emu_wgmma"
    includes = [f"-I{CUDA_INCLUDE}"] if CUDA_INCLUDE.is_dir() else []
    sources = ["csrc/emu/wgmma.cpp", "csrc/emu/fp8.cpp", "tests/cpp/emu_wgmma.cpp"]
    proc = subprocess.run([GXX, "-std=c++17", "-O2", *includes, "-Icsrc", "-Icsrc/include",
                           *sources, "-o", str(exe)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return exe


def _convert(exe: Path, mode: str, data: np.ndarray, out_dtype, tmp_path: Path) -> np.ndarray:
    src, dst = tmp_path / f"{mode}.in", tmp_path / f"{mode}.out"
    data.tofile(src)
    proc = subprocess.run([str(exe), mode, str(src), str(dst)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return np.fromfile(dst, dtype=out_dtype)


def test_isa_checks(emu_wgmma):
    proc = subprocess.run([str(emu_wgmma)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "all passed", proc.stdout + proc.stderr


def _expected_e4m3(x: np.ndarray, torch) -> np.ndarray:
    """cvt.rn.satfinite.e4m3: torch's round-to-nearest-even of the value clamped to +-448 (infinities
    included); NaN inputs are checked separately."""
    t = torch.from_numpy(x)
    return t.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).view(torch.uint8).numpy()


def _check_f32_to_e4m3(exe: Path, x: np.ndarray, torch, tmp_path: Path):
    got = _convert(exe, "f32-to-e4m3", x, np.uint8, tmp_path)
    nan = np.isnan(x)
    assert np.all(got[nan] == 0x7F), "NaN inputs give the canonical e4m3 NaN"
    want = _expected_e4m3(x[~nan], torch)
    bad = np.flatnonzero(got[~nan] != want)
    assert bad.size == 0, [(float(x[~nan][i]), int(got[~nan][i]), int(want[i])) for i in bad[:10]]


def test_f32_to_e4m3_every_bf16(emu_wgmma, tmp_path):
    torch = pytest.importorskip("torch")
    x = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)
    _check_f32_to_e4m3(emu_wgmma, x, torch, tmp_path)
    got = _convert(emu_wgmma, "f32-to-e4m3", np.array([np.inf, -np.inf, -0.0], np.float32), np.uint8, tmp_path)
    assert got.tolist() == [0x7E, 0xFE, 0x80]


def test_f32_to_e4m3_random(emu_wgmma, tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    n = 10**7
    bits = rng.integers(0, 1 << 32, size=n, dtype=np.uint32)
    # Half the values get exponents from below the e4m3 subnormals to above 448, where rounding happens.
    near = bits[: n // 2]
    near &= np.uint32(0x807FFFFF)
    near |= rng.integers(127 - 12, 127 + 10, size=near.size, dtype=np.uint32) << np.uint32(23)
    _check_f32_to_e4m3(emu_wgmma, bits.view(np.float32), torch, tmp_path)


def test_e4m3_decode_every_byte(emu_wgmma, tmp_path):
    torch = pytest.importorskip("torch")
    v = np.arange(256, dtype=np.uint8)
    nan = (v & 0x7F) == 0x7F
    ref = torch.from_numpy(v).view(torch.float8_e4m3fn)
    f32 = _convert(emu_wgmma, "e4m3-to-f32", v, np.float32, tmp_path)
    assert np.all(np.isnan(f32[nan]))
    assert np.array_equal(f32[~nan].view(np.uint32), ref.float().numpy()[~nan].view(np.uint32))
    f16 = _convert(emu_wgmma, "e4m3-to-f16", v, np.uint16, tmp_path)
    assert np.all(f16[nan] == 0x7FFF)
    assert np.array_equal(f16[~nan], ref.half().numpy()[~nan].view(np.uint16))
