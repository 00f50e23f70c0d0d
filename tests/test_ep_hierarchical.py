"""dx.ep.Buffer across nodes (ranks_per_node): gloo processes simulate 2 nodes on this machine.
The two-hop path must equal the flat torch backend bit for bit (dispatch, combine, gradients), and
stats() must equal the traffic counted here from the routing with plain loops."""
import os

import pytest
import torch
import torch.distributed as dist

import deepseek_ext as dx
from deepseek_ext.ep.topology import _ranks_per_node_of, check_ranks_per_node
from deepseek_ext.reference.quant import per_token_cast_to_fp8
from gloo_ranks import run_ranks

HIDDEN, MAX_TOKENS, TOPK = 256, 48, 4


def _routing(gen, tokens, num_experts, case):
    """[T, k] distinct expert ids with about a fifth of the slots -1, weights in (0, 1]."""
    idx = torch.rand(tokens, num_experts, generator=gen).argsort(1)[:, :TOPK]
    idx[torch.rand(tokens, TOPK, generator=gen) < 0.2] = -1
    if case == "skewed":  # most slots on rank 1's first expert or the last node's last rank
        idx[:, 0] = num_experts // 4 if num_experts >= 4 else 0
        idx[:, 1] = torch.where(torch.rand(tokens, generator=gen) < 0.8, num_experts - 1, -1)
        idx[:, 2:] = -1
    return idx, torch.rand(tokens, TOPK, generator=gen) + 1e-3


def _inputs(num_ranks, num_experts, case, seed):
    """Every rank's (x, topk_idx, topk_weights), the same in every process."""
    tokens = {"random": [37, 20, 48, 5, 0, 31, 12, 44], "skewed": [30] * 8, "empty ranks": [0, 17, 0, 9, 0, 0, 26, 0],
              "no tokens": [0] * 8}[case][:num_ranks]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in tokens:
        x = torch.randn(t, HIDDEN, generator=gen).bfloat16()
        out.append((x, *_routing(gen, t, num_experts, case)))
    return out


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _same(a, b, what):
    """Equal bits (so -0.0 differs from 0.0 and NaN equals itself), dtype and shape."""
    if a is None or b is None:
        assert a is None and b is None, what
        return
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, what
        if a.is_floating_point():
            a, b = a.view(_BITS[a.element_size()]), b.view(_BITS[b.element_size()])
        assert torch.equal(a, b), what
    else:
        assert list(a) == list(b), what


def _check_same_dispatch(got, want):
    for name in ("x", "x_scales", "topk_idx", "topk_weights", "num_tokens_per_expert", "m_indices"):
        _same(getattr(got, name), getattr(want, name), name)
    for name in ("src_rank", "src_token", "num_src_tokens", "row_token", "row_weight"):
        _same(getattr(got.handle, name), getattr(want.handle, name), f"handle.{name}")


def _expert_outputs(result, rank):
    """Any function of the received rows: per-rank random gains; NaN on padding rows (never read)."""
    gen = torch.Generator().manual_seed(1000 + rank)
    if result.m_indices is None:
        return result.x.float() * torch.rand(result.x.shape[0], 1, generator=gen)  # fp32: combine rounds it
    y = (result.x.float() * torch.rand(result.x.shape[0], 1, generator=gen)).bfloat16()
    y[result.m_indices < 0] = float("nan")
    return y


def _reached(inputs, num_experts):
    """Per source rank, per token: the set of ranks holding one of its experts."""
    per_rank = num_experts // len(inputs)
    return [[{e // per_rank for e in row if e >= 0} for row in idx.tolist()] for _, idx, _ in inputs]


def _stats(dispatch_inter, dispatch_intra, combine_inter, combine_intra, row_bytes):
    d_inter, d_intra = dispatch_inter * row_bytes, dispatch_intra * row_bytes
    c_inter, c_intra = combine_inter * 2 * HIDDEN, combine_intra * 2 * HIDDEN
    return {"dispatch_internode_bytes": d_inter, "dispatch_intranode_bytes": d_intra,
            "combine_internode_bytes": c_inter, "combine_intranode_bytes": c_intra,
            "internode_bytes": d_inter + c_inter, "intranode_bytes": d_intra + c_intra}


def _expected_stats(reached, rank, size, row_bytes):
    """What rank `rank` = (node, local) sends in each hop, from every rank's routing with sets."""
    node, local = divmod(rank, size)
    my_node = set(range(node * size, (node + 1) * size))
    dispatch_inter = sum(len({d // size for d in ranks} - {node}) for ranks in reached[rank])
    # as forwarder: the tokens of the sources with this local index, to this node's ranks
    forwarded = [(s, ranks & my_node) for s in range(local, len(reached), size) for ranks in reached[s]]
    dispatch_intra = sum(len(here - {rank}) for _, here in forwarded)
    combine_inter = sum(len(here) for s, here in forwarded if s // size != node)
    # partials back to the forwarders of the tokens this rank received (another local index)
    combine_intra = sum(rank in ranks for s in range(len(reached)) if s % size != local for ranks in reached[s])
    return _stats(dispatch_inter, dispatch_intra, combine_inter, combine_intra, row_bytes)


def _expected_flat_stats(reached, rank, row_bytes):
    """One node: every row to another rank is intranode."""
    dispatch = sum(len(ranks - {rank}) for ranks in reached[rank])
    combine = sum(rank in ranks for s in range(len(reached)) if s != rank for ranks in reached[s])
    return _stats(0, dispatch, 0, combine, row_bytes)


def _check_case(flat, hier, rank, ranks_per_node, num_experts, case, fp8, alignment):
    inputs = _inputs(flat.num_ranks, num_experts, case, seed=hash((case, fp8, alignment)) % 1000)
    x, idx, w = inputs[rank]
    if fp8:
        x = per_token_cast_to_fp8(x)
    want = flat.dispatch(x, idx, w, expert_alignment=alignment)
    got = hier.dispatch(x, idx, w, expert_alignment=alignment)
    _check_same_dispatch(got, want)
    y = _expert_outputs(want, rank)
    out = hier.combine(y, got.handle)
    _same(out, flat.combine(y, want.handle), "combine")
    row_bytes = HIDDEN * (1 if fp8 else 2) + (4 * HIDDEN // 128 if fp8 else 0)
    reached = _reached(inputs, num_experts)
    assert hier.stats() == _expected_stats(reached, rank, ranks_per_node, row_bytes), (case, fp8)
    assert flat.stats() == _expected_flat_stats(reached, rank, row_bytes), (case, fp8)


def _grads(buffer, x, idx, w, alignment, rank):
    """Gradients of x and w through dispatch -> per-row function -> combine (both hops' backward)."""
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    result = buffer.dispatch(x, idx, w, expert_alignment=alignment)
    gen = torch.Generator().manual_seed(rank)
    gain = torch.rand(result.x.shape[0], 1, generator=gen)
    y = (result.x.float() * gain).bfloat16()
    out = buffer.combine(y, result.handle)
    g_out = torch.randn(out.shape, generator=gen)
    g_w = torch.randn(result.topk_weights.shape, generator=gen)
    ((out.float() * g_out).sum() + (result.topk_weights * g_w).sum()).backward()
    return x.grad, w.grad


def worker(rank, num_ranks, ranks_per_node, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=num_ranks)
    try:
        num_experts = 2 * num_ranks
        flat = dx.ep.Buffer(None, HIDDEN, num_experts, MAX_TOKENS, backend="torch", ranks_per_node=num_ranks)
        hier = dx.ep.Buffer(None, HIDDEN, num_experts, MAX_TOKENS, ranks_per_node=ranks_per_node)
        assert flat.topology.num_nodes == 1 and hier.topology.num_nodes == num_ranks // ranks_per_node
        combos = [(False, 1), (True, 128)] if num_ranks > 4 else [(False, 1), (False, 128), (True, 1), (True, 128)]
        for case in ("random", "skewed", "empty ranks", "no tokens"):
            for fp8, alignment in combos:
                _check_case(flat, hier, rank, ranks_per_node, num_experts, case, fp8, alignment)
        for alignment in (1, 128):
            x, idx, w = _inputs(num_ranks, num_experts, "random", seed=alignment)[rank]
            for name, got, want in zip(("x.grad", "w.grad"), _grads(hier, x, idx, w, alignment, rank),
                                       _grads(flat, x, idx, w, alignment, rank)):
                _same(got, want, name)
        if num_ranks == 4:
            _check_arguments(rank)
    finally:
        dist.destroy_process_group()


def _check_arguments(rank):
    """Raised alike on every rank (the values are compared before anything else runs)."""
    with pytest.raises(ValueError, match=r"ranks_per_node differs across ranks \(per group rank: \[1, 2, 2, 2\]\)"):
        dx.ep.Buffer(None, HIDDEN, 8, MAX_TOKENS, ranks_per_node=1 if rank == 0 else 2)
    with pytest.raises(ValueError, match="backend='ipc' runs within one node, but ranks_per_node=2 puts the 4 ranks on 2"):
        dx.ep.Buffer(None, HIDDEN, 8, MAX_TOKENS, backend="ipc", ranks_per_node=2)
    with pytest.raises(ValueError, match="ranks_per_node must be >= 1 and divide the group's 4 ranks, got 3"):
        dx.ep.Buffer(None, HIDDEN, 8, MAX_TOKENS, ranks_per_node=3)
    os.environ["LOCAL_WORLD_SIZE"] = "2"  # as torchrun sets it on 2 nodes of 2
    try:
        assert dx.ep.Buffer(None, HIDDEN, 8, MAX_TOKENS).topology.ranks_per_node == 2
    finally:
        del os.environ["LOCAL_WORLD_SIZE"]
    assert dx.ep.Buffer(None, HIDDEN, 8, MAX_TOKENS).topology.num_nodes == 1  # one hostname


@pytest.mark.parametrize("keys,expected", [(["a", "a", "b", "b"], 2), ([0, 0, 0], 3), (["a", "b", "c"], 1),
                                           (["a", "b", "a", "b"], None), (["a", "a", "a", "b"], None)])
def test_ranks_per_node_from_node_keys(keys, expected):
    if expected is not None:
        assert _ranks_per_node_of(keys) == expected
    else:
        with pytest.raises(ValueError, match=r"the ranks of each node must be contiguous .*pass ranks_per_node"):
            _ranks_per_node_of(keys)


def test_ranks_per_node_type():
    with pytest.raises(TypeError, match="ranks_per_node must be an int or None, got str"):
        check_ranks_per_node("2", 4)


@pytest.mark.parametrize("num_ranks,ranks_per_node", [(4, 2), (8, 4), (2, 1)])
def test_two_hops_equal_the_flat_path(num_ranks, ranks_per_node, tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_ranks(worker, num_ranks, num_ranks, ranks_per_node, str(tmp_path / "pg"))
