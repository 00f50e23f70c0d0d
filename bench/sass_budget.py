"""Static SASS budget of the FP8 quantization kernels: no GPU needed, only the built extension.

For each quant kernel in deepseek_ext/_C*.so it prints registers per thread and local memory
(`cuobjdump -res-usage`), CTAs per SM on an H100/H200 (from registers, shared memory and threads
per block, as the CUDA occupancy calculator computes it), and SASS instructions per output
element, against a budget. Exit status 1 if a kernel is over budget (0 with --report-only), 2 if
the measurement fails.

The counting rule (instructions per element):

    count = SASS instructions (NOPs excluded) on the longest path through the kernel's control
            flow from its entry to an EXIT that executes no CALL, every branch back to an earlier
            address cut;   per element = count / output elements one thread writes.

- Every loop of these kernels is fully unrolled, so a thread runs its code top to bottom once:
  the count is what one thread issues for its elements. The per-thread prologue (index math,
  bounds) and epilogue are kept: they are paid for those elements, and a kernel that needs fewer
  of them per element is cheaper. (Only a loop body would count once, e.g. round_up_pow2's
  subnormal loop, which a scale >= 1e-4/448 never enters.) The persistent per-block cast and cast
  with transpose loop over tiles: a tile loop's body counts once with the one-time setup, i.e. one
  tile's work (cast with transpose: staging a tile, issuing the next tile's loads, both passes).
- Excluded: code normal inputs never run. ptxas puts these slow paths out of line as
  subroutines reached by CALL: the IEEE fp32 division slow path (taken only when FCHK flags a
  denormal, huge or special operand) and the 64-bit integer division (only when an index passes
  2^32). A basic block that ends in a CALL (argument set-up + CALL) is dropped with all that only
  it reaches (the moves back after the return), and so is the subroutine. The FCHK and the branch
  around each call run every time and are counted.
- Longest path, not all code: ptxas may duplicate code behind runtime conditions (a whole pass
  once per value of pow2_scale), and an if/else runs one side. The longest side is taken
  (pow2_scale on, every bounds check passed), so the count is an upper bound of what an interior
  thread issues. Column "(all)" is the kernel's whole code.
- Output elements: quantized values written (the scales are ignored: one per 128 elements). From
  the source constants: per-token and SwiGLU token_steps<Loader>() x kTokenLaneElems, i.e.
  kTokenLaneBytes / sizeof(T) (SwiGLU reads g and u: half that),
  per-block and FP8 transpose one 128x128 tile / kTileThreads = 64, cast with transpose 2 x 64
  (q and qt both count), dequantize kDequantLoads x 16/sizeof(Out) (one 16-byte store per load).

Occupancy: 65536 registers in 4 sub-partitions, allocated per warp in units of 256; 228 KB of
shared memory per SM, 227 KB per CTA, 128-byte granules, plus the 1 KB the driver reserves per
CTA (added on top of cuobjdump's SHARED, which on sm_90 already holds a 1 KB `.nv.shared.reserved`
section for any kernel that may touch shared memory: at worst 1 KB pessimistic); 2048 threads and
32 CTAs per SM.

    python bench/sass_budget.py [path/to/_C.so] [--report-only] [--json out.json] [--mix]
"""
from __future__ import annotations

import argparse
import collections
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

REGS_PER_SM, REG_UNIT, SUBPARTITIONS, MAX_REGS = 65536, 256, 4, 255
SMEM_PER_SM, SMEM_PER_CTA, SMEM_RESERVED, SMEM_UNIT = 228 * 1024, 227 * 1024, 1024, 128
THREADS_PER_SM, CTAS_PER_SM = 2048, 32

# Instructions per output element. SwiGLU's silu, x / (1 + expf(-x)) in fp32 as torch writes it (so the
# fused cast stays bit-identical to F.silu: accurate expf and an IEEE division per element), costs 20.0
# on its own (the kernel built with silu(x) = x measures 13.3); the first target of 18 is below that.
BUDGETS = {"per_token": 12, "per_block": 10, "with_transpose": 14, "swiglu": 36, "dequantize": 8}

# One line of `cuobjdump -sass`: /*addr*/  [@!P0] OPCODE.MODS operands ;
INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Z0-9_]+)*)([^;]*);")
ENDS_BLOCK = {"BRA", "BRX", "JMP", "JMX", "CALL", "EXIT", "RET"}
MIX = {  # opcode -> class, for the "where do the instructions go" breakdown (rest: int/addr)
    **dict.fromkeys("LDG STG LDS STS LDL STL LDSM RED ATOMG ATOMS".split(), "memory"),
    **dict.fromkeys("FFMA FMUL FADD FMNMX FSETP FSEL FSET FCHK MUFU HFMA2 HADD2 HMUL2".split(), "float"),
    **dict.fromkeys("F2FP F2I I2F F2F I2FP F2IP".split(), "convert"),
    **dict.fromkeys("SHFL BAR WARPSYNC".split(), "shuffle/sync"),
    **dict.fromkeys("BRA BSSY BSYNC EXIT".split(), "control"),
}


def parse_sass(text: str) -> dict[str, list[tuple[int, bool, str, str]]]:
    """`cuobjdump -sass` text -> {function: [(address, predicated, opcode, operands)]}."""
    functions, name = {}, None
    for line in text.splitlines():
        if m := re.match(r"\s*Function : (\S+)", line):
            name = m.group(1)
            functions[name] = []
        elif name and (m := INSN.search(line)):
            functions[name].append((int(m.group(1), 16), bool(m.group(2)), m.group(3), m.group(5).strip()))
    return functions


def steady_path(insns: list[tuple[int, bool, str, str]]) -> list[tuple[int, bool, str, str]]:
    """The instructions (NOPs dropped) on the longest path from the entry to an EXIT that executes
    no CALL; branches to an earlier address are cut, so a loop body counts once."""
    index = {addr: i for i, (addr, *_) in enumerate(insns)}
    target, leaders = {}, {0}  # branch instruction -> index of its target; basic-block starts
    for i, (_, _, op, args) in enumerate(insns):
        if op in ("BRX", "JMX", "JMP"):  # an indirect jump would need its jump table
            raise ValueError(f"{op} at {insns[i][0]:#x}: no control-flow graph for an indirect jump")
        if op == "BRA":
            target[i] = index[int(re.findall(r"0x[0-9a-f]+", args)[-1], 16)]
            leaders.add(target[i])
        if op in ENDS_BLOCK:
            leaders.add(i + 1)
    starts = sorted(s for s in leaders if s < len(insns))
    end = dict(zip(starts, starts[1:] + [len(insns)]))
    best, finish = {0: (0, None)}, (-1, None)  # block -> (instructions before it, previous block)
    for s in starts:  # address order is a topological order once backward edges are cut
        if s not in best:
            continue
        last, (_, predicated, op, _) = end[s] - 1, insns[end[s] - 1]
        if op == "CALL" and not predicated:
            continue  # argument set-up of a slow path: dropped, with all that only it reaches
        length = best[s][0] + sum(ins[2] not in ("NOP", "CALL") for ins in insns[s:end[s]])
        if op == "EXIT":
            finish = max(finish, (length, s))
        successors = [target[last]] if op == "BRA" else []
        if op not in ("BRA", "EXIT", "RET") or predicated:  # falls through (a predicated one may)
            successors.append(end[s])
        for t in successors:
            if s < t < len(insns) and best.get(t, (-1,))[0] < length:
                best[t] = (length, s)
    if finish[1] is None:
        raise ValueError("no path from the entry to an EXIT without a CALL")
    path, s = [], finish[1]
    while s is not None:
        path[:0] = [ins for ins in insns[s:end[s]] if ins[2] not in ("NOP", "CALL")]
        s = best[s][1]
    return path


def parse_res_usage(text: str) -> dict[str, dict[str, int]]:
    """`cuobjdump -res-usage` text -> {function: {"REG": .., "SHARED": .., "LOCAL": .., ...}}."""
    found = re.findall(r"Function (\S+):\s*\n\s*(REG:.*)", text)
    return {name: {k: int(v) for k, v in re.findall(r"(\w+)(?:\[\d+\])?:(\d+)", res)} for name, res in found}


def ctas_per_sm(regs: int, smem: int, threads: int) -> tuple[int, str]:
    """Resident CTAs per SM on sm_90 and the resources that limit them."""
    warps = -(-threads // 32)
    regs_per_warp = -(-max(regs, 1) * 32 // REG_UNIT) * REG_UNIT
    smem_cta = -(-(smem + SMEM_RESERVED) // SMEM_UNIT) * SMEM_UNIT
    limits = {
        "regs": 0 if regs > MAX_REGS else REGS_PER_SM // SUBPARTITIONS // regs_per_warp * SUBPARTITIONS // warps,
        "smem": 0 if smem > SMEM_PER_CTA else SMEM_PER_SM // smem_cta,
        "threads": THREADS_PER_SM // (warps * 32),
        "ctas": CTAS_PER_SM,
    }
    fewest = min(limits.values())
    return fewest, "/".join(k for k, v in limits.items() if v == fewest)  # every resource that binds


def fail(message: str):
    """Stops with status 2: the measurement itself failed (1 means over budget)."""
    print(f"sass_budget: {message}", file=sys.stderr)
    raise SystemExit(2)


def source_constant(relpath: str, name: str) -> int:
    """A `constexpr int name = N;` of the CUDA sources (so the element counts follow the code)."""
    m = re.search(rf"constexpr\s+\w+\s+{name}\s*=\s*(\d+)\s*;", (ROOT / relpath).read_text())
    if not m:
        fail(f"constexpr {name} not found in {relpath}")
    return int(m.group(1))


def kernel_specs() -> list[dict]:
    """(label, budget family, mangled-name fragment, threads, dynamic smem, elements per thread)."""
    group = source_constant("csrc/include/deepseek_ext/common.cuh", "kQuantGroup")
    tile_threads = source_constant("csrc/include/deepseek_ext/quant/tile.cuh", "kTileThreads")
    token_lanes = source_constant("csrc/include/deepseek_ext/quant/per_token_cast.cuh", "kTokenGroupLanes")
    token_bytes = source_constant("csrc/include/deepseek_ext/quant/per_token_cast.cuh", "kTokenLaneBytes")
    lane_elems = group // token_lanes  # kTokenLaneElems: a lane's share of one group
    dq_loads = source_constant("csrc/include/deepseek_ext/quant/dequantize.cuh", "kDequantLoads")
    dq_threads = source_constant("csrc/include/deepseek_ext/quant/dequantize.cuh", "kDequantThreads")
    tile = group * group // tile_threads  # elements of one 128x128 tile per thread
    specs = []
    for t, size, m in (("bf16", 2, "I13__nv_bfloat16E"), ("fp32", 4, "IfE")):
        def token(reads):  # token_steps<Loader>() groups of lane_elems: kTokenLaneBytes of input per pass
            return token_bytes // (lane_elems * size * reads) * lane_elems
        specs += [
            (f"per_token<{t}>", "per_token", f"per_token_cast_to_fp8_kernelINS_9RowLoader{m}", tile_threads, 0, token(1)),
            (f"swiglu<{t}>", "swiglu", f"per_token_cast_to_fp8_kernelINS_12SwigluLoader{m}", tile_threads, 0, token(2)),
            (f"per_block<{t}>", "per_block", f"per_block_cast_to_fp8_kernel{m}", tile_threads,
             group * group * (size + 1) + tile_threads // 32 * 4 + 8 + 128, tile),  # BlockCastSmem<T>::kRequest
            (f"with_transpose<{t}>", "with_transpose", f"cast_with_transpose_kernel{m}", tile_threads,
             group * group * size, 2 * tile),  # a staged tile (cast_with_transpose_smem_bytes); q and qt
            (f"dequantize<{t}>", "dequantize", f"dequantize_kernel{m}", dq_threads, 0, dq_loads * (16 // size)),
        ]
    specs.append(("transpose_block_fp8", None, "transpose_block_fp8_kernel", tile_threads, 0, tile))
    keys = ("label", "family", "fragment", "threads", "dynamic_smem", "elements_per_thread")
    return [dict(zip(keys, s)) for s in specs]


def find_tool(name: str) -> str | None:
    """`name` (cuobjdump, nvdisasm) from its PyPI wheel nvidia-cuda-<name>, else from PATH."""
    try:
        for f in importlib.metadata.files(f"nvidia-cuda-{name}") or []:
            if f.name == name and (path := Path(f.locate())).is_file():
                return str(path)
    except importlib.metadata.PackageNotFoundError:
        pass
    return shutil.which(name)


def find_extension() -> str | None:
    """The installed deepseek_ext._C shared object, without loading it."""
    try:
        spec = importlib.util.find_spec("deepseek_ext._C")
    except ImportError:
        return None
    return spec.origin if spec and spec.origin else None


def cuobjdump(args: list[str]) -> str:
    tool = find_tool("cuobjdump")
    if not tool:
        fail("no cuobjdump (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    env = dict(os.environ)
    if nvdisasm := find_tool("nvdisasm"):  # -sass runs nvdisasm, found through PATH
        env["PATH"] = f"{Path(nvdisasm).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run([tool, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        fail(f"cuobjdump {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def measure(so: str) -> list[dict]:
    resources = parse_res_usage(cuobjdump(["-res-usage", so]))
    sass = parse_sass(cuobjdump(["-sass", so]))
    rows = []
    for spec in kernel_specs():
        names = [n for n in resources if spec["fragment"] in n]
        if len(names) != 1:
            fail(f"{spec['label']}: expected one function matching {spec['fragment']}, got {names}")
        res, insns = resources[names[0]], sass.get(names[0], [])
        if not insns:
            fail(f"no SASS for {names[0]}")
        path = steady_path(insns)
        ctas, limiter = ctas_per_sm(res["REG"], res["SHARED"] + spec["dynamic_smem"], spec["threads"])
        mix = collections.Counter(MIX.get(op, "int/addr") for _, _, op, _ in path)
        per_element = len(path) / spec["elements_per_thread"]
        budget = BUDGETS.get(spec["family"])
        rows.append({
            **{k: spec[k] for k in ("label", "family", "threads", "dynamic_smem", "elements_per_thread")},
            "function": names[0], "registers": res["REG"], "local_bytes": res.get("LOCAL", 0),
            "stack_bytes": res.get("STACK", 0), "shared_bytes": res["SHARED"], "ctas_per_sm": ctas,
            "ctas_limited_by": limiter, "instructions": len(path),
            "all_instructions": sum(op != "NOP" for _, _, op, _ in insns), "per_element": round(per_element, 3),
            "budget": budget, "ok": budget is None or per_element <= budget, "mix": dict(mix.most_common()),
        })
    return rows


def print_table(rows: list[dict], show_mix: bool) -> None:
    head = ("kernel", "regs", "lmem", "CTAs/SM", "insns", "(all)", "elems/thr", "insn/elem", "budget", "ok")
    lines = [head] + [(
        r["label"], r["registers"], r["local_bytes"], f"{r['ctas_per_sm']} ({r['ctas_limited_by']})", r["instructions"],
        r["all_instructions"], r["elements_per_thread"], f"{r['per_element']:.2f}",
        "-" if r["budget"] is None else r["budget"], "-" if r["budget"] is None else ("ok" if r["ok"] else "OVER"),
    ) for r in rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
    if show_mix:
        for r in rows:
            mix = ", ".join(f"{k} {v / r['elements_per_thread']:.2f}" for k, v in r["mix"].items())
            print(f"{r['label']:<22} per element: {mix}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("so", nargs="?", help="the extension (default: the installed deepseek_ext._C)")
    parser.add_argument("--report-only", action="store_true", help="always exit 0")
    parser.add_argument("--json", metavar="PATH", help="also write the measurements as JSON")
    parser.add_argument("--mix", action="store_true", help="also print instructions per element by class")
    args = parser.parse_args(argv)
    so = args.so or find_extension()
    if not so or not Path(so).is_file():
        fail("deepseek_ext._C is not built (pass the .so path)")
    rows = measure(so)
    print(f"SASS budget of {so}")
    print_table(rows, args.mix)
    over = [r["label"] for r in rows if not r["ok"]]
    print(f"over budget: {', '.join(over)}" if over else "all kernels within budget")
    if args.json:
        Path(args.json).write_text(json.dumps({"extension": so, "kernels": rows, "over_budget": over}, indent=2))
    return 0 if args.report_only or not over else 1


if __name__ == "__main__":
    sys.exit(main())
