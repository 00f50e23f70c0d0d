"""bench/sass_budget.py: the SASS counting rule on hand-written SASS, and the report on the built _C."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import sass_budget  # noqa: E402

KERNELS = [
    "per_token<bf16>", "per_token<fp32>", "swiglu<bf16>", "swiglu<fp32>", "per_block<bf16>",
    "per_block<fp32>", "with_transpose<bf16>", "with_transpose<fp32>", "dequantize<bf16>",
    "dequantize<fp32>", "transpose_block_fp8",
]

# cuobjdump -sass layout: one instruction per line, its encoding on that line and the next.
# A toy kernel with the shapes found in the real ones (see the comment after each instruction).
TOY = """
	code for sm_90a
		Function : _Z5otherv
	.headerflags	@"EF_CUDA_64BIT_ADDRESS EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   EXIT ;                                   /* 0x000000000000794d */
                                                                            /* 0x000fea0003800000 */
		Function : _Z3toyPf
	.headerflags	@"EF_CUDA_64BIT_ADDRESS EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   S2R R0, SR_TID.X ;                       /* 0x0000000000007919 */
                                                                            /* 0x000e220000002100 */
        /*0010*/                   ISETP.GE.AND P0, PT, R0, 0x80, PT ;      /* 0x000000800000780c */
                                                                            /* 0x001fda0003f06270 */
        /*0020*/               @P0 EXIT ;                                   /* 0x000000000000094d */
                                                                            /* 0x000fea0003800000 */
        /*0030*/                   ISETP.NE.AND P1, PT, R7, RZ, PT ;        /* 0x000000ff0700720c */
                                                                            /* 0x000fda0003f25270 */
        /*0040*/              @!P1 BRA 0x80 ;                               /* 0x0000000000109947 */
                                                                            /* 0x000fea0003800000 */
        /*0050*/                   MOV R8, 0x70 ;                           /* 0x0000007000087802 */
                                                                            /* 0x000fe20000000f00 */
        /*0060*/                   CALL.REL.NOINC 0x1a0 ;                   /* 0x0000000000007944 */
                                                                            /* 0x000fea0003c00000 */
        /*0070*/                   BRA 0x90 ;                               /* 0x0000000000047947 */
                                                                            /* 0x000fea0003800000 */
        /*0080*/                   IMAD R9, R0, R2, RZ ;                    /* 0x0000000200097224 */
                                                                            /* 0x000fe400078e02ff */
        /*0090*/                   MUFU.RCP R2, R3 ;                        /* 0x0000000300027308 */
                                                                            /* 0x000e240000001000 */
        /*00a0*/                   FCHK P2, R4, R3 ;                        /* 0x0000000304007302 */
                                                                            /* 0x000e620000040000 */
        /*00b0*/                   FFMA R5, R4, R2, RZ ;                    /* 0x0000000204057223 */
                                                                            /* 0x001fe200000000ff */
        /*00c0*/              @!P2 BRA 0xf0 ;                               /* 0x000000000008a947 */
                                                                            /* 0x002fea0003800000 */
        /*00d0*/                   MOV R10, 0xf0 ;                          /* 0x000000f0000a7802 */
                                                                            /* 0x000fe40000000f00 */
        /*00e0*/                   CALL.REL.NOINC 0x1c0 ;                   /* 0x0000000000007944 */
                                                                            /* 0x000fea0003c00000 */
        /*00f0*/                   BSYNC B0 ;                               /* 0x0000000000007941 */
                                                                            /* 0x000fea0003800000 */
        /*0100*/                   ISETP.NE.AND P3, PT, R11, RZ, PT ;       /* 0x000000ff0b00720c */
                                                                            /* 0x000fda0003f65270 */
        /*0110*/              @!P3 BRA 0x160 ;                              /* 0x000000000010b947 */
                                                                            /* 0x000fea0003800000 */
        /*0120*/                   LOP3.LUT R5, R5, 0x7f800000, RZ, 0xc0, !PT ; /* 0x7f80000005057812 */
                                                                            /* 0x000fc800078ec0ff */
        /*0130*/                   IADD3 R5, R5, 0x800000, RZ ;             /* 0x0080000005057810 */
                                                                            /* 0x000fc80007ffe0ff */
        /*0140*/               @P4 BRA 0x130 ;                              /* 0xfffffffc00f84947 */
                                                                            /* 0x000fea000383ffff */
        /*0150*/                   BRA 0x170 ;                              /* 0x0000000000047947 */
                                                                            /* 0x000fea0003800000 */
        /*0160*/                   FMUL R5, R5, 0.5 ;                       /* 0x3f00000005057820 */
                                                                            /* 0x000fc80000400000 */
        /*0170*/                   STG.E desc[UR4][R12.64], R5 ;            /* 0x000000050c007986 */
                                                                            /* 0x000fe2000c101904 */
        /*0180*/                   EXIT ;                                   /* 0x000000000000794d */
                                                                            /* 0x000fea0003800000 */
        /*0190*/                   BRA 0x190;                               /* 0xfffffffc00fc7947 */
                                                                            /* 0x000fc0000383ffff */
        /*01a0*/                   IADD3 R9, R0, R2, RZ ;                   /* 0x0000000200097210 */
                                                                            /* 0x000fe20007ffe0ff */
        /*01b0*/                   RET.REL.NODEC R8 0x0 ;                   /* 0xfffffffc08007950 */
                                                                            /* 0x000fea0003c3ffff */
        /*01c0*/                   FADD R5, R4, R3 ;                        /* 0x0000000304057221 */
                                                                            /* 0x000fe20000000000 */
        /*01d0*/                   RET.REL.NODEC R10 0x0 ;                  /* 0xfffffffc0a007950 */
                                                                            /* 0x000fea0003c3ffff */
        /*01e0*/                   NOP;                                     /* 0x0000000000007918 */
                                                                            /* 0x000fc00000000000 */
"""


def test_counting_rule_on_hand_written_sass():
    functions = sass_budget.parse_sass(TOY)
    assert list(functions) == ["_Z5otherv", "_Z3toyPf"]
    toy = functions["_Z3toyPf"]
    assert len(toy) == 31 and toy[2][:3] == (0x20, True, "EXIT") and toy[-1][2] == "NOP"
    path = [addr for addr, *_ in sass_budget.steady_path(toy)]
    assert path == [
        0x000, 0x010, 0x020,  # the predicated EXIT falls through
        0x030, 0x040, 0x080,  # 32-bit division; the CALL block and its return block are slow path
        0x090, 0x0a0, 0x0b0, 0x0c0, 0x0f0,  # fdiv: FCHK and the branch count, the CALL set-up does not
        0x100, 0x110, 0x120, 0x130, 0x140, 0x150,  # the longer side of an if/else; a loop body once
        0x170, 0x180,  # the join and the EXIT; the BRA-to-self, subroutines and NOP never count
    ]


def test_res_usage_and_occupancy():
    text = (" Function _ZN2dx4kernEv:\n  REG:80 STACK:0 SHARED:1024 LOCAL:16 CONSTANT[0]:609 "
            "TEXTURE:0 SURFACE:0 SAMPLER:0\n")
    assert sass_budget.parse_res_usage(text)["_ZN2dx4kernEv"]["REG"] == 80
    assert sass_budget.parse_res_usage(text)["_ZN2dx4kernEv"]["LOCAL"] == 16
    assert sass_budget.ctas_per_sm(80, 1024, 256) == (3, "regs")  # the tile kernels' 3 CTAs
    assert sass_budget.ctas_per_sm(128, 1024, 256) == (2, "regs")
    assert sass_budget.ctas_per_sm(32, 17408, 256) == (8, "regs/threads")
    assert sass_budget.ctas_per_sm(24, 17408, 256) == (8, "threads")
    assert sass_budget.ctas_per_sm(32, 1024 + 64 * 1024, 128) == (3, "smem")
    assert sass_budget.ctas_per_sm(16, 0, 32) == (32, "ctas")
    assert sass_budget.ctas_per_sm(32, 228 * 1024, 256)[0] == 0


def test_installed_extension_is_within_budget(tmp_path):
    so = sass_budget.find_extension()
    if not so:
        pytest.skip("deepseek_ext._C is not built")
    if not (sass_budget.find_tool("cuobjdump") and sass_budget.find_tool("nvdisasm")):
        pytest.skip("needs cuobjdump and nvdisasm (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    out = tmp_path / "sass.json"
    done = subprocess.run([sys.executable, str(BENCH / "sass_budget.py"), "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr  # every kernel within its budget
    table = {line.split()[0]: line.split() for line in done.stdout.splitlines()[2:] if line.split()}
    rows = {r["label"]: r for r in json.loads(out.read_text())["kernels"]}
    for kernel in KERNELS:
        assert kernel in table and kernel in rows
        assert rows[kernel]["registers"] > 0 and rows[kernel]["instructions"] > 0
        assert rows[kernel]["per_element"] > 0 and rows[kernel]["ctas_per_sm"] >= 1
        assert int(table[kernel][1]) == rows[kernel]["registers"]
