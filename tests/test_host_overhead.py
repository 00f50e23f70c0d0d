"""The ops' eager route (deepseek_ext/ops/_eager.py): the same results as the torch.library route,
torch.compile still traces the custom ops, and validation cached per argument signature still
rejects every bad input. Timings are a benchmark (bench/host_overhead.py), never asserted here."""
import contextlib
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode

import deepseek_ext as dx
from deepseek_ext import _backend
from deepseek_ext.ops import _eager, _launch
from deepseek_ext.ops import gemm as ops_gemm
from deepseek_ext.reference.quant import per_block_cast_to_fp8, per_token_cast_to_fp8_with_transpose

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import host_overhead  # noqa: E402
from report import OURS  # noqa: E402


def misaligned_like(t):
    """Same shape, strides, dtype and values, starting one element past a 16-byte boundary."""
    shifted = torch.empty(t.numel() + 1, dtype=t.dtype)[1:].view(t.shape)
    return shifted.copy_(t)


def bits(t):
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


def dense_args(m=7, n=144, k=272):
    a, sa = dx.quant.per_token_cast_to_fp8(torch.randn(m, k))
    b, sb = per_block_cast_to_fp8(torch.randn(n, k))
    return a, sa, b, sb


def contiguous_args():
    m_indices = torch.full((256,), -1, dtype=torch.int32)
    m_indices[:100], m_indices[128:129] = 0, 2
    a, sa = dx.quant.per_token_cast_to_fp8(torch.randn(256, 144))
    b, sb = per_block_cast_to_fp8(torch.randn(3, 48, 144))
    return a, sa, b, sb, m_indices


def calls():
    """name -> a call of every op on CPU inputs made once."""
    x = torch.randn(32, 272)
    a, sa, b, sb = dense_args()
    c, grouped, weights = torch.randn(7, 144), contiguous_args(), torch.rand(9, 3)
    g_a, g_sa = dx.quant.per_token_cast_to_fp8(torch.randn(3, 40, 144))
    g_b, g_sb = per_block_cast_to_fp8(torch.randn(3, 48, 144))
    masked_m = torch.tensor([40, 40, 40], dtype=torch.int32)  # every row written: whole outputs compare
    _, _, dy_t, dy_st = per_token_cast_to_fp8_with_transpose(torch.randn(512, 48))
    _, _, x_t, x_st = per_token_cast_to_fp8_with_transpose(torch.randn(512, 80))
    topk_idx = torch.randint(-1, 5, (9, 3))
    tokens, token_scales = dx.quant.per_token_cast_to_fp8(torch.randn(9, 256))
    _, _, _, inverse_map = dx.gemm.permute_to_grouped(torch.randn(9, 256).bfloat16(), None, topk_idx, 5, 8)
    y = torch.randn(int(inverse_map.max()) + 1, 256)
    return {
        "fp8_gemm_nt": lambda: dx.gemm.fp8_gemm_nt(a, sa, b, sb, torch.float32, c),
        "m_grouped_contiguous": lambda: dx.gemm.m_grouped_fp8_gemm_nt_contiguous(*grouped),
        "m_grouped_masked": lambda: dx.gemm.m_grouped_fp8_gemm_nt_masked(g_a, g_sa, g_b, g_sb, masked_m, 16),
        "k_grouped": lambda: dx.gemm.k_grouped_fp8_gemm_tn_contiguous(dy_t, dy_st, x_t, x_st, [128, 0, 384]),
        "per_token": lambda: dx.quant.per_token_cast_to_fp8(x, True),
        "per_block": lambda: dx.quant.per_block_cast_to_fp8(x),
        "with_transpose": lambda: dx.quant.per_token_cast_to_fp8_with_transpose(x),
        "swiglu": lambda: dx.quant.swiglu_cast_to_fp8(x[:, :256]),
        "transpose_block": lambda: dx.quant.transpose_block_fp8(b, sb),
        "dequantize": lambda: dx.quant.dequantize(a, sa, out_dtype=torch.bfloat16),
        "permute": lambda: dx.gemm.permute_to_grouped(tokens, token_scales, topk_idx, 5),
        "unpermute": lambda: dx.gemm.unpermute_from_grouped(y, inverse_map, weights),
    }


def assert_same(got, want):
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    for g, w in zip(got, want, strict=True):
        if w is None:
            assert g is None
            continue
        assert g.shape == w.shape and g.stride() == w.stride() and g.dtype == w.dtype
        assert torch.equal(bits(g), bits(w))


# --- (a) the eager route and the torch.library route agree -----------------------------------

@pytest.mark.parametrize("name", list(calls()))
def test_eager_route_matches_the_dispatcher_route(name, monkeypatch):
    call = calls()[name]
    eager = call()
    monkeypatch.setattr(_eager, "enabled", False)
    assert_same(eager, call())


@pytest.mark.parametrize("name", ["fp8_gemm_nt", "per_token", "dequantize"])
def test_eager_route_matches_the_dispatcher_route_on_the_kernel_path(name, monkeypatch):
    if not dx.has_emulation():
        pytest.skip("needs the emulation module deepseek_ext._emu")
    monkeypatch.setenv("DEEPSEEK_EXT_BACKEND", "emulate")
    call = calls()[name]
    eager = call()
    monkeypatch.setattr(_eager, "enabled", False)
    assert_same(eager, call())


def test_eager_calls_skip_the_dispatcher_and_plan_a_signature_once(monkeypatch):
    op = ops_gemm._FP8_GEMM_NT
    checked, planned = [], []
    monkeypatch.setattr(op, "dispatch", lambda *args: pytest.fail("an eager call went through torch.library"))
    monkeypatch.setattr(op, "check", lambda *args: checked.append(args) or ops_gemm._check_fp8_gemm_nt(*args))
    monkeypatch.setattr(op, "plan", lambda *args: planned.append(args) or ops_gemm._plan_fp8_gemm_nt(*args))
    monkeypatch.setattr(op, "_runs", {})
    a, sa, b, sb = dense_args()
    for _ in range(3):
        dx.gemm.fp8_gemm_nt(a, sa, b, sb)
    dx.gemm.fp8_gemm_nt(*dense_args())  # new tensors, same signature
    assert len(checked) == len(planned) == 1
    dx.gemm.fp8_gemm_nt(a, sa, b, sb, torch.float32)
    dx.gemm.fp8_gemm_nt(*dense_args(m=9))
    assert len(checked) == len(planned) == 3


def test_a_signature_holds_every_property_validation_reads(monkeypatch):
    """Each variation of a validated call is a new signature: validated (and rejected) anew."""
    op = ops_gemm._FP8_GEMM_NT
    checked = []
    monkeypatch.setattr(op, "check", lambda *args: checked.append(args) or ops_gemm._check_fp8_gemm_nt(*args))
    monkeypatch.setattr(op, "_runs", {})
    a, sa, b, sb = dense_args()
    dx.gemm.fp8_gemm_nt(a, sa, b, sb)
    variants = [
        (a, sa, b, sb.clone().requires_grad_()),  # requires_grad (grad mode on: the dispatcher route)
        (a, sa.contiguous(), b, sb),  # strides
        (a, sa, b, sb.double()),  # dtype
        (a, sa, b, sb.to("meta")),  # device
        (a, sa, b[:128], sb),  # shape
    ]
    for args in variants:
        with contextlib.suppress(ValueError, TypeError, RuntimeError):
            dx.gemm.fp8_gemm_nt(*args)
    assert len(checked) == 1 + len(variants)
    resized = b.clone()
    dx.gemm.fp8_gemm_nt(a, sa, resized, sb)
    resized.resize_(128, b.shape[1])  # the same tensor object with other metadata: its signature changes
    with pytest.raises(ValueError, match=r"sb must have shape"):
        dx.gemm.fp8_gemm_nt(a, sa, resized, sb)


def test_a_signature_tells_bool_from_int_and_falls_back_on_other_types():
    x = torch.randn(4, 256)
    dx.quant.per_token_cast_to_fp8(x, True)
    with pytest.raises(TypeError, match=r"pow2_scale must be a bool, got int"):  # 1 == True, but not its type
        dx.quant.per_token_cast_to_fp8(x, 1)
    with pytest.raises(TypeError, match=r"pow2_scale must be a bool, got float"):
        dx.quant.per_token_cast_to_fp8(x, 1.0)
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got ndarray"):
        dx.quant.per_token_cast_to_fp8(x.numpy())
    a, sa, b, sb = dense_args()
    with pytest.raises(TypeError, match=r"out_dtype must be torch.bfloat16 or torch.float32, got \[\]"):
        dx.gemm.fp8_gemm_nt(a, sa, b, sb, [])  # unhashable


def test_plans_follow_the_backend_and_the_kernel_modules(monkeypatch):
    if not dx.has_emulation():
        pytest.skip("needs the emulation module deepseek_ext._emu")
    a, sa, b, sb = dense_args()
    reference = dx.gemm.fp8_gemm_nt(a, sa, b, sb)
    monkeypatch.setenv("DEEPSEEK_EXT_BACKEND", "emulate")
    launched = []
    stub = types.SimpleNamespace(fp8_gemm_nt=lambda *args: launched.append(args) or "")
    with monkeypatch.context() as patch:
        patch.setattr(_backend, "_emu", stub)
        dx.gemm.fp8_gemm_nt(a, sa, b, sb)
    assert len(launched) == 1  # the kernel path, on the module in place
    assert torch.equal(dx.gemm.fp8_gemm_nt(a, sa, b, sb), reference)  # the real emulator again: a new plan
    assert len(launched) == 1
    monkeypatch.setattr(_backend, "_emu", None)
    with pytest.raises(RuntimeError, match="DEEPSEEK_EXT_BACKEND=emulate but deepseek_ext._emu was not built"):
        dx.gemm.fp8_gemm_nt(a, sa, b, sb)


def test_signature_memory_is_bounded(monkeypatch):
    monkeypatch.setattr(_eager, "_MAX_SIGNATURES", 4)
    op = _eager.EagerOp(lambda x: None, lambda x: (_eager.tensor_key(x),), lambda x: (lambda x: x), lambda x: x)
    for n in range(1, 10):
        op(torch.empty(n))
        assert 1 <= len(op._runs) <= 4


def test_tracing_modes_profiling_and_autograd_take_the_dispatcher_route():
    a, sa, b, sb = dense_args()

    class Recorder(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.seen.append(func)
            return func(*args, **(kwargs or {}))

    with Recorder() as recorder:
        dx.gemm.fp8_gemm_nt(a, sa, b, sb)
    assert torch.ops.deepseek_ext.fp8_gemm_nt in recorder.seen
    with torch.profiler.profile() as profile:
        dx.gemm.fp8_gemm_nt(a, sa, b, sb)
    assert "deepseek_ext::fp8_gemm_nt" in {event.key for event in profile.key_averages()}
    with FakeTensorMode() as mode:
        fake = dx.gemm.fp8_gemm_nt(*(mode.from_tensor(t) for t in (a, sa, b, sb)))
    assert fake.shape == (7, 144) and fake.dtype == torch.bfloat16
    x = torch.randn(4, 128, requires_grad=True)
    _, s = dx.quant.per_token_cast_to_fp8(x)
    with pytest.raises(RuntimeError, match="no autograd formula"):  # as before: the ops are not differentiable
        s.sum().backward()
    with torch.no_grad():
        _, s = dx.quant.per_token_cast_to_fp8(x)
    assert s.grad_fn is None


# --- (b) torch.compile traces the custom ops -------------------------------------------------

def test_compile_fullgraph_quantize_then_gemm_matches_eager(reference_backend):
    b, sb = per_block_cast_to_fp8(torch.randn(144, 272))

    def layer(x):
        q, s = dx.quant.per_token_cast_to_fp8(x)
        return dx.gemm.fp8_gemm_nt(q, s, b, sb)

    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x = torch.randn(7, 272)
    assert torch.equal(torch.compile(layer, fullgraph=True)(x), layer(x))
    torch.compile(layer, fullgraph=True, backend=recording_backend)(x)
    targets = {node.target for node in graphs[0].graph.nodes if node.op == "call_function"}
    assert {torch.ops.deepseek_ext.per_token_cast_to_fp8, torch.ops.deepseek_ext.fp8_gemm_nt} <= targets


# --- (c) cached validation still rejects every bad input -------------------------------------

def test_cached_gemm_signature_still_rejects_other_signatures_and_addresses():
    a, sa, b, sb = dense_args()
    dx.gemm.fp8_gemm_nt(a, sa, b, sb)  # this signature is now cached
    cases = [
        ((misaligned_like(a), sa, b, sb), ValueError, r"a must start at a 16-byte aligned address"),
        ((a, sa, misaligned_like(b), sb), ValueError, r"b must start at a 16-byte aligned address"),
        ((a, sa.contiguous(), b, sb), ValueError, r"sa must be stored M-major"),
        ((a, sa, b.t().contiguous().t(), sb), ValueError, r"b must be contiguous"),
        ((a, sa, b.view(torch.uint8), sb), TypeError, r"b must have dtype in \(float8_e4m3fn\)"),
        ((a, sa, b, sb, torch.float16), TypeError, r"out_dtype must be torch.bfloat16 or torch.float32"),
        ((a, sa, b, sb.to("meta")), ValueError, r"sb is on meta but a is on cpu"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            dx.gemm.fp8_gemm_nt(*args)
    dx.gemm.fp8_gemm_nt(a, sa, b, sb)  # and the good call still runs


def test_cached_grouped_signatures_still_check_index_values():
    args = contiguous_args()
    dx.gemm.m_grouped_fp8_gemm_nt_contiguous(*args)
    m_indices = args[-1]
    with pytest.raises(ValueError, match=r"m_indices values must be in \[-1, 2\], got min -1 and max 3"):
        dx.gemm.m_grouped_fp8_gemm_nt_contiguous(*args[:-1], torch.where(m_indices == 2, 3, m_indices))
    mixed = m_indices.clone()
    mixed[5] = 1
    with pytest.raises(ValueError, match=r"m_indices must hold one group per 128-row block"):
        dx.gemm.m_grouped_fp8_gemm_nt_contiguous(*args[:-1], mixed)
    _, _, dy_t, dy_st = per_token_cast_to_fp8_with_transpose(torch.randn(512, 48))
    _, _, x_t, x_st = per_token_cast_to_fp8_with_transpose(torch.randn(512, 80))
    dx.gemm.k_grouped_fp8_gemm_tn_contiguous(dy_t, dy_st, x_t, x_st, [128, 0, 384])
    with pytest.raises(ValueError, match=r"group_sizes\[0\] must be a non-negative multiple of 128, got 64"):
        dx.gemm.k_grouped_fp8_gemm_tn_contiguous(dy_t, dy_st, x_t, x_st, [64, 64, 384])
    with pytest.raises(TypeError, match=r"group_sizes must be a list of ints"):
        dx.gemm.k_grouped_fp8_gemm_tn_contiguous(dy_t, dy_st, x_t, x_st, [128, False, 384])


def test_cached_quant_signature_still_rejects_other_scalars_and_addresses():
    x = torch.randn(4, 256)
    dx.quant.per_token_cast_to_fp8(x, True)
    with pytest.raises(TypeError, match=r"pow2_scale must be a bool, got int"):
        dx.quant.per_token_cast_to_fp8(x, 1)
    with pytest.raises(ValueError, match=r"x must start at a 16-byte aligned address"):
        dx.quant.per_token_cast_to_fp8(misaligned_like(x), True)
    q, s = dx.quant.per_token_cast_to_fp8(x)
    dx.quant.dequantize(q, s, (1, 128))
    with pytest.raises(ValueError, match=r"block must be \(1, 128\) or \(128, 128\), got \(128, 128, 1\)"):
        dx.quant.dequantize(q, s, (128, 128, 1))
    with pytest.raises(ValueError, match=r"s must have shape \(1, 2\)"):
        dx.quant.dequantize(q, s, [128, 128])


def test_cuda_launches_read_the_raw_stream_and_switch_device_only_when_needed(monkeypatch):
    """The CUDA branch of the launch path, with the CUDA calls faked (no GPU needed)."""
    switched, launched = [], []
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: 0, raising=False)
    monkeypatch.setattr(torch.cuda, "device", lambda device: switched.append(device) or contextlib.nullcontext())
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: 100 + index, raising=False)
    monkeypatch.setattr(_backend, "_C", types.SimpleNamespace(launcher=lambda *args: launched.append(args) or ""))
    _launch.call("launcher", 1, device=torch.device("cuda", 0))
    _launch.call("launcher", 2, device=torch.device("cuda"))
    assert switched == []
    _launch.call("launcher", 3, device=torch.device("cuda", 1))
    assert switched == [1]
    assert launched == [(1, 100), (2, 100), (3, 101)]  # the stream of the tensor's device, passed last
    monkeypatch.setattr(_backend, "_C", types.SimpleNamespace(launcher=lambda *args: "invalid argument"))
    with pytest.raises(RuntimeError, match="deepseek_ext kernel launcher failed: invalid argument"):
        _launch.call("launcher", 1, device=torch.device("cuda", 0))


# --- the benchmark's plumbing (its figures are not asserted) ----------------------------------

def test_host_overhead_bench_times_both_routes_of_every_op(capsys, tmp_path):
    if not (dx.has_emulation() or dx.has_cuda_ext()):
        pytest.skip("no kernel module built: no kernel path to stub")
    backend, emu = dx.backend(), _backend._emu
    assert host_overhead.main(["--quick", "--json", str(tmp_path / "host.json")]) == 0
    table = capsys.readouterr().out
    for op in host_overhead.cases():
        assert f"| {op} |" in table
    rows = json.loads((tmp_path / "host.json").read_text())["rows"]
    cases = host_overhead.cases().values()
    assert {r["impl"] for r in rows} == {OURS, host_overhead.DISPATCHER}
    assert len(rows) == 2 * len(cases)
    assert _eager.enabled and _backend._emu is emu and dx.backend() == backend  # everything put back
