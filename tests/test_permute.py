"""dx.gemm.permute_to_grouped / unpermute_from_grouped: the reference against loops written
here from the layout's definition and against dx.ep's expanded layout, the ops' validation,
torch.library registration, and (GPU, and the host emulation of the kernels through the kernel_device
fixture) the kernels bitwise against the reference."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import deepseek_ext as dx
from conftest import emulation_too_large
from deepseek_ext._backend import kernel_module
from deepseek_ext.reference import ep
from deepseek_ext.reference import permute as ref
from deepseek_ext.reference.quant import GROUP, ceil_div

OPCHECK_TESTS = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def routing(tokens, num_experts, topk, empty_fraction=0.2, device="cpu"):
    """Distinct experts per token, some slots -1."""
    idx = torch.rand(tokens, num_experts).argsort(dim=1)[:, :topk]
    idx[torch.rand(tokens, topk) < empty_fraction] = -1
    return idx.to(device)


ROUTINGS = {
    "random": lambda: routing(37, 6, 3),
    "empty experts": lambda: routing(20, 9, 2).clamp(max=3),  # experts 4..8 get nothing
    "one token per expert": lambda: torch.tensor([[0, -1], [1, 2], [-1, 3]]),
    "all in one expert": lambda: torch.full((50, 1), 2),
    "no tokens": lambda: torch.zeros(0, 2, dtype=torch.int64),
    "all slots empty": lambda: torch.full((5, 2), -1),
}


def expected_layout(topk_idx, num_experts, alignment):
    """(row_token, row_slot, experts) lists: experts ascending, tokens ascending, -1 padding."""
    tokens, slots, experts = [], [], []
    for e in range(num_experts):
        pairs = [(t, j) for t, row in enumerate(topk_idx.tolist()) for j, x in enumerate(row) if x == e]
        pad = -len(pairs) % alignment
        tokens += [t for t, _ in pairs] + [-1] * pad
        slots += [j for _, j in pairs] + [-1] * pad
        experts += [e] * len(pairs) + [-1] * pad
    return tokens, slots, experts


@pytest.mark.parametrize("name", ROUTINGS)
@pytest.mark.parametrize("alignment", [1, 4, 128])
def test_layout_matches_definition(name, alignment):
    topk_idx = ROUTINGS[name]()
    num_experts = 9
    layout = ref.grouped_layout(topk_idx, num_experts, alignment)
    tokens, slots, experts = expected_layout(topk_idx, num_experts, alignment)
    assert layout.row_token.tolist() == tokens and layout.row_slot.tolist() == slots
    assert layout.m_indices.dtype == torch.int32 and layout.m_indices.tolist() == experts
    assert sum(layout.counts) == len(tokens) and all(c % alignment == 0 for c in layout.counts)
    assert layout.inverse_map.shape == topk_idx.shape and layout.inverse_map.dtype == torch.int32
    for t, row in enumerate(topk_idx.tolist()):
        for j, e in enumerate(row):
            r = int(layout.inverse_map[t, j])
            assert (r == -1) if e < 0 else (tokens[r] == t and slots[r] == j and experts[r] == e)


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
@pytest.mark.parametrize("name", ["random", "empty experts", "all in one expert", "no tokens"])
def test_permute_equals_single_rank_ep_dispatch(fp8, name):
    topk_idx = ROUTINGS[name]()
    num_experts, hidden = 9, 272
    x = torch.randn(topk_idx.shape[0], hidden).bfloat16()
    weights = torch.rand(topk_idx.shape)
    inputs = dx.quant.per_token_cast_to_fp8(x) if fp8 else x
    x_in, s_in = inputs if fp8 else (x, None)
    rows, scales, m_indices, inverse_map = dx.gemm.permute_to_grouped(x_in, s_in, topk_idx, num_experts, 128)
    (dispatched,) = ep.dispatch([inputs], [topk_idx], [weights], num_experts, expert_alignment=128)
    assert torch.equal(rows.view(torch.uint8) if fp8 else rows,
                       dispatched.x.view(torch.uint8) if fp8 else dispatched.x)
    assert torch.equal(m_indices, dispatched.m_indices)
    if fp8:
        assert torch.equal(scales, dispatched.x_scales) and scales.stride(0) == 1
    else:
        assert scales is None and dispatched.x_scales is None
    assert inverse_map.shape == topk_idx.shape


def test_permute_rows_copy_tokens_and_pad_with_zeros():
    topk_idx = ROUTINGS["random"]()
    x, s = dx.quant.per_token_cast_to_fp8(torch.randn(37, 304).bfloat16() * 3)
    rows, scales, m_indices, inverse_map = dx.gemm.permute_to_grouped(x, s, topk_idx, 6, alignment=16)
    tokens, _, _ = expected_layout(topk_idx, 6, 16)
    for r, t in enumerate(tokens):
        want = x[t].view(torch.uint8) if t >= 0 else torch.zeros(304, dtype=torch.uint8)
        assert torch.equal(rows[r].view(torch.uint8), want)
        assert torch.equal(scales[r], s[t] if t >= 0 else torch.zeros(ceil_div(304, GROUP)))


def unpermute_by_loops(y, inverse_map, weights):
    out = torch.zeros(inverse_map.shape[0], y.shape[1], dtype=torch.float32)
    for t in range(inverse_map.shape[0]):
        for j in range(inverse_map.shape[1]):
            r = int(inverse_map[t, j])
            if r >= 0:
                out[t] = out[t] + y[r].float() * weights[t, j]
    return out.bfloat16()


@pytest.mark.parametrize("name", ROUTINGS)
@pytest.mark.parametrize("y_dtype", [torch.bfloat16, torch.float32])
def test_unpermute_fixed_order_sum(name, y_dtype):
    topk_idx = ROUTINGS[name]()
    _, _, _, inverse_map = ref.permute_to_grouped(torch.randn(topk_idx.shape[0], 64).bfloat16(), None, topk_idx, 9, 8)
    rows = int(inverse_map.max()) + 1 if inverse_map.numel() else 0
    y = (torch.randn(rows + 3, 64) * 10).to(y_dtype)
    weights = torch.rand(topk_idx.shape)
    out = dx.gemm.unpermute_from_grouped(y, inverse_map, weights)
    assert out.dtype == torch.bfloat16 and out.shape == (topk_idx.shape[0], 64)
    assert torch.equal(out, unpermute_by_loops(y, inverse_map, weights))


def test_permute_then_unpermute_is_weighted_moe_of_identity_experts():
    topk_idx = ROUTINGS["random"]()
    x = torch.randn(37, 128).bfloat16()
    weights = torch.rand(topk_idx.shape)
    rows, _, _, inverse_map = dx.gemm.permute_to_grouped(x, None, topk_idx, 6)
    out = dx.gemm.unpermute_from_grouped(rows, inverse_map, weights)
    expected = (x.float() * torch.where(topk_idx >= 0, weights, 0.0).sum(1, keepdim=True)).bfloat16()
    torch.testing.assert_close(out, expected, atol=0, rtol=2 ** -7)


def test_non_contiguous_routing_and_int32_ids():
    topk_idx = ROUTINGS["random"]()
    x = torch.randn(37, 64).bfloat16()
    wide = torch.full((37, 6), 5, dtype=torch.int32)
    wide[:, ::2] = topk_idx.int()
    got = dx.gemm.permute_to_grouped(x, None, wide[:, ::2], 6)
    want = ref.permute_to_grouped(x, None, topk_idx, 6, 128)
    for g, w in zip(got, want):
        assert (g is None and w is None) or torch.equal(g, w)


def test_permute_rejects():
    x = torch.randn(8, 256).bfloat16()
    q, s = dx.quant.per_token_cast_to_fp8(x)
    idx = routing(8, 4, 2)
    cases = [
        ((x.float(), None, idx, 4), TypeError, r"x must have dtype in \(bfloat16, float8_e4m3fn\), got float32"),
        ((x[0], None, idx, 4), ValueError, r"x must be 2-D"),
        ((x[:, ::2], None, idx, 4), ValueError, r"x must be contiguous"),
        ((x[:, :4].contiguous(), None, idx, 4), ValueError,
         r"x.shape\[1\] \* element size \(bytes\) must be a multiple of 16, got 8"),
        ((q, None, idx, 4), ValueError, r"x_scales is required when x is float8_e4m3fn"),
        ((x, s, idx, 4), ValueError, r"x_scales must be None when x is bfloat16"),
        ((q, s.contiguous(), idx, 4), ValueError, r"x_scales must be stored M-major"),
        ((q, s[:4], idx, 4), ValueError, r"x_scales must have shape \(8, 2\), got \(4, 2\)"),
        ((x, None, idx.float(), 4), TypeError, r"topk_idx must have dtype in \(int64, int32\)"),
        ((x, None, idx[:, 0], 4), ValueError, r"topk_idx must be 2-D"),
        ((x, None, idx[:5], 4), ValueError, r"topk_idx.shape\[0\] must equal x.shape\[0\]=8, got 5"),
        ((x, None, idx, 0), ValueError, r"num_experts must be in \[1, \d+\], got 0"),
        ((x, None, idx, 4.0), TypeError, r"num_experts must be an int, got float"),
        ((x, None, idx, 3), ValueError, r"topk_idx values must be in \[-1, 2\], got min -?\d+ and max 3"),
        ((x, None, idx - 1, 4), ValueError, r"topk_idx values must be in \[-1, 3\], got min -2"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            dx.gemm.permute_to_grouped(*args)
    with pytest.raises(ValueError, match=r"alignment must be in \[1, \d+\], got 0"):
        dx.gemm.permute_to_grouped(x, None, idx, 4, alignment=0)
    with pytest.raises(TypeError, match=r"alignment must be an int, got bool"):
        dx.gemm.permute_to_grouped(x, None, idx, 4, alignment=True)


def test_unpermute_rejects():
    idx = routing(8, 4, 2)
    y, _, _, inv = ref.permute_to_grouped(torch.randn(8, 64).bfloat16(), None, idx, 4, 4)
    w = torch.rand(8, 2)
    cases = [
        ((y.half(), inv, w), TypeError, r"y must have dtype in \(bfloat16, float32\), got float16"),
        ((y[0], inv, w), ValueError, r"y must be 2-D"),
        ((y[:, ::2], inv, w), ValueError, r"y must be contiguous"),
        ((y[:, :12].contiguous(), inv, w), ValueError, r"y.shape\[1\] \(H\) must be a multiple of 8, got 12"),
        ((y, inv.long(), w), TypeError, r"inverse_map must have dtype in \(int32\)"),
        ((y, inv.t(), w.t()), ValueError, r"inverse_map must be contiguous"),
        ((y, inv, w.double()), TypeError, r"topk_weights must have dtype in \(float32\)"),
        ((y, inv, w[:4]), ValueError, r"topk_weights must have shape \(8, 2\), got \(4, 2\)"),
        ((y, inv, w.t().contiguous().t()), ValueError, r"topk_weights must be contiguous"),
        ((y, inv + y.shape[0], w), ValueError, rf"inverse_map values must be in \[-1, {y.shape[0] - 1}\]"),
        ((y, inv - 1, w), ValueError, r"inverse_map values must be in \[-1, \d+\], got min -2"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            dx.gemm.unpermute_from_grouped(*args)


def op_cases():
    idx = routing(9, 5, 3)
    x = torch.randn(9, 256).bfloat16()
    q, s = dx.quant.per_token_cast_to_fp8(x)
    no_scales = torch.empty(0, 9).t()
    yield torch.ops.deepseek_ext.permute_to_grouped.default, (x, no_scales, idx, 5, 8)
    yield torch.ops.deepseek_ext.permute_to_grouped.default, (q, s, idx, 5, 128)
    _, _, _, inv = ref.permute_to_grouped(x, None, idx, 5, 8)
    y = torch.randn(int(inv.max()) + 1, 256)
    yield torch.ops.deepseek_ext.unpermute_from_grouped.default, (y, inv, torch.rand(9, 3), True)


@pytest.mark.parametrize("op, args", list(op_cases()), ids=["permute-bf16", "permute-fp8", "unpermute"])
def test_opcheck(op, args):
    torch.library.opcheck(op, args, test_utils=OPCHECK_TESTS)


def test_compile_fullgraph_matches_eager():
    idx = routing(21, 5, 2)
    q, s = dx.quant.per_token_cast_to_fp8(torch.randn(21, 256))
    weights = torch.rand(21, 2)

    def moe_glue(q, s, idx, weights):
        rows, scales, m_indices, inverse_map = dx.gemm.permute_to_grouped(q, s, idx, 5, 16)
        y = rows.float() * scales.repeat_interleave(GROUP, dim=1)
        return dx.gemm.unpermute_from_grouped(y, inverse_map, weights), m_indices

    compiled = torch.compile(moe_glue, fullgraph=True)
    for got, want in zip(compiled(q, s, idx, weights), moe_glue(q, s, idx, weights)):
        assert torch.equal(got, want)


# --- GPU and emulation: kernels bitwise against the reference ----------------------------------

GPU_ROUTINGS = [(4096, 64, 8, 0.0), (1000, 9, 3, 0.3), (1, 4, 2, 0.0), (300, 3, 1, 0.0), (64, 16, 4, 1.0)]


def assert_permute_bitwise(kernel_device, tokens, num_experts, topk, empty, hidden, fp8, alignment):
    idx = routing(tokens, num_experts, topk, empty, device=kernel_device)
    x = torch.randn(tokens, hidden, device=kernel_device).bfloat16()
    q, s = dx.quant.per_token_cast_to_fp8(x) if fp8 else (x, None)
    got = dx.gemm.permute_to_grouped(q, s, idx, num_experts, alignment)
    want = ref.permute_to_grouped(q.cpu(), None if s is None else s.cpu(), idx.cpu(), num_experts, alignment)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
            continue
        g = g.cpu()
        assert g.shape == w.shape and g.dtype == w.dtype
        if g.dtype == torch.float8_e4m3fn:
            g, w = g.view(torch.uint8), w.view(torch.uint8)
        assert torch.equal(g, w)


@pytest.mark.gpu
@pytest.mark.parametrize("tokens, num_experts, topk, empty", GPU_ROUTINGS)
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
@pytest.mark.parametrize("alignment", [1, 128])
def test_gpu_permute_bitwise(kernel_device, tokens, num_experts, topk, empty, fp8, alignment):
    hidden = 7168 if tokens > 1000 else 272
    emulation_too_large(kernel_device, tokens * topk * hidden)  # work: elements of the routed rows copied
    assert_permute_bitwise(kernel_device, tokens, num_experts, topk, empty, hidden, fp8, alignment)


# The layout kernels count and place pairs in chunks of PERMUTE_CHUNK_PAIRS (1024) pairs.
LAYOUT_CASES = {
    "256 experts top-8, 3 chunks": (300, 256, 8, 0.1, 16, False, 128),
    "256 experts top-8, no padding": (300, 256, 8, 0.1, 16, False, 1),
    "2 experts, 5 chunks of repeats": (2500, 2, 2, 0.5, 16, False, 3),
    "one pair past a chunk, 10 scale columns": (1025, 4, 1, 0.0, 1168, True, 4),
    "2000 experts, counters above 48 KB": (700, 2000, 4, 0.2, 16, False, 4),
}


@pytest.mark.gpu
@pytest.mark.parametrize("case", LAYOUT_CASES)
def test_gpu_permute_layout_chunks_and_many_experts(kernel_device, case):
    assert_permute_bitwise(kernel_device, *LAYOUT_CASES[case])


@pytest.mark.gpu
def test_gpu_permute_beyond_kernel_experts_matches_reference(kernel_device):
    num_experts = kernel_module(torch.device(kernel_device)).PERMUTE_MAX_EXPERTS + 1
    assert_permute_bitwise(kernel_device, 50, num_experts, 2, 0.1, 16, False, 1)


@pytest.mark.gpu
def test_gpu_permute_rejects_out_of_range_ids(kernel_device):
    idx = routing(100, 8, 2, device=kernel_device)
    idx[17, 1] = 8
    with pytest.raises(ValueError, match=r"topk_idx values must be in \[-1, 7\], got min -1 and max 8"):
        dx.gemm.permute_to_grouped(torch.randn(100, 64, device=kernel_device).bfloat16(), None, idx, 8)


@pytest.mark.gpu
@pytest.mark.parametrize("tokens, num_experts, topk, empty", GPU_ROUTINGS)
@pytest.mark.parametrize("y_dtype", [torch.bfloat16, torch.float32])
def test_gpu_unpermute_bitwise(kernel_device, tokens, num_experts, topk, empty, y_dtype):
    # 2056 and 8200: not multiples of a CTA's span of 8-element chunks; 8200 takes two passes.
    hidden = {4096: 7168, 300: 8200}.get(tokens, 2056)
    # multiply-adds; the 1000-token routing (slots with and without an expert) runs under emulation (about 1 s)
    emulation_too_large(kernel_device, tokens * topk * hidden, limit=1 << 23)
    idx = routing(tokens, num_experts, topk, empty, device=kernel_device)
    _, _, _, inv = dx.gemm.permute_to_grouped(torch.zeros(tokens, 64, device=kernel_device).bfloat16(), None, idx,
                                              num_experts, 128)
    rows = int(inv.max()) + 1 if inv.numel() else 0
    y = (torch.randn(rows, hidden, device=kernel_device) * 4).to(y_dtype)
    weights = torch.rand(tokens, topk, device=kernel_device)
    got = dx.gemm.unpermute_from_grouped(y, inv, weights)
    assert torch.equal(got.cpu(), ref.unpermute_from_grouped(y.cpu(), inv.cpu(), weights.cpu()))


def _bad_inverse_map_call(device: str, value: int):
    """unpermute_from_grouped with inverse_map[3, 1] = value (y has 40 rows)."""
    inv = torch.arange(16, dtype=torch.int32, device=device).view(8, 2)
    inv[3, 1] = value
    return lambda: dx.gemm.unpermute_from_grouped(torch.randn(40, 64, device=device).bfloat16(), inv,
                                                  torch.rand(8, 2, device=device))


@pytest.mark.gpu
@pytest.mark.parametrize("value", [40, -2])
def test_gpu_unpermute_fails_on_a_bad_inverse_map_value_naming_it(kernel_device, value):
    """The host reads no inverse_map value on the kernel path; the kernel checks each (a GPU trap
    ends the CUDA context, so there the call runs in a process of its own)."""
    message = rf"inverse_map\[7\] = {value} is outside \[-1, 39\]"
    if kernel_device == "cuda":
        script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import torch; "
                  f"import test_permute as t; t._bad_inverse_map_call('cuda', {value})(); torch.cuda.synchronize()")
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        assert result.returncode != 0 and re.search(message, result.stdout + result.stderr), result.stderr
        return
    with pytest.raises(RuntimeError, match=r"unpermute failed: .*" + message):
        _bad_inverse_map_call("cpu", value)()
    _bad_inverse_map_call("cpu", 5)()  # the emulator runs on


@pytest.mark.gpu
def test_gpu_unpermute_is_graph_capturable():
    idx = routing(256, 8, 4, device="cuda")
    _, _, _, inv = dx.gemm.permute_to_grouped(torch.zeros(256, 64, device="cuda").bfloat16(), None, idx, 8)
    y = torch.randn(int(inv.max()) + 1, 512, device="cuda").bfloat16()
    weights = torch.rand(256, 4, device="cuda")
    dx.gemm.unpermute_from_grouped(y, inv, weights)  # warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = dx.gemm.unpermute_from_grouped(y, inv, weights)
    y.mul_(2)
    graph.replay()
    assert torch.equal(out.cpu(), ref.unpermute_from_grouped(y.cpu(), inv.cpu(), weights.cpu()))


# --- size bounds shared by the reference and kernel paths ------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(alignment=2**31), r"alignment must be in \[1, 2147483647\]"),
    (dict(alignment=2**30), r"output rows .* must be <= 2147483647"),
    (dict(num_experts=2**40), r"num_experts must be in \[1, 1048576\]"),
])
def test_size_bounds_raise_before_allocating(kwargs, match, monkeypatch):
    monkeypatch.setenv("DEEPSEEK_EXT_BACKEND", "reference")
    x = torch.zeros(2, 128, dtype=torch.bfloat16)
    args = dict(num_experts=4, alignment=128) | kwargs
    with pytest.raises(ValueError, match=match):
        dx.gemm.permute_to_grouped(x, None, torch.tensor([[0], [1]]), args["num_experts"], args["alignment"])


@pytest.mark.parametrize("name, value", [("num_experts", True), ("num_experts", 4.0), ("alignment", "128")])
def test_permute_int_arguments_are_named(name, value):
    args = dict(num_experts=4, alignment=128) | {name: value}
    with pytest.raises(TypeError, match=f"{name} must be an int"):
        dx.gemm.permute_to_grouped(torch.zeros(2, 128, dtype=torch.bfloat16), None, torch.tensor([[0], [1]]),
                                   args["num_experts"], args["alignment"])


def test_zero_stride_empty_permute_round_trip():
    x = torch.empty(0, dtype=torch.bfloat16).as_strided((0, 128), (0, 0))
    idx = torch.empty(0, dtype=torch.int64).as_strided((0, 2), (0, 0))
    out, scales, m_indices, inverse_map = dx.gemm.permute_to_grouped(x, None, idx, 4)
    assert out.shape == (0, 128) and scales is None and m_indices.shape == (0,) and inverse_map.shape == (0, 2)
    w = torch.empty(0).as_strided((0, 2), (0, 0))
    assert dx.gemm.unpermute_from_grouped(out, inverse_map, w).shape == (0, 128)
