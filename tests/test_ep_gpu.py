"""dx.ep.Buffer with our kernels (ipc backend) on one sm_90 GPU: 2 and 4 processes sharing the GPU
through CUDA IPC (gloo for the host-side exchange: NCCL refuses two ranks on one GPU), bit-exact
against the torch backend and the reference; the timeout path; loopback single-process runs.

Each test also runs under the host emulation of the kernels (kernel_device "cpu",
DEEPSEEK_EXT_BACKEND=emulate): the regions are POSIX shared memory, the ranks forked gloo
processes (spawned ones can abort at interpreter shutdown, see tests/gloo_ranks.py). On the GPU
the ranks are spawned (CUDA cannot be used in a forked child). CUDA-graph capture is GPU only."""
import dataclasses
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import deepseek_ext as dx
from deepseek_ext.reference import ep as ref
from deepseek_ext.reference.quant import per_token_cast_to_fp8
from gloo_ranks import run_ranks
from test_ep_torch import HIDDEN, MAX_TOKENS, all_ranks, assert_same_result, cases, expert_outputs

pytestmark = pytest.mark.gpu
MIN_RING_BYTES = 16 * 2 * HIDDEN  # a combine receiver's step: 16 bf16 rows


def to_cpu(result):
    """A DispatchResult (or its handle) with every tensor on the CPU and counts as a list."""
    moved = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    for name, value in moved.items():
        if isinstance(value, torch.Tensor):
            moved[name] = value.cpu()
        elif dataclasses.is_dataclass(value):
            moved[name] = to_cpu(value)
    if "num_tokens_per_expert" in moved and isinstance(moved["num_tokens_per_expert"], torch.Tensor):
        moved["num_tokens_per_expert"] = moved["num_tokens_per_expert"].tolist()
    return type(result)(**moved)


def on_device(x, device):
    return tuple(t.to(device) for t in x) if isinstance(x, tuple) else x.to(device)


def init_rank(rank, num_ranks, init_file, device):
    """A rank's process: the GPU it shares, or the emulator; then the gloo group."""
    if device == "cuda":
        torch.cuda.set_device(0)
    else:  # forked: the emulator's launches, before any Buffer exists
        os.environ["DEEPSEEK_EXT_BACKEND"] = "emulate"
        assert dx.backend() == "emulate"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=num_ranks)


def start_ranks(worker, num_ranks, *args):
    """worker(rank, num_ranks, *args, device) in num_ranks processes: spawned on the GPU, forked
    (tests/gloo_ranks.py) under emulation; device is the last of args."""
    if args[-1] == "cuda":
        mp.spawn(worker, args=(num_ranks, *args), nprocs=num_ranks, join=True)
    else:
        import torch._dynamo  # noqa: F401  (a process's first custom op imports it: once here, not per rank)
        run_ranks(worker, num_ranks, num_ranks, *args)


def wait(event, device):
    """The caller's stream waits for an async_op's event; emulated launches have finished when
    they return, so they give no event."""
    if device == "cuda":
        torch.cuda.current_stream().wait_event(event)
    else:
        assert event is None


def activations(xs, kind):
    """bf16 inputs as the dtype under test: fp32 with full mantissas, or the FP8 cast."""
    if kind == "fp8":
        return [per_token_cast_to_fp8(x) for x in xs]
    if kind == "fp32":
        gen = torch.Generator().manual_seed(len(xs))
        return [x.float() + 1e-3 * torch.randn(x.shape, generator=gen) for x in xs]
    return xs


def check_ipc_case(ipc, torch_buffer, rank, num_ranks, spec, kind, alignment, device):
    """One dispatch (and combine) through the ipc kernels == the reference == the torch backend, bitwise."""
    xs, idxs, ws = all_ranks(spec["tokens"], spec["num_experts"], spec["topk"], spec.get("skew", False))
    inputs, fp8 = activations(xs, kind), kind == "fp8"
    want = ref.dispatch(inputs, idxs, ws, spec["num_experts"], expert_alignment=alignment)
    got = ipc.dispatch(on_device(inputs[rank], device), idxs[rank].to(device), ws[rank].to(device),
                       expert_alignment=alignment)
    assert got.x.dtype == want[rank].x.dtype
    assert_same_result(to_cpu(got), want[rank], fp8)
    via_torch = torch_buffer.dispatch(inputs[rank], idxs[rank], ws[rank], expert_alignment=alignment)
    assert_same_result(to_cpu(got), via_torch, fp8)
    if fp8:
        return
    ys = [expert_outputs(w, r, spec["num_experts"], num_ranks) for r, w in enumerate(want)]
    out = ipc.combine(ys[rank].to(device), got.handle).cpu()
    assert torch.equal(out, ref.combine(ys, [w.handle for w in want])[rank])
    assert torch.equal(out, torch_buffer.combine(ys[rank], via_torch.handle))


def check_worst_case_and_async(worst, rank, num_ranks, spec, device):
    """Worst-case mode (no CPU sync) and async_op: the valid prefix equals the reference."""
    xs, idxs, ws = all_ranks(spec["tokens"], spec["num_experts"], spec["topk"])
    wants = ref.dispatch(xs, idxs, ws, spec["num_experts"], expert_alignment=128)
    want = wants[rank]
    got = worst.dispatch(xs[rank].to(device), idxs[rank].to(device), ws[rank].to(device), expert_alignment=128,
                         async_op=True)
    wait(got.event, device)
    num_recv, num_rows = got.handle.num_recv[:2].tolist()
    assert num_recv == want.topk_idx.shape[0] and num_rows == want.x.shape[0]
    assert got.x.shape[0] >= num_rows and got.topk_idx.shape[0] == num_ranks * MAX_TOKENS
    assert torch.equal(got.x[:num_rows].cpu(), want.x)
    assert torch.equal(got.m_indices[:num_rows].cpu(), want.m_indices)
    assert (got.m_indices[num_rows:] == -1).all()
    assert torch.equal(got.topk_idx[:num_recv].cpu(), want.topk_idx)
    assert got.num_tokens_per_expert.tolist() == want.num_tokens_per_expert
    y = torch.zeros(got.x.shape, dtype=torch.bfloat16, device=device)
    y[:num_rows] = want.x.to(device)
    out, event = worst.combine(y, got.handle, async_op=True)
    wait(event, device)
    worst.check_errors()
    assert torch.equal(out.cpu(), ref.combine([w.x for w in wants], [w.handle for w in wants])[rank])


def ipc_worker(rank, num_ranks, init_file, device):
    init_rank(rank, num_ranks, init_file, device)
    try:
        # the smallest rings (16 combine rows): every ring wraps and its sender waits for space
        ipc = dx.ep.Buffer(None, HIDDEN, 4 * num_ranks, MAX_TOKENS, num_sms=4, backend="ipc", timeout_s=20,
                           ring_bytes=MIN_RING_BYTES)
        assert ipc._ipc.device.type == device  # the kernels run where the tensors are (the emulator on CPU)
        assert dx.ep.Buffer(None, HIDDEN, 4 * num_ranks, MAX_TOKENS, backend="auto").backend == "ipc"
        via_torch = dx.ep.Buffer(None, HIDDEN, 4 * num_ranks, MAX_TOKENS, backend="torch")
        for spec in cases(num_ranks).values():
            for kind in ("bf16", "fp32", "fp8"):
                for alignment in (1, 128):
                    check_ipc_case(ipc, via_torch, rank, num_ranks, spec, kind, alignment, device)
        worst = dx.ep.Buffer(None, HIDDEN, 4 * num_ranks, MAX_TOKENS, num_sms=3, backend="ipc", worst_case=True,
                             timeout_s=20)  # odd num_sms: one channel, a block unused
        check_worst_case_and_async(worst, rank, num_ranks, cases(num_ranks)["random"], device)
        for buffer in (ipc, worst, via_torch):
            buffer.destroy()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("num_ranks", [2, 4])
def test_ipc_processes_share_one_gpu(kernel_device, num_ranks, tmp_path):
    start_ranks(ipc_worker, num_ranks, str(tmp_path / "pg"), kernel_device)


def timeout_worker(rank, num_ranks, init_file, device):
    init_rank(rank, num_ranks, init_file, device)
    absent = num_ranks - 1  # never dispatches; every other rank times out waiting for it
    try:
        buffer = dx.ep.Buffer(None, HIDDEN, 4 * num_ranks, MAX_TOKENS, num_sms=2, backend="ipc", timeout_s=1.0)
        xs, idxs, ws = all_ranks([9 + r for r in range(num_ranks)], 4 * num_ranks, 2)
        x, idx, w = xs[rank].to(device), idxs[rank].to(device), ws[rank].to(device)
        if rank != absent:
            start = time.monotonic()
            with pytest.raises(RuntimeError, match=f"rank {rank} timed out after 1 s in the dispatch start barrier "
                                                   f"waiting for rank {absent}"):
                buffer.dispatch(x, idx, w)
            assert time.monotonic() - start < 5
            for call in (lambda: buffer.dispatch(x, idx, w), buffer.check_errors):  # sticky until reset()
                with pytest.raises(RuntimeError, match=f"rank {rank} timed out .* raises until reset"):
                    call()
        buffer.reset()  # collective: every rank, the absent one too
        want = ref.dispatch(xs, idxs, ws, 4 * num_ranks)[rank]
        assert_same_result(to_cpu(buffer.dispatch(x, idx, w)), want, False)
        buffer.destroy()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("num_ranks", [2, 4])
def test_timeout_names_rank_and_phase(kernel_device, num_ranks, tmp_path):
    if kernel_device == "cuda" and num_ranks != 2:
        pytest.skip("on the GPU the 2-rank case runs (4 spawned ranks would add only start-up time)")
    start_ranks(timeout_worker, num_ranks, str(tmp_path / "pg"), kernel_device)


# --- loopback: rank 0 alone, peers in local memory --------------------------------------------

LOOP_RANKS, LOOP_EXPERTS = 4, 16


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
@pytest.mark.parametrize("alignment", [1, 128])
def test_loopback_dispatch_and_combine_match_reference(kernel_device, fp8, alignment):
    buffer = dx.ep.Buffer.loopback(HIDDEN, LOOP_EXPERTS, LOOP_RANKS, MAX_TOKENS, num_sms=3, ring_bytes=MIN_RING_BYTES)
    xs, idxs, ws = all_ranks([45] + [0] * (LOOP_RANKS - 1), LOOP_EXPERTS, 4)  # only rank 0 sends
    inputs = [per_token_cast_to_fp8(x) for x in xs] if fp8 else xs
    want = ref.dispatch(inputs, idxs, ws, LOOP_EXPERTS, expert_alignment=alignment)
    layout = buffer.get_dispatch_layout(idxs[0].to(kernel_device))
    for got_t, want_t in zip(layout[:3], ref.get_dispatch_layout(idxs[0], LOOP_EXPERTS, LOOP_RANKS)):
        assert torch.equal(got_t.cpu(), want_t)
    got = buffer.dispatch(on_device(inputs[0], kernel_device), idxs[0].to(kernel_device), ws[0].to(kernel_device),
                          layout=layout, expert_alignment=alignment)
    assert_same_result(to_cpu(got), want[0], fp8)
    for peer in range(1, LOOP_RANKS):
        received = to_cpu(buffer.peer_received(peer, alignment))
        assert_same_result(received, want[peer], fp8)
    if not fp8:
        y = expert_outputs(want[0], 0, LOOP_EXPERTS, LOOP_RANKS)
        ys = [y] + [torch.zeros(w.x.shape) for w in want[1:]]  # the peers never send partials back
        out = buffer.combine(y.to(kernel_device), got.handle).cpu()
        assert torch.equal(out, ref.combine(ys, [w.handle for w in want])[0])


def test_loopback_worst_case_replays_in_a_cuda_graph():
    buffer = dx.ep.Buffer.loopback(HIDDEN, LOOP_EXPERTS, LOOP_RANKS, MAX_TOKENS, num_sms=3, worst_case=True)
    xs, idxs, ws = all_ranks([40] + [0] * (LOOP_RANKS - 1), LOOP_EXPERTS, 4)
    want = ref.dispatch(xs, idxs, ws, LOOP_EXPERTS)[0]
    x, idx, w = xs[0].cuda(), idxs[0].cuda(), ws[0].cuda()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        buffer.dispatch(x, idx, w)  # warm-up outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            got = buffer.dispatch(x, idx, w)
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        buffer.check_errors()
        n = int(got.handle.num_recv[0])
        assert n == want.x.shape[0]
        assert torch.equal(got.x[:n].cpu(), x.cpu()[want.handle.src_token])


def test_worst_case_layout_flags_bad_expert_ids(kernel_device):
    buffer = dx.ep.Buffer.loopback(HIDDEN, LOOP_EXPERTS, LOOP_RANKS, MAX_TOKENS, num_sms=3, worst_case=True)
    idx = torch.tensor([[0, 3], [LOOP_EXPERTS + 2, 1]], device=kernel_device)
    buffer.get_dispatch_layout(idx)
    with pytest.raises(RuntimeError, match=rf"expert id {LOOP_EXPERTS + 2} outside \[-1, {LOOP_EXPERTS}\)"):
        buffer.check_errors()


def test_ring_bytes_are_checked_and_the_footprint_ignores_max_tokens(kernel_device):
    with pytest.raises(ValueError, match=rf"ring_bytes must be a multiple of 16 and at least {MIN_RING_BYTES} for "
                                         rf"hidden={HIDDEN} .* got {MIN_RING_BYTES - 16}"):
        dx.ep.Buffer.loopback(HIDDEN, LOOP_EXPERTS, LOOP_RANKS, MAX_TOKENS, num_sms=2, ring_bytes=MIN_RING_BYTES - 16)
    with pytest.raises(ValueError, match="num_sms >= 2"):
        dx.ep.Buffer.loopback(HIDDEN, LOOP_EXPERTS, LOOP_RANKS, MAX_TOKENS, num_sms=1)
    sizes = set()
    for max_tokens in (64, 4096):
        buffer = dx.ep.Buffer.loopback(HIDDEN, LOOP_EXPERTS, LOOP_RANKS, max_tokens, num_sms=4, ring_bytes=MIN_RING_BYTES)
        sizes.add(buffer._ipc.region_bytes)
        assert buffer._ipc.region_bytes < 2 * 2 * LOOP_RANKS * 2 * MIN_RING_BYTES + 8192  # rings + control
        buffer.destroy()
    assert len(sizes) == 1


def test_bad_expert_ids_raise_after_the_dispatch_without_a_host_check(kernel_device):
    buffer = dx.ep.Buffer.loopback(HIDDEN, LOOP_EXPERTS, LOOP_RANKS, MAX_TOKENS, num_sms=2)
    xs, idxs, ws = all_ranks([21] + [0] * (LOOP_RANKS - 1), LOOP_EXPERTS, 2)
    bad = idxs[0].clone()
    bad[3, 1] = LOOP_EXPERTS + 5
    x, w = xs[0].to(kernel_device), ws[0].to(kernel_device)
    with pytest.raises(RuntimeError, match=rf"expert id {LOOP_EXPERTS + 5} outside \[-1, {LOOP_EXPERTS}\)"):
        buffer.dispatch(x, bad.to(kernel_device), w)
    skipped = idxs[0].clone()
    skipped[3, 1] = -1  # what the kernels did with the bad slot
    assert_same_result(to_cpu(buffer.peer_received(0)), ref.dispatch([xs[0]] + xs[1:], [skipped] + idxs[1:], ws,
                                                                        LOOP_EXPERTS)[0], False)
    want = ref.dispatch(xs, idxs, ws, LOOP_EXPERTS)[0]
    assert_same_result(to_cpu(buffer.dispatch(x, idxs[0].to(kernel_device), w)), want, False)  # not sticky
