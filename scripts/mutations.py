"""Plants known bugs in the device code, one at a time, and checks that the emulated tests catch
each (a failing test or a deadlock report). Rebuilds only the emulation module (in build/mutations)
and swaps it in for the installed one; every file and the module are restored afterwards.

    python scripts/mutations.py [NAME ...]      # all mutations by default; prints a table
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INCLUDE = ROOT / "csrc" / "include" / "deepseek_ext"
BUILD = ROOT / "build" / "mutations"


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to csrc/include/deepseek_ext
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids / -k expressions run under emulation


GEMM = ("tests/test_gemm_gpu.py", "-k", "emulate")
GEMM_VARIANTS = ("tests/test_gemm_variants.py", "-k", "emulate and dense and (m128n128 or m64n48) and bf16")
EP_LOOPBACK = ("tests/test_ep_gpu.py", "-k", "emulate and loopback")
CAST_TRANSPOSE = ("tests/test_quant_gpu.py", "-k", "emulate and cast_with_transpose")
PER_BLOCK = ("tests/test_quant_gpu.py", "-k", "emulate and per_block")
DEQUANTIZE = ("tests/test_quant_gpu.py", "-k", "emulate and dequantize")
BAD_INDEX = ("tests/test_grouped_gemm_gpu.py", "-k", "emulate and bad_index")

MUTATIONS = (
    Mutation("wrong SBO", "gemm/smem_desc.cuh", "(static_cast<uint64_t>(kSwizzleAtomBytes >> 4) << 32)",
             "(static_cast<uint64_t>((kSwizzleAtomBytes / 2) >> 4) << 32)", GEMM),
    Mutation("wrong swizzle mode", "gemm/smem_desc.cuh", "constexpr uint64_t kDescSwizzle128B = 1;",
             "constexpr uint64_t kDescSwizzle128B = 2;", GEMM),
    Mutation("K-step advance of 64 B", "gemm/smem_desc.cuh", "return desc + static_cast<uint64_t>((k_slice * kWgmmaK) >> 4);",
             "return desc + static_cast<uint64_t>((k_slice * 2 * kWgmmaK) >> 4);", GEMM),
    Mutation("expect_tx one box short", "gemm/producer.cuh",
             "constexpr uint32_t kStageBytes = kLayout.tile_a_bytes() + kLayout.tile_b_bytes() +",
             "constexpr uint32_t kStageBytes = kLayout.tile_b_bytes() +", GEMM),
    Mutation("empty-barrier count off by one", "gemm/fp8_gemm_kernel.cuh",
             "kConsumerThreads / 32 * cluster_size(p.sched.multicast));",
             "kConsumerThreads / 32 * cluster_size(p.sched.multicast) + 1);", GEMM),
    Mutation("missing wgmma.wait_group", "gemm/consumer.cuh", "      ptx::wgmma_wait_group<0>();\n", "", GEMM),
    Mutation("missing fence.proxy.async", "gemm/epilogue.cuh", "  ptx::fence_proxy_async_shared();\n", "", GEMM),
    Mutation("scale promotion with the wrong K block", "gemm/consumer.cuh",
             "sb.blocks[r] = sb_staged[r * kScaleBChunk + chunk_kb];", "sb.blocks[r] = sb_staged[r * kScaleBChunk];",
             GEMM),
    Mutation("no arrival on the cluster peer's empty barrier", "gemm/consumer.cuh",
             "        if (clustered) ptx::mbarrier_arrive_cluster(ptx::cluster_map_shared(empty, cluster_rank ^ 1));\n",
             "", GEMM_VARIANTS),
    Mutation("both CTAs of a cluster load the same half of B", "gemm/producer.cuh",
             "multicast == Multicast::kB ? static_cast<int>(cluster_rank) * kBlockN / 2 : 0",
             "multicast == Multicast::kB ? 0 : 0", GEMM_VARIANTS),
    Mutation("B scale block chosen without the tile's column offset", "gemm/consumer.cuh",
             "const int r = (n_offset + 8 * j) / kQuantGroup;", "const int r = (8 * j) / kQuantGroup;",
             GEMM_VARIANTS),
    Mutation("lost release on an EP flag", "ep/barrier.cuh",
             "    __threadfence_system();  // this block's writes (local and to peers) before its arrival\n"
             "    ptx::red_add_release_gpu(c.grid_arrivals, 1);",
             "    atomicAdd(reinterpret_cast<unsigned long long*>(c.grid_arrivals), 1ull);", EP_LOOPBACK),
    Mutation("stale chunks in a row amax", "quant/cast_with_transpose.cuh",
             "if (2 * Shape::kPieceElems * p + Shape::kPieceElems * rt.half < cols_left) amax.add(piece);",
             "amax.add(piece);", CAST_TRANSPOSE),
    Mutation("stale rows in a column amax", "quant/cast_with_transpose.cuh",
             "if (Shape::kRunRows * (ct.quarter + 4 * run) < rows_left) amax.add(part);", "amax.add(part);",
             CAST_TRANSPOSE),
    Mutation("next tile staged before the last one is read", "quant/cast_with_transpose.cuh",
             "    if (staged) __syncthreads();  // every thread", "    if (false) __syncthreads();  // every thread",
             CAST_TRANSPOSE),
    Mutation("per-block q tile stored without fence.proxy.async", "quant/per_block_cast.cuh",
             "    ptx::fence_proxy_async_shared();  // the TMA store reads what this thread wrote\n", "", PER_BLOCK),
    Mutation("per-block landing parity never flips", "quant/per_block_cast.cuh",
             "tile += gridDim.x, parity ^= 1)", "tile += gridDim.x)", PER_BLOCK),
    Mutation("dequantize half-warps share one scale column", "quant/dequantize.cuh",
             "j * kSpanGroups + lane / (32 / kSpanGroups)", "j * kSpanGroups", DEQUANTIZE),
    Mutation("dequantize stores past the row", "quant/dequantize.cuh",
             "    if (cols_left > j * Shape::kSpan) store16(", "    store16(", DEQUANTIZE),
    Mutation("m_indices values not range-checked", "gemm/scheduler.cuh",
             "    if (group >= -1 && group < b_groups) return group;", "    return group;", BAD_INDEX),
    Mutation("a second group inside a 128-row block not flagged", "gemm/scheduler.cuh",
             "        if (group != first) {", "        if (false) {", BAD_INDEX),
    Mutation("a group row after padding not flagged", "gemm/scheduler.cuh",
             "        } else if (row != block_row && group_info[row - 1] == -1) {", "        } else if (false) {",
             BAD_INDEX),
    Mutation("masked_m values not range-checked", "gemm/scheduler.cuh",
             "    if (rows >= 0 && rows <= m) return rows;", "    return rows < 0 ? 0 : rows > m ? m : rows;",
             BAD_INDEX),
)


def installed_module() -> Path:
    out = subprocess.run([sys.executable, "-c", "import deepseek_ext._emu as m; print(m.__file__)"],
                         capture_output=True, text=True, check=True, cwd="/")
    return Path(out.stdout.strip())


def build_emu() -> Path:
    if not (BUILD / "build.ninja").exists():
        import pybind11
        subprocess.run(["cmake", str(ROOT), "-G", "Ninja", "-DDEEPSEEK_EXT_CUDA=0", "-DCMAKE_BUILD_TYPE=Release",
                        f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DPython_EXECUTABLE={sys.executable}"],
                       cwd=BUILD, check=True, capture_output=True)
    subprocess.run(["ninja", "_emu"], cwd=BUILD, check=True, capture_output=True)
    return next(BUILD.glob("_emu*.so"))


def install(module: Path, target: Path) -> None:
    """Swaps the emulation module in; it must import (else every emulated test would just skip)."""
    shutil.copyfile(module, target)
    subprocess.run([sys.executable, "-c", "import deepseek_ext as dx; assert dx.has_emulation()"], check=True, cwd="/")


def run_tests(tests: tuple[str, ...]) -> tuple[bool, str]:
    """(caught, evidence): caught when pytest fails; the evidence names the first failure."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    lines = proc.stdout.splitlines()
    if proc.returncode == 0 and " passed" not in (lines[-1] if lines else ""):
        raise SystemExit(f"no test ran for {' '.join(tests)}: {lines[-1] if lines else proc.stderr}")
    failed = [ln for ln in lines if ln.startswith("FAILED")]
    reason = next((ln for ln in lines if ln.startswith("E ") and ("deadlock" in ln or "Error" in ln or "assert" in ln)),
                  "")
    if not failed and proc.returncode < 0:  # the planted bug killed the test process
        return True, f"pytest killed by signal {-proc.returncode} (e.g. a wild store)"
    evidence = (failed[0].removeprefix("FAILED ") if failed else (lines[-1] if lines else "")) + \
        (f" | {reason[1:].strip()[:160]}" if reason else "")
    return proc.returncode != 0, evidence


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="mutation names (default: all)")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
    BUILD.mkdir(parents=True, exist_ok=True)
    target = installed_module()
    original = target.read_bytes()
    rows = []
    try:
        install(build_emu(), target)
        for tests in {m.tests for m in chosen}:  # a mutation counts only where the clean build passes
            failed, evidence = run_tests(tests)
            if failed:
                raise SystemExit(f"the unmutated build fails {' '.join(tests)}: {evidence}")
        for m in chosen:
            path = INCLUDE / m.file
            source = path.read_text()
            if source.count(m.old) != 1:
                raise SystemExit(f"{m.name}: the text to replace is not found exactly once in {m.file}")
            start = time.time()
            try:
                path.write_text(source.replace(m.old, m.new))
                install(build_emu(), target)
                caught, evidence = run_tests(m.tests)
            finally:
                path.write_text(source)
            rows.append((m.name, caught, evidence, time.time() - start))
            print(f"{m.name}: {'caught' if caught else 'NOT CAUGHT'} ({time.time() - start:.0f} s) {evidence}",
                  flush=True)
    finally:
        target.write_bytes(original)
    print("\n| mutation | caught | by |\n|---|---|---|")
    for name, caught, evidence, _ in rows:
        print(f"| {name} | {'yes' if caught else '**no**'} | {evidence} |")
    return 0 if all(caught for _, caught, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
