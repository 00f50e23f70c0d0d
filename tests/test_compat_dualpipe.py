"""deepseek_ext.compat.dualpipe runs the logic of upstream DualPipe's examples/example_dualpipe.py
and example_dualpipev.py (commit 3da1bbe) on CPU gloo ranks, with upstream's assertions: the
per-chunk losses and outputs bitwise equal to a one-process reference, the gradients within
cal_diff < 1e-13. Adapted for the CPU: gloo instead of NCCL, no CUDA device lines, a smaller
seq_len/hidden_size (the same 20 chunks of 3), and the gradient exchange by all_gather (gloo's
all_gather_into_tensor does not take a stacked output)."""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from deepseek_ext.compat.dualpipe import (DualPipe, DualPipeV, WeightGradStore, run_backward, set_p2p_tensor_dtype,
                                          set_p2p_tensor_shapes)
from deepseek_ext.pipeline import build_schedule
from deepseek_ext.reference.metrics import calc_diff
from gloo_ranks import run_ranks

NUM_CHUNKS, MICRO_BATCH, SEQ_LEN, HIDDEN = 20, 3, 32, 128  # upstream: seq_len 256, hidden_size 512


class DeferredLinearFunction(torch.autograd.Function):
    """x @ w.T whose weight gradient waits in WeightGradStore while it is enabled (the example's LinearFunc)."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)

        def accumulate_weight_grad():
            weight.grad += grad_out.flatten(0, -2).T @ x.flatten(0, -2)

        if WeightGradStore.enabled:
            WeightGradStore.put(accumulate_weight_grad)
        else:
            accumulate_weight_grad()
        return grad_out @ weight, None


class DeferredLinear(nn.Linear):
    def forward(self, x):
        return DeferredLinearFunction.apply(x, self.weight)


class Stage(nn.Module):
    """hidden -> 4*hidden -> GELU -> hidden, no biases, with the example's F&B hook."""

    hook_calls = 0  # not in the example: shows the F&B ops went through the hook

    def __init__(self, hidden):
        super().__init__()
        self.up = DeferredLinear(hidden, 4 * hidden, bias=False)
        self.down = DeferredLinear(4 * hidden, hidden, bias=False)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))

    @classmethod
    def overlapped_forward_backward(cls, module0, inputs0, criterion0, labels0, module1, loss1, outputs1,
                                    output_grads1):
        """The example's strategy: the forward (and its loss) first, then the other chunk's backward."""
        cls.hook_calls += 1
        outputs0 = module0(*inputs0)
        outputs0 = [outputs0] if isinstance(outputs0, torch.Tensor) else outputs0
        loss0 = criterion0(*outputs0, *labels0) if criterion0 is not None else None
        if loss1 is not None:
            loss1.backward()
            loss1.detach_()
        else:
            run_backward(outputs1, output_grads1)
        return outputs0, loss0


def criterion(output, target):
    return F.mse_loss(output, target).clone()


def reference_step(x, labels, model, chunks):
    """Every chunk forward and backward in turn: (per-chunk losses, concatenated outputs)."""
    outputs, losses = [], []
    for micro_x, micro_labels in zip(x.chunk(chunks), labels.chunk(chunks)):
        micro_out = model(micro_x)
        loss = criterion(micro_out, micro_labels)
        loss.backward()
        outputs.append(micro_out)
        losses.append(loss)
    return torch.stack(losses), torch.cat(outputs)


def _setup(rank, world, init_file, num_stages):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(233)
    set_p2p_tensor_shapes([(MICRO_BATCH, SEQ_LEN, HIDDEN)])
    set_p2p_tensor_dtype(torch.float32)
    full_model = nn.Sequential(*[Stage(HIDDEN) for _ in range(num_stages)])
    x = torch.randn(NUM_CHUNKS * MICRO_BATCH, SEQ_LEN, HIDDEN)
    labels = torch.randn(NUM_CHUNKS * MICRO_BATCH, SEQ_LEN, HIDDEN)
    return full_model, x, labels


def _local_copies(full_model, first, second):
    """The rank's two stages as fresh modules loaded with the full model's weights (as the example does)."""
    own_reference = nn.Sequential(full_model[first], full_model[second])
    local = nn.Sequential(Stage(HIDDEN), Stage(HIDDEN))
    local[0].load_state_dict(own_reference[0].state_dict())
    local[1].load_state_dict(own_reference[1].state_dict())
    return local, own_reference


def _check_grads_then_inference(rank, out_dir, model, x, labels, local, own_reference, expected):
    """Upstream's gradient check, then its inference step; expected: the (loss, outputs) this rank returns, or None."""
    for p, p_ref in zip(local.parameters(), own_reference.parameters()):
        assert calc_diff(p.grad, p_ref.grad) < 1e-13
    model.zero_grad()
    with torch.no_grad():
        loss, outputs = model.step(x, num_chunks=NUM_CHUNKS, criterion=criterion, labels=(labels,),
                                   return_outputs=True)
    if expected is None:
        assert loss is None and outputs is None
    else:
        assert torch.equal(loss, expected[0]) and torch.equal(outputs, expected[1])
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"loss_shape": None if loss is None else list(loss.shape), "hook_calls": Stage.hook_calls}, f)
    dist.barrier()
    dist.destroy_process_group()


def dualpipe_example(rank, pp, init_file, out_dir):
    is_first, is_last = rank == 0, rank == pp - 1
    full_model, full_x, full_labels = _setup(rank, pp, init_file, pp)
    loss_ref, output_ref = reference_step(full_x, full_labels, full_model, NUM_CHUNKS)
    local, own_reference = _local_copies(full_model, rank, pp - 1 - rank)
    model = DualPipe(local)

    # the first rank feeds the first half of the batch and scores the second, the last rank the other way round
    x = full_x.chunk(2)[0] if is_first else full_x.chunk(2)[1] if is_last else None
    labels = full_labels.chunk(2)[1] if is_first else full_labels.chunk(2)[0] if is_last else None
    half = 1 if is_first else 0 if is_last else None
    expected = None if half is None else (loss_ref.chunk(2)[half], output_ref.chunk(2)[half])

    loss, outputs = model.step(x, num_chunks=NUM_CHUNKS, criterion=criterion, labels=(labels,), return_outputs=False)
    assert loss is None if expected is None else torch.equal(loss, expected[0])
    assert outputs is None

    # each stage exists twice (rank r and pp-1-r): add the mirror copy's gradient before comparing
    for p0, p1 in zip(local[0].parameters(), local[1].parameters()):
        p0_all, p1_all = [torch.empty_like(p0) for _ in range(pp)], [torch.empty_like(p1) for _ in range(pp)]
        dist.all_gather(p0_all, p0.grad)
        dist.all_gather(p1_all, p1.grad)
        p0.grad += p1_all[pp - 1 - rank]
        p1.grad += p0_all[pp - 1 - rank]
    _check_grads_then_inference(rank, out_dir, model, x, labels, local, own_reference, expected)


def dualpipev_example(rank, pp, init_file, out_dir):
    is_first = rank == 0
    full_model, x, labels = _setup(rank, pp, init_file, 2 * pp)
    loss_ref, output_ref = reference_step(x, labels, full_model, NUM_CHUNKS)
    local, own_reference = _local_copies(full_model, rank, 2 * pp - 1 - rank)
    model = DualPipeV(local)
    if not is_first:
        x = labels = None

    loss, outputs = model.step(x, num_chunks=NUM_CHUNKS, criterion=criterion, labels=(labels,), return_outputs=False)
    assert torch.equal(loss, loss_ref) if is_first else loss is None
    assert outputs is None
    _check_grads_then_inference(rank, out_dir, model, x, labels, local, own_reference,
                                (loss_ref, output_ref) if is_first else None)


def _results(tmp_path, method, pp):
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(pp)]
    overlapped = [sum(op.overlapped for op in ops) for ops in build_schedule(method, pp, NUM_CHUNKS).ops]
    assert [r["hook_calls"] for r in results] == overlapped
    return [r["loss_shape"] for r in results]


@pytest.mark.parametrize("pp", [2, 4])
def test_example_dualpipe(tmp_path, pp):
    run_ranks(dualpipe_example, pp, pp, str(tmp_path / "init"), str(tmp_path))
    loss_shapes = _results(tmp_path, "dualpipe", pp)
    assert loss_shapes == [[NUM_CHUNKS // 2]] + [None] * (pp - 2) + [[NUM_CHUNKS // 2]]  # one loss per chunk


@pytest.mark.parametrize("pp", [1, 2, 4])
def test_example_dualpipev(tmp_path, pp):
    run_ranks(dualpipev_example, pp, pp, str(tmp_path / "init"), str(tmp_path))
    assert _results(tmp_path, "dualpipev", pp) == [[NUM_CHUNKS]] + [None] * (pp - 1)
