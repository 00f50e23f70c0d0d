"""dx.ep.Buffer ranks cannot disagree silently: a configuration field that differs at creation,
diverged operations (k, dtype, FP8 vs bf16, the call sequence) and a rank whose own input checks
fail give the same clear error on every rank within seconds (no abort, no hang), on the torch
backend (gloo) and on the ipc kernels under the emulator; reset() makes the next call correct;
destroy() is collective and a later call raises."""
import os
import time
import warnings

import pytest
import torch
import torch.distributed as dist

import deepseek_ext as dx
from deepseek_ext.ep.buffer import ipc_possible
from deepseek_ext.reference import ep as ref
from deepseek_ext.reference.quant import per_token_cast_to_fp8
from gloo_ranks import run_ranks
from test_ep_torch import HIDDEN, MAX_TOKENS, all_ranks, assert_same_result

BASE = dict(hidden=HIDDEN, num_experts=8, max_tokens_per_rank=MAX_TOKENS, num_sms=2, backend="torch", timeout_s=20.0)
CHANGED = dict(hidden=128, num_experts=16, max_tokens_per_rank=32, num_sms=4, backend="auto", timeout_s=30.0)


def _start(rank, num_ranks, init_file, backend):
    if backend == "ipc":
        os.environ["DEEPSEEK_EXT_BACKEND"] = "emulate"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=num_ranks)


def _record(out_dir, rank, name, error):
    with open(os.path.join(out_dir, f"{name}.{rank}"), "w") as f:
        f.write(f"{type(error).__name__}: {error}")


def _same_on_every_rank(out_dir, name, num_ranks) -> str:
    texts = {open(os.path.join(out_dir, f"{name}.{r}")).read() for r in range(num_ranks)}
    assert len(texts) == 1, texts
    return texts.pop()


# --- configuration at creation ------------------------------------------------------------------

def config_worker(rank, num_ranks, init_file, out_dir):
    _start(rank, num_ranks, init_file, "torch")
    try:
        for field, other in CHANGED.items():
            kwargs = dict(BASE, **({field: other} if rank == num_ranks - 1 else {}))
            start = time.monotonic()
            with pytest.raises(ValueError) as error:
                dx.ep.Buffer(None, **kwargs)
            assert time.monotonic() - start < 5
            _record(out_dir, rank, field, error.value)
    finally:
        dist.destroy_process_group()


def test_config_mismatch_raises_the_same_error_on_every_rank(tmp_path):
    run_ranks(config_worker, 3, 3, str(tmp_path / "pg"), str(tmp_path))
    for field, other in CHANGED.items():
        text = _same_on_every_rank(tmp_path, field, 3)
        assert text == (f"ValueError: dx.ep.Buffer: the ranks disagree on {field} "
                        f"({BASE[field]!r} on ranks 0, 1; {other!r} on rank 2)")


def test_ipc_needs_peer_access_between_every_pair():
    ok = ("node", True, "0:1", ("0:1", "0:2"))
    assert ipc_possible([ok, ("node", True, "0:2", ("0:1", "0:2"))]) is None
    assert ipc_possible([ok, ("node", True, "0:2", ("0:2",))]) == "rank 1's GPU cannot access rank 0's (bus id 0:1) as a peer"
    assert "several hosts" in ipc_possible([ok, ("other", True, "0:2", ("0:1", "0:2"))])
    assert "ranks [1] have no compiled extension" in ipc_possible([ok, ("node", False, None, ())])


# --- each operation's header --------------------------------------------------------------------

EXPERTS = 12  # 4 per rank on 3 ranks


def _inputs(rank, num_ranks, k, kind="bf16"):
    xs, idxs, ws = all_ranks([20 + 3 * r for r in range(num_ranks)], EXPERTS, k)
    x = xs[rank] if kind == "bf16" else xs[rank].float() if kind == "fp32" else per_token_cast_to_fp8(xs[rank])
    return x, idxs[rank], ws[rank]


def _expect(out_dir, rank, name, exception, call, limit_s=5.0):
    start = time.monotonic()
    with pytest.raises(exception) as error:
        call()
    assert time.monotonic() - start < limit_s
    _record(out_dir, rank, name, error.value)


def _check_correct(buffer, rank, num_ranks):
    """A dispatch (and combine) after the errors equals the reference."""
    xs, idxs, ws = all_ranks([20 + 3 * r for r in range(num_ranks)], EXPERTS, 2)
    want = ref.dispatch(xs, idxs, ws, EXPERTS)
    got = buffer.dispatch(xs[rank], idxs[rank], ws[rank])
    assert_same_result(got, want[rank], False)
    out = buffer.combine(got.x, got.handle)
    assert torch.equal(out, ref.combine([w.x for w in want], [w.handle for w in want])[rank])


def header_worker(rank, num_ranks, init_file, out_dir, backend):
    _start(rank, num_ranks, init_file, backend)
    try:
        buffer = dx.ep.Buffer(None, HIDDEN, EXPERTS, MAX_TOKENS, num_sms=2, backend=backend, timeout_s=20)
        last = rank == num_ranks - 1
        cases = {"k": dict(k=3 if last else 2), "dtype": dict(kind="fp32" if last else "bf16"),
                 "scales": dict(kind="fp8" if last else "bf16")}
        for name, spec in cases.items():
            x, idx, w = _inputs(rank, num_ranks, spec.get("k", 2), spec.get("kind", "bf16"))
            _expect(out_dir, rank, name, ValueError, lambda: buffer.dispatch(x, idx, w))
            with pytest.raises(RuntimeError, match="raises until reset"):
                buffer.dispatch(x, idx, w)
            buffer.reset()
            _check_correct(buffer, rank, num_ranks)
            buffer.reset()

        # a rank's own checks fail: it raises its own error, the others name it; nothing is sticky
        x, idx, w = _inputs(rank, num_ranks, 2)
        if last:
            _expect(out_dir, rank, "invalid", ValueError, lambda: buffer.dispatch(torch.zeros(65, HIDDEN).bfloat16(),
                                                                                  idx[:1].repeat(65, 1), w[:1].repeat(65, 1)))
        else:
            _expect(out_dir, rank, "invalid", ValueError, lambda: buffer.dispatch(x, idx, w))
        _check_correct(buffer, rank, num_ranks)

        # the call sequences diverge: the last rank skips a combine
        got = buffer.dispatch(x, idx, w)
        if last:
            _expect(out_dir, rank, "sequence", ValueError, lambda: buffer.dispatch(x, idx, w))
        else:
            _expect(out_dir, rank, "sequence", ValueError, lambda: buffer.combine(got.x, got.handle))
        buffer.reset()
        _check_correct(buffer, rank, num_ranks)
        buffer.destroy()
        with pytest.raises(RuntimeError, match="used after destroy"):
            buffer.dispatch(x, idx, w)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backend", ["torch", "ipc"])
def test_diverged_operations_raise_on_every_rank(backend, tmp_path):
    if backend == "ipc" and not dx.has_emulation():
        pytest.skip("needs the emulation module deepseek_ext._emu")
    import torch._dynamo  # noqa: F401  (imported once here, not per forked rank)
    run_ranks(header_worker, 3, 3, str(tmp_path / "pg"), str(tmp_path), backend)
    seq0 = "dispatch #0 (k=2, hidden=256, bfloat16)"
    assert _same_on_every_rank(tmp_path, "k", 3) == (
        f"Diverged: dx.ep.Buffer: the ranks' calls diverged: ranks 0, 1 called {seq0}; "
        "rank 2 called dispatch #0 (k=3, hidden=256, bfloat16)")
    assert "rank 2 called dispatch #0 (k=2, hidden=256, float32)" in _same_on_every_rank(tmp_path, "dtype", 3)
    assert ("rank 2 called dispatch #0 (k=2, hidden=256, float8_e4m3fn, with scales)"
            in _same_on_every_rank(tmp_path, "scales", 3))
    own = open(tmp_path / "invalid.2").read()
    assert "has 65 tokens but the Buffer holds at most max_tokens_per_rank=64" in own
    for rank in (0, 1):
        assert open(tmp_path / f"invalid.{rank}").read() == (
            "ValueError: dx.ep.Buffer: rank 2 rejected the inputs of dispatch #0; the operation ran on no rank")
    assert _same_on_every_rank(tmp_path, "sequence", 3) == (
        "Diverged: dx.ep.Buffer: the ranks' calls diverged: ranks 0, 1 called combine #4 (k=2, hidden=256, "
        "bfloat16); rank 2 called dispatch #4 (k=2, hidden=256, bfloat16)")


def test_loopback_without_destroy_frees_quietly_and_destroy_is_final(monkeypatch):
    if not dx.has_emulation():
        pytest.skip("needs the emulation module deepseek_ext._emu")
    monkeypatch.setenv("DEEPSEEK_EXT_BACKEND", "emulate")
    buffer = dx.ep.Buffer.loopback(HIDDEN, 8, 2, MAX_TOKENS, num_sms=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del buffer  # loopback memory is nobody else's: freed without a warning
    buffer = dx.ep.Buffer.loopback(HIDDEN, 8, 2, MAX_TOKENS, num_sms=2)
    buffer.destroy()
    buffer.destroy()  # idempotent
    with pytest.raises(RuntimeError, match="used after destroy"):
        buffer.check_errors() or buffer.dispatch(torch.zeros(1, HIDDEN).bfloat16(), torch.zeros(1, 1, dtype=torch.int64),
                                                 torch.ones(1, 1))
