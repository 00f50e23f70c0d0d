"""DualPipe / DualPipeV on real processes (gloo): losses and forward outputs bitwise equal to
running the same fp64 stages one chunk after another in one process, gradients within
calc_diff < 1e-13, training converges, and bad configurations raise clear errors."""
import copy
import json
import os

import pytest
import torch
import torch.distributed as dist
from torch import nn

from deepseek_ext.pipeline import DeferredWeightGradLinear, DualPipe, DualPipeV, build_schedule
from deepseek_ext.reference.metrics import calc_diff
from gloo_ranks import run_ranks

DIM = 12


class Block(nn.Module):
    """Linear (weight grads deferrable) -> GELU -> Linear, with a residual."""

    def __init__(self):
        super().__init__()
        self.up = DeferredWeightGradLinear(DIM, 2 * DIM)
        self.down = nn.Linear(2 * DIM, DIM)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(x)))


class OverlapBlock(Block):
    """Defines upstream DualPipe's F&B hook: runs the backward first, then the forward and its loss
    (any interleaving is allowed)."""

    calls = 0

    @classmethod
    def overlapped_forward_backward(cls, module0, inputs0, criterion0, labels0, module1, loss1, outputs1,
                                    output_grads1):
        cls.calls += 1
        if loss1 is not None:
            loss1.backward()
        else:
            torch.autograd.backward(outputs1, output_grads1)
        outputs0 = module0(*inputs0)
        return outputs0, None if criterion0 is None else criterion0(outputs0, *labels0)


def criterion(output, label):
    return ((output - label) ** 2).mean()


def make_stages(num_stages, seed, block=Block):
    torch.manual_seed(seed)
    return [block().double() for _ in range(num_stages)]


def make_data(batch, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, DIM, generator=g, dtype=torch.float64),
            torch.randn(batch, DIM, generator=g, dtype=torch.float64))


def sequential(stages, x, labels, chunks):
    """Every chunk through all stages, backward right after; losses summed in chunk order."""
    losses, outputs = [], []
    for xc, lc in zip(x.tensor_split(chunks), labels.tensor_split(chunks)):
        h = xc
        for stage in stages:
            h = stage(h)
        loss = criterion(h, lc)
        loss.backward()
        losses.append(loss.detach())
        outputs.append(h.detach())
    return torch.stack(losses).sum(), torch.cat(outputs)


def assert_grads_close(module, reference_stage, what):
    for (name, p), q in zip(module.named_parameters(), reference_stage.parameters()):
        assert calc_diff(p.grad, q.grad) < 1e-13, f"{what}: gradient of {name}"


def check_dualpipe(rank, pp, group, chunks, block=Block):
    """rank is the rank inside group; route 0 enters at rank 0, route 1 at rank pp-1."""
    stages = make_stages(pp, seed=pp, block=block)
    x0, l0 = make_data(3 * chunks, seed=10 + chunks)
    x1, l1 = make_data(3 * chunks, seed=20 + chunks)
    pipe = DualPipe((copy.deepcopy(stages[rank]), copy.deepcopy(stages[pp - 1 - rank])), process_group=group)
    inputs = x0 if rank == 0 else x1 if rank == pp - 1 else None
    labels = (l1,) if rank == 0 else (l0,) if rank == pp - 1 else ()
    args = (inputs,) if inputs is not None else ()
    loss, out = pipe.step(*args, num_chunks=chunks, criterion=criterion, labels=labels, return_outputs=True)
    route0, route1 = copy.deepcopy(stages), copy.deepcopy(stages)
    ref_loss0, ref_out0 = sequential(route0, x0, l0, chunks // 2)
    ref_loss1, ref_out1 = sequential(route1, x1, l1, chunks // 2)
    what = f"DualPipe pp={pp} chunks={chunks} rank={rank}"
    assert_grads_close(pipe.module[0], route0[rank], what)
    assert_grads_close(pipe.module[1], route1[pp - 1 - rank], what)
    expected = {0: (ref_loss1, ref_out1), pp - 1: (ref_loss0, ref_out0)}.get(rank, (None, None))
    if expected[0] is None:
        assert loss is None and out is None, what
    else:
        assert torch.equal(loss, expected[0]), f"{what}: loss {loss} != {expected[0]}"
        assert torch.equal(out, expected[1]), f"{what}: outputs"
    with torch.no_grad():
        loss, out = pipe.step(*args, num_chunks=chunks, criterion=criterion, labels=labels, return_outputs=True)
    if expected[0] is not None:
        assert torch.equal(loss, expected[0]) and torch.equal(out, expected[1]), f"{what}: forward-only"
    return what


def check_dualpipev(rank, pp, group, chunks):
    stages = make_stages(2 * pp, seed=100 + pp)
    x, labels = make_data(2 * chunks + 1, seed=30 + chunks)
    pipe = DualPipeV((copy.deepcopy(stages[rank]), copy.deepcopy(stages[2 * pp - 1 - rank])), process_group=group)
    args, label_args = ((x,), (labels,)) if rank == 0 else ((), ())
    loss, out = pipe.step(*args, num_chunks=chunks, criterion=criterion, labels=label_args, return_outputs=True)
    reference = copy.deepcopy(stages)
    ref_loss, ref_out = sequential(reference, x, labels, chunks)
    what = f"DualPipeV pp={pp} chunks={chunks} rank={rank}"
    assert_grads_close(pipe.module[0], reference[rank], what)
    assert_grads_close(pipe.module[1], reference[2 * pp - 1 - rank], what)
    if rank == 0:
        assert torch.equal(loss, ref_loss) and torch.equal(out, ref_out), what
    else:
        assert loss is None and out is None, what
    with torch.no_grad():
        loss, out = pipe.step(*args, num_chunks=chunks, criterion=None, return_outputs=True)
    if rank == 0:
        assert loss is None and torch.equal(out, ref_out), f"{what}: forward-only"
    return what


def check_bad_chunks(rank, pp, group):
    pipe = DualPipe((Block().double(), Block().double()), process_group=group)
    x = torch.randn(64, DIM, dtype=torch.float64)
    for bad in (2 * pp - 2, 2 * pp + 1):
        with pytest.raises(ValueError, match=rf"num_chunks: DualPipe needs an even num_chunks >= 2 \* ranks = {2 * pp}"):
            pipe.step(x, num_chunks=bad, criterion=criterion, labels=(x,))
    vpipe = DualPipeV((Block().double(), Block().double()), process_group=group)
    with pytest.raises(ValueError, match=rf"num_chunks: DualPipeV needs num_chunks >= 2 \* ranks = {2 * pp}"):
        vpipe.step(x, num_chunks=2 * pp - 1, criterion=criterion, labels=(x,))
    return f"bad num_chunks pp={pp}"


def check_training(rank, pp, group):
    """A stack of 2*pp blocks trained under DualPipe with SGD: the loss falls, mirror copies stay equal."""
    stages = make_stages(pp, seed=7)
    pipe = DualPipe((copy.deepcopy(stages[rank]), copy.deepcopy(stages[pp - 1 - rank])), process_group=group)
    optimizer = torch.optim.SGD(pipe.parameters(), lr=0.3)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(32, DIM, generator=g, dtype=torch.float64)
    target = torch.tanh(x @ torch.randn(DIM, DIM, generator=g, dtype=torch.float64) / DIM ** 0.5)
    half = x.shape[0] // 2
    inputs = (x[:half],) if rank == 0 else (x[half:],) if rank == pp - 1 else ()
    labels = (target[half:],) if rank == 0 else (target[:half],) if rank == pp - 1 else ()
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        loss, _ = pipe.step(*inputs, num_chunks=2 * pp, criterion=criterion, labels=labels)
        pipe.sum_mirror_grads()
        optimizer.step()
        losses.append(None if loss is None else loss.item())
    if rank in (0, pp - 1):
        assert losses[-1] < 0.5 * losses[0], f"training did not converge: {losses}"
    partner = pp - 1 - rank
    mine = torch.cat([p.detach().reshape(-1) for p in pipe.module[0].parameters()])
    theirs = torch.empty_like(mine)
    peer = dist.get_global_rank(group, partner)
    theirs_copy = torch.cat([p.detach().reshape(-1) for p in pipe.module[1].parameters()])
    works = dist.batch_isend_irecv([dist.P2POp(dist.isend, theirs_copy, peer, group),
                                    dist.P2POp(dist.irecv, theirs, peer, group)])
    for w in works:
        w.wait()
    assert torch.equal(mine, theirs), "the two copies of a stage diverged"
    return f"training pp={pp}"


def check_overlap_hook(rank, pp, group, chunks):
    OverlapBlock.calls = 0
    what = check_dualpipe(rank, pp, group, chunks, block=OverlapBlock)
    overlapped = sum(op.overlapped for op in build_schedule("dualpipe", pp, chunks).ops[rank])
    assert overlapped > 0 and OverlapBlock.calls == overlapped, (OverlapBlock.calls, overlapped)
    return what + " with overlapped_forward_backward"


def world4_worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=4)
    world = dist.group.WORLD
    pair = [dist.new_group([0, 1]), dist.new_group([2, 3])][rank // 2]
    done = []
    for chunks in (8, 20):
        done.append(check_dualpipe(rank, 4, world, chunks))
    for chunks in (8, 13, 20):
        done.append(check_dualpipev(rank, 4, world, chunks))
    done.append(check_overlap_hook(rank, 4, world, 10))
    done.append(check_bad_chunks(rank, 4, world))
    sub_rank = rank % 2
    if rank < 2:  # the pair (0, 1) runs DualPipe, the pair (2, 3) DualPipeV, at the same time
        for chunks in (4, 10):
            done.append(check_dualpipe(sub_rank, 2, pair, chunks))
        done.append(check_training(sub_rank, 2, pair))
    else:
        for chunks in (4, 7, 10):
            done.append(check_dualpipev(sub_rank, 2, pair, chunks))
    done.append(check_training(rank, 4, world))
    dist.barrier()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(done, f)
    dist.destroy_process_group()


def test_dualpipe_and_dualpipev_match_sequential_on_4_processes(tmp_path):
    run_ranks(world4_worker, 4, str(tmp_path / "init"), str(tmp_path))
    done = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    assert all(len(d) == 11 for d in done), done
    assert "DualPipe pp=2 chunks=10 rank=1" in done[1] and "DualPipeV pp=2 chunks=7 rank=1" in done[3]


def test_dualpipev_single_process_matches_sequential():
    for chunks in (2, 3, 5):
        check_dualpipev(0, 1, None, chunks)


def test_bad_configurations_raise():
    with pytest.raises(ValueError, match="process_group: DualPipe needs an even number of ranks >= 2, got 1"):
        DualPipe((Block(), Block()))
    with pytest.raises(ValueError, match="modules: DualPipeV needs exactly two nn.Module stages"):
        DualPipeV((Block(), Block(), Block()))
    with pytest.raises(ValueError, match="batch_dim: expected a non-negative int"):
        DualPipeV((Block(), Block()), batch_dim=-1)
    pipe = DualPipeV((Block().double(), Block().double()))
    x = torch.randn(8, DIM, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"num_chunks: DualPipeV needs num_chunks >= 2 \* ranks = 2, got 1"):
        pipe.step(x, num_chunks=1, criterion=criterion, labels=(x,))
    with pytest.raises(TypeError, match="num_chunks: expected an int"):
        pipe.step(x, num_chunks=2.0, criterion=criterion, labels=(x,))
    with pytest.raises(ValueError, match="criterion: required on rank 0, where a route of DualPipeV ends, when grad"):
        pipe.step(x, num_chunks=2)
    with pytest.raises(ValueError, match=r"inputs\[0\]: needs at least num_chunks=16 rows"):
        pipe.step(x, num_chunks=16, criterion=criterion, labels=(x,))
    with pytest.raises(ValueError, match=r"labels\[0\]: needs at least num_chunks=4 rows"):
        pipe.step(x, num_chunks=4, criterion=criterion, labels=(x[:3],))
    with pytest.raises(ValueError, match="inputs: rank 0 starts a route of DualPipeV and needs inputs"):
        pipe.step(num_chunks=2, criterion=criterion, labels=(x,))
    with pytest.raises(TypeError, match="labels: expected a tuple or list of tensors"):
        pipe.step(x, num_chunks=2, criterion=criterion, labels=x)


def test_chunks_split_along_batch_dim():
    stages = make_stages(2, seed=5)
    pipe = DualPipeV(tuple(copy.deepcopy(stages)), batch_dim=1)
    x, labels = torch.randn(2, 9, DIM, dtype=torch.float64), torch.randn(2, 9, DIM, dtype=torch.float64)
    loss, out = pipe.step(x, num_chunks=3, criterion=criterion, labels=(labels,), return_outputs=True)
    losses, outputs = [], []
    for xc, lc in zip(x.tensor_split(3, 1), labels.tensor_split(3, 1)):
        h = stages[1](stages[0](xc))
        losses.append(criterion(h, lc).detach())
        outputs.append(h.detach())
    assert torch.equal(loss, torch.stack(losses).sum()) and torch.equal(out, torch.cat(outputs, 1))
