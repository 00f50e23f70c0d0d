"""Pipeline schedules and their simulation: completeness, pass order, cross-rank dependencies,
bubbles and peak activations against the published table, the PNG CLI, and WeightGradStore."""
import itertools
import random

import pytest
import torch
from torch import nn

from deepseek_ext.pipeline import DeferredWeightGradLinear, WeightGradStore, build_schedule, simulate
from deepseek_ext.pipeline.schedule import BACKWARD, FORWARD, WEIGHT
from deepseek_ext.pipeline.simulate import main as simulate_cli

CONFIGS = [("1f1b", 2, 3), ("1f1b", 4, 9), ("zb1p", 2, 4), ("zb1p", 4, 11), ("zb1p", 8, 16),
           ("dualpipe", 2, 4), ("dualpipe", 2, 10), ("dualpipe", 4, 8), ("dualpipe", 4, 14),
           ("dualpipe", 6, 18), ("dualpipe", 8, 40), ("dualpipev", 1, 2), ("dualpipev", 2, 5),
           ("dualpipev", 4, 8), ("dualpipev", 4, 19), ("dualpipev", 8, 16)]


def positions(schedule, rank, p):
    route, position = schedule.locate(rank, p.module)
    return route, position, p.chunk


@pytest.mark.parametrize("method,pp,chunks", CONFIGS)
def test_every_pass_runs_once_in_order(method, pp, chunks):
    schedule = build_schedule(method, pp, chunks)
    seen = {}
    for rank, ops in enumerate(schedule.ops):
        for index, op in enumerate(ops):
            assert len(op.passes) in (1, 2)
            if op.overlapped:
                assert [p.kind for p in op.passes] == [FORWARD, BACKWARD]
                assert not op.passes[1].defer_weight_grad
            for p in op.passes:
                key = (p.kind, *positions(schedule, rank, p))
                assert key not in seen, f"{key} runs twice"
                seen[key] = (rank, index, p.defer_weight_grad)
    cells = [(r, k, c) for r, route in enumerate(schedule.routes) for k in range(len(route))
             for c in range(schedule.chunks_per_route)]
    for cell in cells:
        f_rank, f_index, _ = seen.pop((FORWARD, *cell))
        b_rank, b_index, deferred = seen.pop((BACKWARD, *cell))
        assert f_rank == b_rank and f_index < b_index, f"forward of {cell} must precede its backward"
        if deferred:
            w_rank, w_index, _ = seen.pop((WEIGHT, *cell))
            assert w_rank == b_rank and b_index < w_index, f"B of {cell} must precede its W"
    assert not seen, f"passes outside the routes: {seen}"


@pytest.mark.parametrize("method,pp,chunks", CONFIGS)
def test_timeline_respects_dependencies_across_ranks(method, pp, chunks):
    sim = simulate(method, pp, chunks, F=3, B=5, W=2, FB=6)
    end = {}
    for rank, timed in enumerate(sim.timeline):
        assert [t.op for t in timed] == list(sim.schedule.ops[rank]), "the timeline runs the schedule as is"
        for before, after in zip(timed, timed[1:]):
            assert before.end <= after.start
        for t in timed:
            for p in t.op.passes:
                end[(p.kind, *positions(sim.schedule, rank, p))] = (t.start, t.end)
    for (kind, route, position, chunk), (start, _) in end.items():
        last = len(sim.schedule.routes[route]) - 1
        if kind == FORWARD and position > 0:
            assert end[(FORWARD, route, position - 1, chunk)][1] <= start
        if kind == BACKWARD and position < last:
            assert end[(BACKWARD, route, position + 1, chunk)][1] <= start
        if kind == BACKWARD:
            assert end[(FORWARD, route, position, chunk)][1] <= start


def published(method, pp, F, B, W, FB):
    stages = 2 * pp if method == "dualpipev" else pp  # the table's PP counts stages
    return {"1f1b": (stages - 1) * (F + B), "zb1p": (stages - 1) * (F + B - 2 * W),
            "dualpipe": (stages // 2 - 1) * (FB + B - 3 * W),
            "dualpipev": (stages // 2 - 1) * (FB + B - 3 * W)}[method]


def table_costs(count, seed):
    """The regime of the published figures: the input-gradient part of the backward costs as
    much as the forward (B - W == F), W <= F, and F&B between max(F, B) and F + B."""
    rng = random.Random(seed)
    costs = []
    for _ in range(count):
        F = rng.randint(2, 20)
        W = rng.randint(1, F)
        B = F + W
        costs.append((F, B, W, rng.randint(B, F + B)))
    return costs


@pytest.mark.parametrize("method", ["1f1b", "zb1p", "dualpipe", "dualpipev"])
def test_bubble_matches_published_table(method):
    for (F, B, W, FB), pp in itertools.product(table_costs(6, seed=len(method)), (2, 4, 6, 8)):
        for chunks in (2 * pp, 3 * pp, 5 * pp):
            if method == "dualpipe" and chunks % 2:
                continue
            sim = simulate(method, pp, chunks, F, B, W, FB)
            assert sim.bubble == published(method, pp, F, B, W, FB), (pp, chunks, F, B, W, FB)


def test_one_f_one_b_bubble_holds_for_any_costs():
    for F, B in ((1.5, 7.25), (9, 1), (4, 4)):
        sim = simulate("1f1b", 5, 12, F, B, W=0.5, FB=F + B)
        assert sim.bubble_per_rank == [4 * (F + B)] * 5


def test_dualpipe_halves_the_bubble_of_zb1p_and_1f1b():
    F, B, W, FB = 2, 3, 1, 4
    bubbles = {m: simulate(m, 8, 40, F, B, W, FB).bubble for m in ("1f1b", "zb1p", "dualpipe")}
    assert bubbles == {"1f1b": 35, "zb1p": 21, "dualpipe": 12}


@pytest.mark.parametrize("pp", [2, 4, 6, 8])
def test_peak_activations_and_parameters(pp):
    expected = {"1f1b": (pp, 1), "zb1p": (pp, 1), "dualpipe": (pp + 1, 2), "dualpipev": (2 * pp + 1, 2)}
    for method, (activations, parameters) in expected.items():
        for chunks in (2 * pp, 5 * pp):
            sim = simulate(method, pp, chunks)
            assert (sim.peak_activations, sim.parameters) == (activations, parameters), (method, chunks)


def test_forward_only_keeps_the_forward_order():
    schedule = build_schedule("dualpipe", 4, 12)
    fwd = schedule.forward_only()
    for ops, fwd_ops in zip(schedule.ops, fwd.ops):
        expected = [p for op in ops for p in op.passes if p.kind == FORWARD]
        assert [op.passes[0] for op in fwd_ops] == expected and len(expected) == 12


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="method: expected one of"):
        simulate("gpipe", 4, 8)
    with pytest.raises(ValueError, match="pp: DualPipe needs an even number of ranks >= 2, got 3"):
        simulate("dualpipe", 3, 12)
    with pytest.raises(ValueError, match=r"num_chunks: DualPipe needs an even num_chunks >= 2 \* ranks = 8, got 7"):
        simulate("dualpipe", 4, 7)
    with pytest.raises(ValueError, match=r"num_chunks: DualPipeV needs num_chunks >= 2 \* ranks = 8, got 6"):
        simulate("dualpipev", 4, 6)
    with pytest.raises(ValueError, match="pp: expected >= 1, got 0"):
        simulate("1f1b", 0, 4)
    with pytest.raises(ValueError, match="num_chunks: expected >= 1, got 0"):
        simulate("zb1p", 2, 0)
    with pytest.raises(ValueError, match="F: expected a non-negative time"):
        simulate("1f1b", 2, 4, F=-1)
    with pytest.raises(ValueError, match="W: the weight-gradient part cannot exceed the full backward"):
        simulate("zb1p", 2, 4, B=1, W=2)


def test_cli_prints_the_table_and_writes_pngs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    simulate_cli(["--pp", "4", "--chunks", "10", "--out", str(tmp_path)])
    text = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:] if line.split()[0] in
            ("1f1b", "zb1p", "dualpipe", "dualpipev")}
    assert rows["1f1b"][:4] == ["15", "15", "4", "1x"] and rows["dualpipe"][:4] == ["4", "4", "5", "2x"]
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == [f"{m}_pp4_chunks10.png" for m in ("1f1b", "dualpipe", "dualpipev", "zb1p")]
    assert all((tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in pngs)


def test_weight_grad_store_defers_and_runs_in_order():
    WeightGradStore.clear()
    ran = []
    WeightGradStore.put(lambda: ran.append("now"))
    assert ran == ["now"]
    WeightGradStore.enabled = True
    WeightGradStore.put(lambda: ran.append("a1"))
    WeightGradStore.put(lambda: ran.append("a2"))
    WeightGradStore.flush()
    WeightGradStore.put(lambda: ran.append("b"))
    WeightGradStore.flush()
    WeightGradStore.enabled = False
    assert ran == ["now"] and WeightGradStore.pending() == 2
    WeightGradStore.pop()
    assert ran == ["now", "a1", "a2"]
    WeightGradStore.pop()
    assert ran == ["now", "a1", "a2", "b"]
    with pytest.raises(RuntimeError, match="no deferred weight gradients are waiting"):
        WeightGradStore.pop()


@pytest.mark.parametrize("deferred", [False, True])
def test_deferred_weight_grad_linear_matches_linear(deferred):
    reference = nn.Linear(7, 5).double()
    layer = DeferredWeightGradLinear(7, 5).double()
    layer.load_state_dict(reference.state_dict())
    x = torch.randn(3, 4, 7, dtype=torch.float64)
    x_ref, x_new = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(3, 4, 5, dtype=torch.float64)
    reference(x_ref).backward(grad)
    WeightGradStore.clear()
    WeightGradStore.enabled = deferred
    layer(x_new).backward(grad)
    WeightGradStore.enabled = False
    WeightGradStore.flush()
    assert (layer.weight.grad is None) == deferred
    torch.testing.assert_close(x_new.grad, x_ref.grad, rtol=0, atol=1e-14)
    WeightGradStore.pop()
    for p, q in ((layer.weight, reference.weight), (layer.bias, reference.bias)):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-13)
        assert not p.grad.requires_grad
