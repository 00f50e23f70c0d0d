"""Runs one rank's part of a two-module pipeline Schedule with real modules and real messages.
DualPipe and DualPipeV are this class with their own schedule."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from deepseek_ext.pipeline.agreement import check_agreement, check_routes, describe_tensors
from deepseek_ext.pipeline.comm import PeerLink
from deepseek_ext.pipeline.schedule import BACKWARD, FORWARD, Pass, Schedule
from deepseek_ext.pipeline.step_exchange import exchange_descriptors, resolve_agreement_timeout
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


def pipeline_ranks(rank_mapping, num_ranks: int) -> list[int]:
    """rank_mapping (the pipeline rank of each process-group rank, None: the same) checked."""
    if rank_mapping is None:
        return list(range(num_ranks))
    if not isinstance(rank_mapping, (list, tuple)) or any(type(r) is not int for r in rank_mapping) \
            or sorted(rank_mapping) != list(range(num_ranks)):
        raise ValueError(f"rank_mapping: expected the pipeline rank of each of the {num_ranks} process-group ranks "
                         f"(a permutation of 0..{num_ranks - 1}), got {rank_mapping!r}")
    return list(rank_mapping)


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
    gradients inside B as usual. A stage class may define upstream DualPipe's classmethod

        overlapped_forward_backward(module0, inputs0, criterion0, labels0,
                                    module1, loss1, outputs1, output_grads1) -> (outputs0, loss0)

    which runs the forward ``outputs0 = module0(*inputs0)`` (and ``loss0 = criterion0(*outputs0,
    *labels0)`` when criterion0 is given: the chunk ends its route here; else loss0 is None)
    and the backward of another chunk, ``loss1.backward()`` when loss1 is given, else
    ``torch.autograd.backward(outputs1, output_grads1)``, interleaved as it likes (e.g. one
    chunk's MoE dispatch/combine under the other's compute). The F&B ops of the schedule call it
    when both modules are of that class, and run F then B otherwise.

    ``rank_mapping[g]`` is the pipeline rank of process-group rank g (default: the same).
    ``agreement_timeout`` bounds, in seconds, how long the ranks wait for each other at the
    start of a step (default $DEEPSEEK_EXT_PIPELINE_TIMEOUT, else 120): past it every waiting
    rank raises a TimeoutError naming the ranks that did not arrive.
    """

    # set by the subclass: its name, check_config(num_ranks, num_chunks or None), build_schedule(num_ranks, num_chunks)
    pipeline_name: str
    check_config: Callable[[int, int | None], None]
    build_schedule: Callable[[int, int], Schedule]
    # what step() returns as the loss of a route's chunks: their "sum", or "none" (one loss per chunk)
    loss_reduction = "sum"

    def __init__(self, modules: Sequence[nn.Module], process_group=None, batch_dim: int = 0, *,
                 rank_mapping: Sequence[int] | None = None, agreement_timeout: float | None = None):
        super().__init__()
        if len(modules) != 2 or not all(isinstance(m, nn.Module) for m in modules):
            raise ValueError(f"modules: {self.pipeline_name} needs exactly two nn.Module stages, got {modules!r}")
        if not isinstance(batch_dim, int) or batch_dim < 0:
            raise ValueError(f"batch_dim: expected a non-negative int, got {batch_dim!r}")
        self.module = nn.ModuleList(modules)
        self.group = process_group
        self.batch_dim = batch_dim
        if dist.is_available() and dist.is_initialized():
            self.group_rank, self.num_ranks = dist.get_rank(process_group), dist.get_world_size(process_group)
            if self.group_rank < 0:
                raise ValueError("process_group: this process is not one of its ranks")
        elif process_group is None:
            self.group_rank, self.num_ranks = 0, 1  # one process, no torch.distributed
        else:
            raise ValueError("process_group: given, but torch.distributed is not initialized")
        self.check_config(self.num_ranks, None)
        self.rank_mapping = pipeline_ranks(rank_mapping, self.num_ranks)
        self.rank = self.rank_mapping[self.group_rank]  # this process's pipeline rank, the one schedules name
        self.group_ranks = sorted(range(self.num_ranks), key=self.rank_mapping.__getitem__)  # pipeline -> group
        self.agreement_timeout = resolve_agreement_timeout(agreement_timeout)

    def global_rank(self, pipeline_rank: int) -> int:
        """The torch.distributed (world) rank of a pipeline rank, for point-to-point messages."""
        group_rank = self.group_ranks[pipeline_rank]
        return dist.get_global_rank(self.group, group_rank) if self.group is not None else group_rank

    def _device(self) -> torch.device:
        first = next(self.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    def step(self, *inputs: torch.Tensor, num_chunks: int, criterion: Callable | None = None,
             labels: tuple = (), return_outputs: bool = False):
        """One pipelined pass over a batch split into num_chunks micro-batches along batch_dim.

        ``inputs`` are read on the ranks where a route starts and ``labels`` on the ranks where
        one ends (see the subclass); elsewhere they are ignored. With grad enabled every chunk's
        ``criterion(*outputs, *labels)`` is backpropagated and the gradients accumulate in the
        stage parameters (the gradient of the sum of the chunk losses); ``criterion`` is needed
        only where a route ends. Returns ``(loss, outputs)`` on a rank where a route ends:
        loss = the SUM of its chunk losses (with loss_reduction "none": the vector of them; None
        without criterion), outputs = the last stage's outputs concatenated along batch_dim
        (None unless return_outputs); ``(None, None)`` on the other ranks.

        Raises ValueError on every rank when a rank's call is bad or the ranks' calls disagree,
        and TimeoutError when a rank does not start the step within agreement_timeout.
        """
        training = torch.is_grad_enabled()
        schedule, error, chunk_inputs, chunk_labels = None, None, {}, {}
        given_inputs = given_labels = None
        try:  # this rank's own checks; their error is shared with the other ranks before raising
            if not isinstance(num_chunks, int) or isinstance(num_chunks, bool):
                raise TypeError(f"num_chunks: expected an int, got {type(num_chunks).__name__}")
            self.check_config(self.num_ranks, num_chunks)
            if not isinstance(labels, (tuple, list)):
                raise TypeError(f"labels: expected a tuple or list of tensors, got {type(labels).__name__}")
            schedule = self.build_schedule(self.num_ranks, num_chunks)
            if training and criterion is None and any(route[-1][0] == self.rank for route in schedule.routes):
                raise ValueError(f"criterion: required on rank {self.rank}, where a route of {self.pipeline_name} "
                                 "ends, when grad is enabled (the backward starts from the loss)")
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
                      "batch_dim": self.batch_dim, "training": training, "rank_mapping": self.rank_mapping,
                      "inputs": given_inputs, "labels": given_labels}
        descriptors = exchange_descriptors(descriptor, self.group, self.group_rank, self.num_ranks,
                                           self.agreement_timeout, self.pipeline_name)
        problem = check_agreement(descriptors, self.pipeline_name)
        if problem is None:  # every rank passed its checks with the same num_chunks and mapping: schedule is set
            problem = check_routes([descriptors[g] for g in self.group_ranks], schedule.routes, self.pipeline_name)
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
        self.link = PeerLink(pipeline.group, pipeline._device(), pipeline.global_rank)
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

    def _ends_route(self, p: Pass) -> bool:
        route, position = self.schedule.locate(self.p.rank, p.module)
        return position == len(self.schedule.routes[route]) - 1

    def _loss_inputs(self, p: Pass) -> tuple[Callable | None, tuple]:
        """(criterion, labels of the chunk) when the forward pass p ends its route, else (None, ())."""
        if not self._ends_route(p) or self.criterion is None:
            return None, ()
        return self.criterion, self.chunk_labels[self.schedule.locate(self.p.rank, p.module)[0]][p.chunk]

    def _forward_done(self, p: Pass, inputs: tuple, outputs, loss: torch.Tensor | None = None) -> None:
        """Hands the outputs on; on the route's last stage computes the loss (unless given)."""
        outputs = _as_tuple(outputs)
        route, position = self.schedule.locate(self.p.rank, p.module)
        if position < len(self.schedule.routes[route]) - 1:
            self._give_activation(route, position, p.chunk, outputs)
            backprop = outputs
        else:
            if self.return_outputs:
                self.outputs.setdefault(route, []).append(tuple(t.detach() for t in outputs))
            backprop = ()
            criterion, labels = self._loss_inputs(p)
            if criterion is not None:
                loss = criterion(*outputs, *labels) if loss is None else loss
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
        criterion, labels = self._loss_inputs(forward)
        b_inputs, tensors, grads = self._backward_operands(backward)
        # where the backward chunk ended its route, tensors is (loss,): its backward starts from the loss
        loss1, b_outputs, b_grads = (tensors[0], [], []) if self._ends_route(backward) \
            else (None, list(tensors), list(grads))
        outputs, loss = hook(f_module, list(f_inputs), criterion, list(labels), b_module, loss1, b_outputs, b_grads)
        self._forward_done(forward, f_inputs, outputs, loss)
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
        loss = None
        if self.criterion is not None:
            loss = torch.stack(self.losses[route])
            loss = loss.sum() if self.p.loss_reduction == "sum" else loss
        outputs = None
        if self.return_outputs:
            chunks = self.outputs[route]
            merged = tuple(torch.cat([c[i] for c in chunks], self.p.batch_dim) for i in range(len(chunks[0])))
            outputs = merged[0] if len(merged) == 1 else merged
        return loss, outputs
