"""Runs one rank's part of a two-module pipeline Schedule with real modules and real messages.
DualPipe and DualPipeV are this class with their own schedule."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from deepseek_ext.pipeline.agreement import check_agreement, check_routes, describe_tensors, gather_descriptors
from deepseek_ext.pipeline.comm import PeerLink
from deepseek_ext.pipeline.schedule import BACKWARD, FORWARD, Pass, Schedule
from deepseek_ext.pipeline.weight_grad_store import WeightGradStore

ACTIVATION, GRADIENT = 0, 1


def _as_tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _floating(tensors: tuple) -> tuple[torch.Tensor, ...]:
    return tuple(t for t in tensors if torch.is_tensor(t) and t.is_floating_point())


def _check_same_batch(tensors: tuple, batch: int, name: str, dim: int) -> None:
    for i, t in enumerate(tensors):
        if t.shape[dim] != batch:
            raise ValueError(f"{name}[{i}]: batch {t.shape[dim]} along batch_dim={dim} != {batch}, "
                             f"the batch of inputs[0]")


def split_chunks(tensors: tuple, num_chunks: int, dim: int, name: str) -> list[tuple]:
    """Chunk c of every tensor, as one tuple per chunk (torch.tensor_split along dim)."""
    for i, t in enumerate(tensors):
        if not torch.is_tensor(t):
            raise TypeError(f"{name}[{i}]: expected a tensor, got {type(t).__name__}")
        if t.dim() <= dim or t.shape[dim] < num_chunks:
            raise ValueError(f"{name}[{i}]: needs at least num_chunks={num_chunks} rows along batch_dim={dim}, "
                             f"got shape {tuple(t.shape)}")
    pieces = [torch.tensor_split(t, num_chunks, dim) for t in tensors]
    return [tuple(p[c] for p in pieces) for c in range(num_chunks)]


class TwoStagePipeline(nn.Module):
    """Base of DualPipe/DualPipeV: holds this rank's two stage modules and runs step().

    Stages are any nn.Module taking the previous stage's outputs (a tensor or a tuple of
    tensors) as positional arguments. For zero-bubble weight-gradient deferral their layers go
    through WeightGradStore (e.g. DeferredWeightGradLinear); other layers compute weight
    gradients inside B as usual. A stage class may define the classmethod

        overlapped_forward_backward(forward_module, forward_inputs, backward_module,
                                    backward_tensors, backward_grads) -> forward outputs

    which must run ``forward_module(*forward_inputs)`` and
    ``torch.autograd.backward(backward_tensors, backward_grads)`` interleaved as it likes (e.g.
    one chunk's MoE dispatch/combine under the other's compute); the F&B ops of the schedule
    call it when both modules are of that class, and run F then B otherwise.
    """

    # set by the subclass: its name, check_config(num_ranks, num_chunks or None), build_schedule(num_ranks, num_chunks)
    pipeline_name: str
    check_config: Callable[[int, int | None], None]
    build_schedule: Callable[[int, int], Schedule]

    def __init__(self, modules: Sequence[nn.Module], process_group=None, batch_dim: int = 0):
        super().__init__()
        if len(modules) != 2 or not all(isinstance(m, nn.Module) for m in modules):
            raise ValueError(f"modules: {self.pipeline_name} needs exactly two nn.Module stages, got {modules!r}")
        if not isinstance(batch_dim, int) or batch_dim < 0:
            raise ValueError(f"batch_dim: expected a non-negative int, got {batch_dim!r}")
        self.module = nn.ModuleList(modules)
        self.group = process_group
        self.batch_dim = batch_dim
        if dist.is_available() and dist.is_initialized():
            self.rank, self.num_ranks = dist.get_rank(process_group), dist.get_world_size(process_group)
        elif process_group is None:
            self.rank, self.num_ranks = 0, 1  # one process, no torch.distributed
        else:
            raise ValueError("process_group: given, but torch.distributed is not initialized")
        self.check_config(self.num_ranks, None)

    def _device(self) -> torch.device:
        first = next(self.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    def step(self, *inputs: torch.Tensor, num_chunks: int, criterion: Callable | None = None,
             labels: tuple = (), return_outputs: bool = False):
        """One pipelined pass over a batch split into num_chunks micro-batches along batch_dim.

        ``inputs`` are read on the ranks where a route starts and ``labels`` on the ranks where
        one ends (see the subclass); elsewhere they are ignored. With grad enabled every chunk's
        ``criterion(*outputs, *labels)`` is backpropagated and the gradients accumulate in the
        stage parameters (the gradient of the sum of the chunk losses). Returns
        ``(loss, outputs)`` on a rank where a route ends: loss = the SUM of its chunk losses
        (None without criterion), outputs = the last stage's outputs concatenated along batch_dim
        (None unless return_outputs); ``(None, None)`` on the other ranks.
        """
        training = torch.is_grad_enabled()
        schedule, error, chunk_inputs, chunk_labels = None, None, {}, {}
        given_inputs = given_labels = None
        try:  # this rank's own checks; their error is shared with the other ranks before raising
            if not isinstance(num_chunks, int) or isinstance(num_chunks, bool):
                raise TypeError(f"num_chunks: expected an int, got {type(num_chunks).__name__}")
            self.check_config(self.num_ranks, num_chunks)
            if training and criterion is None:
                raise ValueError("criterion: required when grad is enabled (the backward starts from the loss)")
            if not isinstance(labels, (tuple, list)):
                raise TypeError(f"labels: expected a tuple of tensors, got {type(labels).__name__}")
            schedule = self.build_schedule(self.num_ranks, num_chunks)
            for route, positions in enumerate(schedule.routes):
                if positions[0][0] == self.rank:
                    if not inputs:
                        raise ValueError(f"inputs: rank {self.rank} starts a route of {self.pipeline_name} "
                                         "and needs inputs")
                    chunk_inputs[route] = split_chunks(inputs, schedule.chunks_per_route, self.batch_dim, "inputs")
                    _check_same_batch(inputs, inputs[0].shape[self.batch_dim], "inputs", self.batch_dim)
                    given_inputs = describe_tensors(inputs, self.batch_dim)
                if positions[-1][0] == self.rank and criterion is not None:
                    chunk_labels[route] = split_chunks(tuple(labels), schedule.chunks_per_route, self.batch_dim,
                                                       "labels")
                    given_labels = describe_tensors(labels, self.batch_dim)
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
            error = exc
        if self.num_ranks == 1 and error is not None:
            raise error  # nobody to tell: the original exception as it was
        descriptor = {"ok": error is None, "error": None if error is None else f"{error}",
                      "num_chunks": num_chunks if isinstance(num_chunks, int) else repr(num_chunks),
                      "batch_dim": self.batch_dim, "training": training,
                      "inputs": given_inputs, "labels": given_labels}
        descriptors = gather_descriptors(descriptor, self.group, self.num_ranks, self._device())
        problem = check_agreement(descriptors, self.pipeline_name)
        if problem is None:  # every rank passed its checks with the same num_chunks: schedule is set
            problem = check_routes(descriptors, schedule.routes, self.pipeline_name)
        if problem is not None:
            raise ValueError(problem) from error
        if not training:
            schedule = schedule.forward_only()
        run = _StepRun(self, schedule, criterion, return_outputs)
        run.chunk_inputs, run.chunk_labels = chunk_inputs, chunk_labels
        return run.execute()


class _StepRun:
    """State of one step() on one rank."""

    def __init__(self, pipeline: TwoStagePipeline, schedule: Schedule, criterion, return_outputs: bool):
        self.p = pipeline
        self.schedule = schedule
        self.criterion = criterion
        self.return_outputs = return_outputs
        self.link = PeerLink(pipeline.group, pipeline._device())
        self.chunk_inputs: dict[int, list[tuple]] = {}
        self.chunk_labels: dict[int, list[tuple]] = {}
        self.local: dict[tuple, tuple] = {}        # hand-overs between this rank's own modules
        self.saved: dict[tuple, tuple] = {}        # (module, chunk) -> (inputs, tensors to backpropagate)
        self.losses: dict[int, list] = {}
        self.outputs: dict[int, list] = {}

    # --- moving tensors along a route ---------------------------------------------------
    def _neighbor(self, route: int, position: int) -> int:
        return self.schedule.routes[route][position][0]

    def _take_activation(self, route: int, position: int, chunk: int) -> tuple:
        source = self._neighbor(route, position - 1)
        if source == self.p.rank:
            return self.local.pop((ACTIVATION, route, position, chunk))
        return self.link.receive(source, 2 * route + ACTIVATION)

    def _give_activation(self, route: int, position: int, chunk: int, outputs: tuple) -> None:
        target = self._neighbor(route, position + 1)
        if target == self.p.rank:
            self.local[(ACTIVATION, route, position + 1, chunk)] = tuple(t.detach() for t in outputs)
        else:
            self.link.send(outputs, target, 2 * route + ACTIVATION, with_header=True)

    def _take_gradient(self, route: int, position: int, chunk: int, outputs: tuple) -> tuple:
        source = self._neighbor(route, position + 1)
        if source == self.p.rank:
            return self.local.pop((GRADIENT, route, position, chunk))
        return self.link.receive_like(_floating(outputs), source, 2 * route + GRADIENT)

    def _give_gradient(self, route: int, position: int, chunk: int, grads: tuple) -> None:
        target = self._neighbor(route, position - 1)
        if target == self.p.rank:
            self.local[(GRADIENT, route, position - 1, chunk)] = grads
        else:
            self.link.send(grads, target, 2 * route + GRADIENT, with_header=False)

    # --- passes ---------------------------------------------------------------------------
    def _forward_inputs(self, p: Pass) -> tuple:
        route, position = self.schedule.locate(self.p.rank, p.module)
        if position == 0:
            return self.chunk_inputs[route][p.chunk]
        received = self._take_activation(route, position, p.chunk)
        if not torch.is_grad_enabled():
            return received
        return tuple(t.requires_grad_() if t.is_floating_point() else t for t in received)

    def _forward_done(self, p: Pass, inputs: tuple, outputs) -> None:
        outputs = _as_tuple(outputs)
        route, position = self.schedule.locate(self.p.rank, p.module)
        if position < len(self.schedule.routes[route]) - 1:
            self._give_activation(route, position, p.chunk, outputs)
            backprop = outputs
        else:
            if self.return_outputs:
                self.outputs.setdefault(route, []).append(tuple(t.detach() for t in outputs))
            backprop = ()
            if self.criterion is not None:
                loss = self.criterion(*outputs, *self.chunk_labels[route][p.chunk])
                self.losses.setdefault(route, []).append(loss.detach())
                backprop = (loss,)
        if torch.is_grad_enabled():
            self.saved[(p.module, p.chunk)] = (inputs, backprop)

    def _backward_operands(self, p: Pass) -> tuple[tuple, tuple, tuple]:
        """(inputs, tensors, grads) of the pass: backpropagate grads through tensors."""
        inputs, tensors = self.saved.pop((p.module, p.chunk))
        route, position = self.schedule.locate(self.p.rank, p.module)
        if position == len(self.schedule.routes[route]) - 1:
            return inputs, tensors, (None,) * len(tensors)
        grads = self._take_gradient(route, position, p.chunk, tensors)
        pairs = [(t, g) for t, g in zip(_floating(tensors), grads) if t.requires_grad]
        return inputs, tuple(t for t, _ in pairs), tuple(g for _, g in pairs)

    def _backward_done(self, p: Pass, inputs: tuple) -> None:
        route, position = self.schedule.locate(self.p.rank, p.module)
        if position > 0:
            grads = tuple(t.grad if t.grad is not None else torch.zeros_like(t) for t in _floating(inputs))
            self._give_gradient(route, position, p.chunk, grads)

    def _run_forward(self, p: Pass) -> None:
        inputs = self._forward_inputs(p)
        self._forward_done(p, inputs, self.p.module[p.module](*inputs))

    def _run_backward(self, p: Pass) -> None:
        inputs, tensors, grads = self._backward_operands(p)
        WeightGradStore.enabled = p.defer_weight_grad
        try:
            torch.autograd.backward(tensors, grads)
        finally:
            WeightGradStore.enabled = False
        if p.defer_weight_grad:
            WeightGradStore.flush()
        self._backward_done(p, inputs)

    def _run_overlapped(self, forward: Pass, backward: Pass) -> None:
        """The F&B op: a stage class with overlapped_forward_backward interleaves the two itself."""
        f_module, b_module = self.p.module[forward.module], self.p.module[backward.module]
        hook = getattr(type(f_module), "overlapped_forward_backward", None)
        if hook is None or type(f_module) is not type(b_module):
            self._run_forward(forward)
            self._run_backward(backward)
            return
        f_inputs = self._forward_inputs(forward)
        b_inputs, tensors, grads = self._backward_operands(backward)
        outputs = hook(f_module, f_inputs, b_module, tensors, grads)
        self._forward_done(forward, f_inputs, outputs)
        self._backward_done(backward, b_inputs)

    def execute(self):
        WeightGradStore.clear()
        try:
            for op in self.schedule.ops[self.p.rank]:
                if op.overlapped:
                    self._run_overlapped(*op.passes)
                    continue
                p = op.passes[0]
                if p.kind == FORWARD:
                    self._run_forward(p)
                elif p.kind == BACKWARD:
                    self._run_backward(p)
                else:
                    WeightGradStore.pop()
            self.link.wait_sends()
        finally:
            WeightGradStore.clear()
        return self._result()

    def _result(self):
        ending = [r for r, positions in enumerate(self.schedule.routes) if positions[-1][0] == self.p.rank]
        if not ending:
            return None, None
        (route,) = ending  # in DualPipe and DualPipeV at most one route ends on a rank
        loss = torch.stack(self.losses[route]).sum() if self.criterion is not None else None
        outputs = None
        if self.return_outputs:
            chunks = self.outputs[route]
            merged = tuple(torch.cat([c[i] for c in chunks], self.p.batch_dim) for i in range(len(chunks[0])))
            outputs = merged[0] if len(merged) == 1 else merged
        return loss, outputs
