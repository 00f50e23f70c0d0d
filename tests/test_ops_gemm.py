"""dx.gemm ops: validation (every error names the argument), opcheck, torch.compile, kernel hook."""
import ctypes

import pytest
import torch

import deepseek_ext as dx
from deepseek_ext.ops import _eager, _launch
from deepseek_ext.ops import gemm as ops_gemm
from deepseek_ext.reference import gemm as ref
from deepseek_ext.reference import quant as ref_quant
from deepseek_ext.reference.quant import per_block_cast_to_fp8, per_token_cast_to_fp8_with_transpose

# test_schema compares inputs before/after with allclose, which has no CPU float8 kernel;
# test_inputs_are_not_mutated checks the same bitwise.
OPCHECK_TESTS = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def dense_args(m=7, n=144, k=272, b_scaling="128x128", device="cpu"):
    a, sa = dx.quant.per_token_cast_to_fp8(torch.randn(m, k, device=device))
    w = torch.randn(n, k, device=device)
    b, sb = per_block_cast_to_fp8(w) if b_scaling == "128x128" else dx.quant.per_token_cast_to_fp8(w)
    return a, sa, b, sb


def contiguous_args(groups=3, n=144, k=272):
    m_indices = torch.full((256,), -1, dtype=torch.int32)
    m_indices[:100], m_indices[128:129] = 0, 2
    a, sa = dx.quant.per_token_cast_to_fp8(torch.randn(256, k))
    b, sb = per_block_cast_to_fp8(torch.randn(groups, n, k))
    return a, sa, b, sb, m_indices


def masked_args(groups=3, m_max=40, n=48, k=208):
    a, sa = dx.quant.per_token_cast_to_fp8(torch.randn(groups, m_max, k))
    b, sb = per_block_cast_to_fp8(torch.randn(groups, n, k))
    return a, sa, b, sb, torch.tensor([0, m_max, 7], dtype=torch.int32)


def k_grouped_args(group_sizes=(128, 0, 256, 128), n=48, k=80):
    t = sum(group_sizes)
    _, _, a, sa = per_token_cast_to_fp8_with_transpose(torch.randn(t, n))
    _, _, b, sb = per_token_cast_to_fp8_with_transpose(torch.randn(t, k))
    return a, sa, b, sb, list(group_sizes)


def written_rows(out, masked_m):
    """The masked GEMM's output with the rows it leaves unwritten (>= masked_m[g]) zeroed."""
    rows = torch.arange(out.shape[1])[None, :, None] < masked_m[:, None, None]
    return torch.where(rows, out, 0)


def row_major(s):
    return s.contiguous()


def misaligned_like(t):
    """Same values, contiguous, but starting one element past a 16-byte boundary."""
    storage = torch.empty(t.numel() + 1, dtype=t.dtype)
    shifted = storage[1:].view(t.shape)
    shifted.copy_(t)
    return shifted


# --- results ---------------------------------------------------------------------------------

@pytest.mark.parametrize("b_scaling", ["128x128", "1x128"])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_fp8_gemm_nt_matches_reference(b_scaling, out_dtype):
    a, sa, b, sb = dense_args(b_scaling=b_scaling)
    c = torch.randn(a.shape[0], b.shape[0])
    assert torch.equal(dx.gemm.fp8_gemm_nt(a, sa, b, sb, out_dtype), ref.fp8_gemm_nt(a, sa, b, sb, out_dtype))
    out_c = dx.gemm.fp8_gemm_nt(a, sa, b, sb, out_dtype, c=c)
    assert out_c.dtype == out_dtype and torch.equal(out_c, ref.fp8_gemm_nt(a, sa, b, sb, out_dtype, c))


def test_fp8_gemm_nt_empty_inputs():
    a, sa, b, sb = dense_args(m=0)
    assert dx.gemm.fp8_gemm_nt(a, sa, b, sb).shape == (0, 144)
    a, sa = ref_quant.per_token_cast_to_fp8(torch.randn(7, 0))  # dx.quant rejects K=0 inputs
    b, sb = per_block_cast_to_fp8(torch.randn(144, 0))
    c = torch.randn(7, 144)
    assert torch.equal(dx.gemm.fp8_gemm_nt(a, sa, b, sb, torch.float32, c=c), c)


def test_grouped_ops_match_reference():
    a, sa, b, sb, m_indices = contiguous_args()
    assert torch.equal(dx.gemm.m_grouped_fp8_gemm_nt_contiguous(a, sa, b, sb, m_indices, torch.float32),
                       ref.m_grouped_fp8_gemm_nt_contiguous(a, sa, b, sb, m_indices, torch.float32))
    a, sa, b, sb, masked_m = masked_args()
    assert torch.equal(written_rows(dx.gemm.m_grouped_fp8_gemm_nt_masked(a, sa, b, sb, masked_m, 16), masked_m),
                       written_rows(ref.m_grouped_fp8_gemm_nt_masked(a, sa, b, sb, masked_m, 16), masked_m))
    a, sa, b, sb, sizes = k_grouped_args()
    c = torch.randn(len(sizes), a.shape[0], b.shape[0])
    expected = ref.k_grouped_fp8_gemm_tn_contiguous(a, sa, b, sb, sizes, c)
    assert torch.equal(dx.gemm.k_grouped_fp8_gemm_tn_contiguous(a, sa, b, sb, sizes, c), expected)
    assert torch.equal(dx.gemm.k_grouped_fp8_gemm_tn_contiguous(a, sa, b, sb, torch.tensor(sizes), c), expected)


def test_grouped_ops_empty_inputs():
    a, sa = dx.quant.per_token_cast_to_fp8(torch.randn(0, 272))
    b, sb = per_block_cast_to_fp8(torch.randn(3, 144, 272))
    m_indices = torch.zeros(0, dtype=torch.int32)
    assert dx.gemm.m_grouped_fp8_gemm_nt_contiguous(a, sa, b, sb, m_indices).shape == (0, 144)
    a, sa, b, sb, _ = masked_args()
    assert dx.gemm.m_grouped_fp8_gemm_nt_masked(a, sa, b, sb, torch.zeros(3, dtype=torch.int32), 1).shape == (3, 40, 48)
    a, sa, b, sb, sizes = k_grouped_args(group_sizes=(0, 0))
    assert not dx.gemm.k_grouped_fp8_gemm_tn_contiguous(a, sa, b, sb, sizes).any()


def test_public_module_exports():
    assert dx.gemm.M_ALIGNMENT == 128
    assert dx.gemm.calc_diff(torch.ones(3), torch.ones(3)) == 0.0


# --- validation ------------------------------------------------------------------------------

def _replace(args, index, value):
    return args[:index] + (value,) + args[index + 1:]


DENSE_ERRORS = [
    ("a not a tensor", lambda a, sa, b, sb: ([1.0], sa, b, sb), TypeError, r"a must be a torch.Tensor, got list"),
    ("a bf16", lambda a, sa, b, sb: (a.bfloat16(), sa, b, sb), TypeError, r"a must have dtype in \(float8_e4m3fn\)"),
    ("a 3-D", lambda a, sa, b, sb: (a[None], sa, b, sb), ValueError, r"a must be 2-D"),
    ("a strided", lambda a, sa, b, sb: (a.T.contiguous().T, sa, b, sb), ValueError, r"a must be contiguous"),
    ("K not 16k", lambda a, sa, b, sb: (a[:, :40].contiguous(), sa, b, sb), ValueError,
     r"a.shape\[-1\] \(K\) must be a multiple of 16, got 40"),
    ("b K differs", lambda a, sa, b, sb: (a, sa, b[:, :256].contiguous(), sb), ValueError,
     r"b.shape\[-1\] \(K\) must equal a.shape\[-1\]=272, got 256"),
    ("N not 16k", lambda a, sa, b, sb: (a, sa, b[:40].contiguous(), sb), ValueError,
     r"b.shape\[0\] \(N\) must be a multiple of 16, got 40"),
    ("b e5m2", lambda a, sa, b, sb: (a, sa, b.to(torch.float8_e5m2), sb), TypeError, r"b must have dtype"),
    ("sa bf16", lambda a, sa, b, sb: (a, sa.bfloat16(), b, sb), TypeError, r"sa must have dtype in \(float32\)"),
    ("sa shape", lambda a, sa, b, sb: (a, sa[:, :2], b, sb), ValueError, r"sa must have shape \(7, 3\), got \(7, 2\)"),
    ("sa row-major", lambda a, sa, b, sb: (a, row_major(sa), b, sb), ValueError,
     r"sa must be stored M-major .*produce the scales with dx.quant.per_token_cast_to_fp8"),
    ("sb shape", lambda a, sa, b, sb: (a, sa, b, torch.ones(3, 3)), ValueError,
     r"sb must have shape \(2, 3\) \(128x128 scales\) or \(144, 3\) \(1x128 scales\), got \(3, 3\)"),
    ("sb strided", lambda a, sa, b, sb: (a, sa, b, sb.T.contiguous().T), ValueError, r"sb must be contiguous"),
    ("sb int", lambda a, sa, b, sb: (a, sa, b, sb.int()), TypeError, r"sb must have dtype in \(float32\)"),
    ("sb 1x128 row-major", lambda a, sa, b, sb: (a, sa, b, torch.ones(144, 3)), ValueError,
     r"sb must be stored M-major"),
    ("sb on meta", lambda a, sa, b, sb: (a, sa, b, sb.to("meta")), ValueError, r"sb is on meta but a is on cpu"),
]


@pytest.mark.parametrize("mutate, error, message", [case[1:] for case in DENSE_ERRORS],
                         ids=[case[0] for case in DENSE_ERRORS])
def test_fp8_gemm_nt_rejects(mutate, error, message):
    with pytest.raises(error, match=message):
        dx.gemm.fp8_gemm_nt(*mutate(*dense_args()))


def test_fp8_gemm_nt_rejects_out_dtype_and_c():
    a, sa, b, sb = dense_args()
    with pytest.raises(TypeError, match=r"out_dtype must be torch.bfloat16 or torch.float32, got torch.float16"):
        dx.gemm.fp8_gemm_nt(a, sa, b, sb, torch.float16)
    cases = [(torch.ones(7, 144, dtype=torch.bfloat16), TypeError, r"c must have dtype in \(float32\)"),
             (torch.ones(7, 128), ValueError, r"c must have shape \(7, 144\), got \(7, 128\)"),
             (torch.ones(144, 7).T, ValueError, r"c must be contiguous"),
             (torch.ones(7, 144, device="meta"), ValueError, r"c is on meta but a is on cpu")]
    for c, error, message in cases:
        with pytest.raises(error, match=message):
            dx.gemm.fp8_gemm_nt(a, sa, b, sb, c=c)


def test_fp8_gemm_nt_rejects_misaligned_operand():
    a, sa, b, sb = dense_args(k=272)
    with pytest.raises(ValueError, match=r"a must start at a 16-byte aligned address"):
        dx.gemm.fp8_gemm_nt(misaligned_like(a), sa, b, sb)


def test_m_grouped_contiguous_rejects():
    a, sa, b, sb, m_indices = contiguous_args()
    cases = [
        ((a[:200].contiguous(), sa[:200], b, sb, m_indices[:200]), ValueError,
         r"a.shape\[0\] \(M_total\) must be a multiple of 128, got 200"),
        ((a, sa, b[0], sb, m_indices), ValueError, r"b must be 3-D"),
        ((a, sa, b, sb[:, :1].contiguous(), m_indices), ValueError, r"sb must have shape \(3, 2, 3\)"),
        ((a, row_major(sa), b, sb, m_indices), ValueError, r"sa must be stored M-major"),
        ((a, sa, b, sb, m_indices.long()), TypeError, r"m_indices must have dtype in \(int32\)"),
        ((a, sa, b, sb, m_indices[:128]), ValueError, r"m_indices must have shape \(256,\), got \(128,\)"),
        ((a, sa, b, sb, torch.where(m_indices == 2, 3, m_indices)), ValueError,
         r"m_indices values must be in \[-1, 2\], got min -1 and max 3"),
        ((a, sa, b, sb, torch.where(m_indices == 2, -2, m_indices)), ValueError,
         r"m_indices values must be in \[-1, 2\], got min -2 and max 0"),
        ((a, sa, b, sb, torch.where(torch.arange(256) == 120, 1, m_indices).int()), ValueError,
         r"m_indices must hold one group per 128-row block \(its rows first, then -1 padding\), got rows "
         r"0\.\.127 with groups \[-1, 0, 1\]"),
        ((a, sa, b, sb, m_indices.roll(1)), ValueError,  # a block starting with padding
         r"got rows 0\.\.127 with groups \[-1, 0\]"),
        ((a, sa, b, sb, torch.where(torch.arange(256) == 110, 0, m_indices).int()), ValueError,  # rows after padding
         r"got rows 0\.\.127 with groups \[-1, 0\]"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            dx.gemm.m_grouped_fp8_gemm_nt_contiguous(*args)


def test_m_grouped_masked_rejects():
    a, sa, b, sb, masked_m = masked_args()
    b_other, sb_other = per_block_cast_to_fp8(torch.randn(2, 48, 208))
    cases = [
        ((a[0], sa[0], b, sb, masked_m, 16), ValueError, r"a must be 3-D"),
        ((a, sa, b_other, sb_other, masked_m, 16), ValueError, r"b.shape\[0\] \(G\) must equal a.shape\[0\]=3, got 2"),
        ((a, row_major(sa), b, sb, masked_m, 16), ValueError, r"sa must be stored M-major"),
        ((a, sa, b, sb, masked_m[:2], 16), ValueError, r"masked_m must have shape \(3,\)"),
        ((a, sa, b, sb, masked_m.float(), 16), TypeError, r"masked_m must have dtype in \(int32\)"),
        ((a, sa, b, sb, masked_m, 0), ValueError, r"expected_m must be > 0, got 0"),
        ((a, sa, b, sb, masked_m, 2.0), TypeError, r"expected_m must be an int, got float"),
        ((a, sa, b, sb, masked_m + 1, 16), ValueError, r"masked_m values must be in \[0, 40\], got min 1 and max 41"),
        ((a, sa, b, sb, masked_m - 1, 16), ValueError, r"masked_m values must be in \[0, 40\], got min -1"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            dx.gemm.m_grouped_fp8_gemm_nt_masked(*args)


def test_k_grouped_rejects():
    a, sa, b, sb, sizes = k_grouped_args()
    c = torch.zeros(4, 48, 80)
    cases = [
        ((a, sa, b, sb, [128, 100, 284, 0]), ValueError,
         r"group_sizes\[1\] must be a non-negative multiple of 128, got 100"),
        ((a, sa, b, sb, [128, 128]), ValueError, r"group_sizes must sum to a.shape\[1\] \(T\)=512, got 256"),
        ((a, sa, b, sb, [128.0, 384.0]), TypeError, r"group_sizes must be a list of ints or a 1-D integer tensor"),
        ((a, sa, b, sb, torch.tensor([128.0, 384.0])), TypeError,
         r"group_sizes must have dtype in \(int32, int64\)"),
        ((a, sa, b[:, :384].contiguous(), sb, sizes), ValueError,
         r"b.shape\[-1\] \(T\) must equal a.shape\[-1\]=512"),
        ((a[:40].contiguous(), sa[:40], b, sb, sizes), ValueError,
         r"a.shape\[0\] \(N\) must be a multiple of 16, got 40"),
        ((a, sa, b[:40].contiguous(), sb[:40], sizes), ValueError,
         r"b.shape\[0\] \(K\) must be a multiple of 16, got 40"),
        ((a, row_major(sa), b, sb, sizes), ValueError, r"sa must be stored M-major"),
        ((a, sa, b, row_major(sb), sizes), ValueError, r"sb must be stored M-major"),
        ((a, sa, b, sb, sizes, c[:3]), ValueError, r"c must have shape \(4, 48, 80\), got \(3, 48, 80\)"),
        ((a, sa, b, sb, sizes, c.double()), TypeError, r"c must have dtype in \(float32\)"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            dx.gemm.k_grouped_fp8_gemm_tn_contiguous(*args)


def test_index_checks_skip_device_tensors_that_may_not_sync():
    on_device = torch.full((4,), 99, dtype=torch.int32, device="meta")  # reading it would raise
    ops_gemm._check_index_range(on_device, "m_indices", -1, 2, may_sync=False)
    with pytest.raises(ValueError, match=r"m_indices values must be in \[-1, 2\], got min 99"):
        ops_gemm._check_index_range(on_device.new_full((4,), 99, device="cpu"), "m_indices", -1, 2, may_sync=False)


# --- torch.library / torch.compile -----------------------------------------------------------

def op_cases():
    a, sa, b, sb = dense_args()
    yield torch.ops.deepseek_ext.fp8_gemm_nt.default, (a, sa, b, sb, torch.bfloat16, torch.randn(7, 144))
    a, sa, b, sb = dense_args(b_scaling="1x128")
    yield torch.ops.deepseek_ext.fp8_gemm_nt.default, (a, sa, b, sb, torch.float32, None)
    yield torch.ops.deepseek_ext.m_grouped_fp8_gemm_nt_contiguous.default, (*contiguous_args(), torch.bfloat16, True)
    a, sa, b, sb, _ = masked_args()
    every_row = torch.full((3,), 40, dtype=torch.int32)  # opcheck compares whole outputs
    masked_op_args = (a, sa, b, sb, every_row, 16, torch.float32, True)
    yield torch.ops.deepseek_ext.m_grouped_fp8_gemm_nt_masked.default, masked_op_args
    a, sa, b, sb, sizes = k_grouped_args()
    c = torch.randn(4, 48, 80)
    yield torch.ops.deepseek_ext.k_grouped_fp8_gemm_tn_contiguous.default, (a, sa, b, sb, sizes, c)


OP_CASES = list(op_cases())
OP_IDS = [f"{op._opname}-{i}" for i, (op, _) in enumerate(OP_CASES)]


@pytest.mark.parametrize("op, args", OP_CASES, ids=OP_IDS)
def test_opcheck(op, args):
    torch.library.opcheck(op, args, test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("op, args", OP_CASES, ids=OP_IDS)
def test_inputs_are_not_mutated(op, args):
    tensors = [t for t in args if isinstance(t, torch.Tensor)]
    before = [t.clone() for t in tensors]
    op(*args)
    for t, saved in zip(tensors, before):
        if t.dtype == torch.float8_e4m3fn:  # no CPU comparison kernels for float8: compare the bits
            t, saved = t.view(torch.uint8), saved.view(torch.uint8)
        assert torch.equal(t, saved)


def test_compile_fullgraph_matches_eager():
    a, sa, b, sb = dense_args()
    c = torch.randn(7, 144)
    compiled = torch.compile(dx.gemm.fp8_gemm_nt, fullgraph=True)
    assert torch.equal(compiled(a, sa, b, sb, torch.float32, c), dx.gemm.fp8_gemm_nt(a, sa, b, sb, torch.float32, c))
    args = contiguous_args()
    compiled = torch.compile(dx.gemm.m_grouped_fp8_gemm_nt_contiguous, fullgraph=True)
    assert torch.equal(compiled(*args), dx.gemm.m_grouped_fp8_gemm_nt_contiguous(*args))
    bad_indices = torch.where(args[-1] == 2, 7, args[-1])
    with pytest.raises(ValueError, match=r"m_indices values must be in \[-1, 2\]"):  # CPU: checked in the graph too
        compiled(*args[:-1], bad_indices)
    args = masked_args()
    compiled = torch.compile(dx.gemm.m_grouped_fp8_gemm_nt_masked, fullgraph=True)
    assert torch.equal(written_rows(compiled(*args, 16), args[-1]),
                       written_rows(dx.gemm.m_grouped_fp8_gemm_nt_masked(*args, 16), args[-1]))
    args = k_grouped_args()
    compiled = torch.compile(dx.gemm.k_grouped_fp8_gemm_tn_contiguous, fullgraph=True)
    assert torch.equal(compiled(*args), dx.gemm.k_grouped_fp8_gemm_tn_contiguous(*args))


# --- the kernel hook -------------------------------------------------------------------------

def test_kernel_branch_allocates_output_and_passes_c(monkeypatch):
    """With kernels available the op runs the kernel plan of _gemm_kernels, which launches into a
    fresh [M, N] out of out_dtype with c's address."""
    launched = []
    monkeypatch.setattr(_eager, "enabled", False)  # every call planned anew: no plan of another test's
    monkeypatch.setattr(ops_gemm, "uses_kernels", lambda t: True)
    monkeypatch.setattr(_launch, "launcher", lambda name, device: lambda *args: launched.append((name, args)))
    a, sa, b, sb = dense_args()
    c = torch.randn(7, 144)
    out = dx.gemm.fp8_gemm_nt(a, sa, b, sb, torch.float32, c=c)
    (name, args), = launched
    assert name == "fp8_gemm_nt" and out.shape == (7, 144) and out.dtype == torch.float32
    assert (args[0], args[2], args[4], args[6]) == tuple(t.data_ptr() for t in (a, sa, b, sb))
    assert (args[9], args[10], args[11], args[12:15]) == (out.data_ptr(), 1, c.data_ptr(), (7, 144, 272))


@pytest.mark.gpu
@pytest.mark.parametrize("m, n, k", [(1, 16, 16), (7, 144, 272), (200, 4096, 7168)])
@pytest.mark.parametrize("b_scaling", ["128x128", "1x128"])
@pytest.mark.parametrize("out_dtype, with_c", [(torch.bfloat16, True), (torch.float32, False)])
def test_fp8_gemm_nt_on_gpu_matches_reference(m, n, k, b_scaling, out_dtype, with_c):
    a, sa, b, sb = dense_args(m, n, k, b_scaling, device="cuda")
    c = torch.randn(m, n, device="cuda") if with_c else None
    expected = ref.fp8_gemm_nt(a.cpu(), sa.cpu(), b.cpu(), sb.cpu(), torch.float32, None if c is None else c.cpu())
    out = dx.gemm.fp8_gemm_nt(a, sa, b, sb, out_dtype, c=c)
    assert out.dtype == out_dtype and out.shape == (m, n)
    assert dx.gemm.calc_diff(out.cpu(), expected) < 1e-5


def test_grouped_kernel_branches_launch_with_fresh_outputs(monkeypatch):
    """With kernels available each grouped op launches its kernel into a fresh output with its index
    tensor's address (read by the kernel, not the host); k-grouped passes the group offsets as
    int32 in memory on a's device."""
    launched = {}

    def launcher(name, device):
        def launch(*args):
            launched[name] = args
            if name == "k_grouped_fp8_gemm_tn_contiguous":  # the offsets live as long as the call
                launched["k_offsets"] = list((ctypes.c_int32 * 5).from_address(args[6]))
        return launch

    monkeypatch.setattr(_eager, "enabled", False)  # every call planned anew: no plan of another test's
    monkeypatch.setattr(ops_gemm, "uses_kernels", lambda t: True)
    monkeypatch.setattr(_launch, "launcher", launcher)

    a, sa, b, sb, m_indices = contiguous_args()
    out = dx.gemm.m_grouped_fp8_gemm_nt_contiguous(a, sa, b, sb, m_indices.roll(1), torch.float32)  # bad: unread
    args = launched["m_grouped_fp8_gemm_nt_contiguous"]
    assert out.shape == (256, 144) and out.dtype == torch.float32
    assert (args[6], args[8:12]) == (out.data_ptr(), (256, 144, 272, 3))

    a, sa, b, sb, masked_m = masked_args()
    out = dx.gemm.m_grouped_fp8_gemm_nt_masked(a, sa, b, sb, masked_m + 100, 16)  # bad: unread
    args = launched["m_grouped_fp8_gemm_nt_masked"]
    assert out.shape == (3, 40, 48) and out.dtype == torch.bfloat16
    assert (args[6], args[8:13]) == (out.data_ptr(), (3, 40, 48, 208, 16))

    a, sa, b, sb, sizes = k_grouped_args()
    c = torch.randn(4, 48, 80)
    out = dx.gemm.k_grouped_fp8_gemm_tn_contiguous(a, sa, b, sb, sizes, c)
    args = launched["k_grouped_fp8_gemm_tn_contiguous"]
    assert launched["k_offsets"] == [0, 128, 128, 384, 512]
    assert (args[7], args[8], args[9:13]) == (out.data_ptr(), c.data_ptr(), (4, 48, 80, 512))


def test_zero_stride_empty_a_gives_empty_output():
    """Empty operands from numpy carry zero strides: no contiguity error, an empty [0, N] result."""
    a = torch.empty(0, dtype=torch.float8_e4m3fn).as_strided((0, 128), (0, 0))
    sa = torch.empty(0).as_strided((0, 1), (0, 0))
    b = torch.zeros(16, 128, dtype=torch.float8_e4m3fn)
    assert dx.gemm.fp8_gemm_nt(a, sa, b, torch.ones(1, 1)).shape == (0, 16)
    g_b = torch.zeros(2, 16, 128, dtype=torch.float8_e4m3fn)
    m_idx = torch.empty(0, dtype=torch.int32).as_strided((0,), (0,))
    assert dx.gemm.m_grouped_fp8_gemm_nt_contiguous(a, sa, g_b, torch.ones(2, 1, 1), m_idx).shape == (0, 16)
