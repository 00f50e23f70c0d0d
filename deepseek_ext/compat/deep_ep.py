"""DeepEP's Buffer (intranode normal mode) over dx.ep.Buffer: ``from deepseek_ext.compat import deep_ep``
in place of ``import deep_ep``.

Follows github.com/deepseek-ai/DeepEP at tag v1.2.1 (commit 9af0e0d, 2025-09-15):

- ``Buffer(group, num_nvl_bytes=0, num_rdma_bytes=0, low_latency_mode=False, num_qps_per_rank=24,
  allow_nvlink_for_low_latency_mode=True, allow_mnnvl=False, explicitly_destroy=False, comm=None)``;
- ``get_dispatch_layout(topk_idx, num_experts, previous_event=None, async_finish=False,
  allocate_on_comm_stream=False) -> (num_tokens_per_rank, None, num_tokens_per_expert,
  is_token_in_rank, event)``, counts int32;
- ``dispatch(x | (x, x_scales), handle=None, num_tokens_per_rank=None, num_tokens_per_rdma_rank=None,
  is_token_in_rank=None, num_tokens_per_expert=None, topk_idx=None, topk_weights=None,
  expert_alignment=1, num_worst_tokens=0, config=None, previous_event=None, async_finish=False,
  allocate_on_comm_stream=False) -> (recv_x, recv_topk_idx, recv_topk_weights,
  num_recv_tokens_per_expert_list, handle, event)``; with ``handle`` (cached mode) only recv_x
  comes back, the rest None;
- ``combine(x, handle, topk_weights=None, bias=None, config=None, previous_event=None,
  async_finish=False, allocate_on_comm_stream=False) -> (combined_x, combined_topk_weights, event)``;
- ``EventOverlap`` (``current_stream_wait()``, ``with event: ...``), ``Buffer.set_num_sms`` (even),
  ``Buffer.capture()``, ``destroy()`` (with explicitly_destroy=True).

As in DeepEP, received tokens are token-major (source rank, then token order), received topk_idx
are local expert ids (-1 elsewhere) with weight 0 there, expert_alignment only rounds up the
per-expert counts, and combine sums without weights (fp32 over ranks, cast back) and sums the
returned topk_weights.

Differences: dx.ep.Buffer needs the hidden size and the expert count, which DeepEP's constructor
does not take, so one is created (collectively, like DeepEP's first call) per (hidden,
num_experts) at the first dispatch; ``num_nvl_bytes`` bounds its tokens per rank at
``num_nvl_bytes // (num_ranks * hidden * 2)`` (or pass ``max_tokens_per_rank=``; ``backend=`` is
passed on too). The layout tensors given to dispatch must describe topk_idx: those that
get_dispatch_layout returned are used as they are, others are recomputed from topk_idx. Checks
that depend on a rank's data run in dx.ep.Buffer, which makes every rank raise together (its
messages call combine's x ``y``). The handle is an opaque object, not DeepEP's tuple.
``previous_event`` is waited for on the current stream (our communication stream follows the
current stream). On the CPU events are None and ``current_stream_wait`` returns at once (the
work is done). ``config`` and ``allocate_on_comm_stream`` are accepted and have no effect. Not
provided: low-latency mode, dispatch without top-k, ``num_worst_tokens`` (use
dx.ep.Buffer(worst_case=True)), combine's ``bias``, the internode entry points, ``comm``
(mpi4py): they raise NotImplementedError.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from deepseek_ext import ep
from deepseek_ext.ops import ep as ops
from deepseek_ext.ops._checks import check_shape, check_tensor
from deepseek_ext.reference.quant import ceil_div

_BF16_BYTES = 2

__all__ = ["Buffer", "EventOverlap"]


class EventOverlap:
    """A communication event: current_stream_wait() makes the current stream wait for it; leaving a
    ``with`` block does the same. event is a torch.cuda.Event, or None when the work is done."""

    def __init__(self, event: torch.cuda.Event | None = None, extra_tensors: tuple | None = None):
        self.event = event
        self.extra_tensors = extra_tensors

    def current_stream_wait(self) -> None:
        if self.event is not None:
            torch.cuda.current_stream().wait_event(self.event)

    def __enter__(self) -> "EventOverlap":
        return self

    def __exit__(self, *exc_info) -> None:
        self.current_stream_wait()


@dataclass
class _Handle:
    """What combine and a cached dispatch need: the engine, its handle and the routing sent."""
    engine: ep.Buffer
    handle: ep.Handle
    layout: ep.Layout
    topk_idx: torch.Tensor
    topk_weights: torch.Tensor
    num_recv: int


class Buffer:
    """DeepEP's communication buffer for intranode normal-mode dispatch and combine."""

    num_sms: int = 20

    def __init__(self, group: dist.ProcessGroup | None, num_nvl_bytes: int = 0, num_rdma_bytes: int = 0,
                 low_latency_mode: bool = False, num_qps_per_rank: int = 24,
                 allow_nvlink_for_low_latency_mode: bool = True, allow_mnnvl: bool = False,
                 explicitly_destroy: bool = False, comm=None, *, backend: str = "auto",
                 max_tokens_per_rank: int | None = None):
        del num_qps_per_rank, allow_nvlink_for_low_latency_mode, allow_mnnvl  # low-latency/RDMA knobs
        if low_latency_mode:
            raise NotImplementedError("low_latency_mode is not provided; dx.ep.Buffer(worst_case=True) dispatches "
                                      "without a CPU sync and can be captured in a CUDA graph")
        if group is None:
            if comm is not None:
                raise NotImplementedError("comm (an mpi4py communicator) is not supported; "
                                          "pass a torch.distributed group")
            raise ValueError("group must be a torch.distributed process group")
        for name, value in (("num_nvl_bytes", num_nvl_bytes), ("num_rdma_bytes", num_rdma_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        self.group, self.rank, self.group_size = group, dist.get_rank(group), dist.get_world_size(group)
        self.num_nvl_bytes, self.num_rdma_bytes = num_nvl_bytes, num_rdma_bytes
        self.low_latency_mode, self.explicitly_destroy = False, explicitly_destroy
        self._backend, self._max_tokens_per_rank = backend, max_tokens_per_rank
        self._engines: dict[tuple[int, int], ep.Buffer] = {}
        self._last_layout: tuple[torch.Tensor, ep.Layout] | None = None  # get_dispatch_layout's topk_idx and result

    @staticmethod
    def set_num_sms(new_num_sms: int) -> None:
        """SMs of the buffers created from now on (even, as DeepEP requires)."""
        if isinstance(new_num_sms, bool) or not isinstance(new_num_sms, int):
            raise TypeError(f"new_num_sms must be an int, got {type(new_num_sms).__name__}")
        if new_num_sms < 2 or new_num_sms % 2:
            raise ValueError(f"new_num_sms must be a positive even number, got {new_num_sms}")
        Buffer.num_sms = new_num_sms

    @staticmethod
    def capture() -> EventOverlap:
        """An event recorded on the current CUDA stream (None on a machine without CUDA)."""
        return EventOverlap(torch.cuda.current_stream().record_event() if torch.cuda.is_available() else None)

    def destroy(self) -> None:
        """Releases the buffers (collective); needs explicitly_destroy=True as in DeepEP."""
        if not self.explicitly_destroy:
            raise ValueError("destroy() needs Buffer(..., explicitly_destroy=True)")
        for engine in self._engines.values():
            engine.destroy()
        self._engines.clear()

    # --- layout ----------------------------------------------------------------------------

    def get_dispatch_layout(self, topk_idx: torch.Tensor, num_experts: int, previous_event: EventOverlap | None = None,
                            async_finish: bool = False, allocate_on_comm_stream: bool = False):
        """(num_tokens_per_rank [R] int32, None (no RDMA ranks), num_tokens_per_expert [E] int32,
        is_token_in_rank [T, R] bool, event) of this rank's topk_idx [T, k] (-1: no expert)."""
        del async_finish, allocate_on_comm_stream  # computed at once
        _wait(previous_event)
        ops.check_routing(topk_idx, None, None)
        ops.check_expert_ids(topk_idx, num_experts)
        layout = ep.Layout(*ops.dispatch_layout(topk_idx, num_experts, self.group_size, Buffer.num_sms))
        self._last_layout = (topk_idx, layout)
        return (layout.num_tokens_per_rank.to(torch.int32), None, layout.num_tokens_per_expert.to(torch.int32),
                layout.is_token_in_rank, EventOverlap())

    # --- dispatch / combine ----------------------------------------------------------------

    def _engine(self, hidden: int, num_experts: int) -> ep.Buffer:
        key = (hidden, num_experts)
        if key not in self._engines:  # created by every rank at the same dispatch
            max_tokens = self._max_tokens_per_rank or self.num_nvl_bytes // (self.group_size * hidden * _BF16_BYTES)
            if max_tokens < 1:
                raise ValueError(f"num_nvl_bytes={self.num_nvl_bytes} holds no token of hidden size {hidden} "
                                 f"for {self.group_size} ranks; pass a larger num_nvl_bytes or max_tokens_per_rank=")
            self._engines[key] = ep.Buffer(self.group, hidden, num_experts, max_tokens, Buffer.num_sms, self._backend)
        return self._engines[key]

    def _layout_for(self, topk_idx, is_token_in_rank) -> ep.Layout | None:
        """get_dispatch_layout's result when those are its tensors; else None: dx.ep computes the
        layout from topk_idx (and checks it with every rank, so a bad id raises everywhere)."""
        if self._last_layout is not None:
            last_topk_idx, last = self._last_layout
            if topk_idx is last_topk_idx and is_token_in_rank is last.is_token_in_rank:
                return last
        return None

    def dispatch(self, x, handle: _Handle | None = None, num_tokens_per_rank: torch.Tensor | None = None,
                 num_tokens_per_rdma_rank: torch.Tensor | None = None, is_token_in_rank: torch.Tensor | None = None,
                 num_tokens_per_expert: torch.Tensor | None = None, topk_idx: torch.Tensor | None = None,
                 topk_weights: torch.Tensor | None = None, expert_alignment: int = 1, num_worst_tokens: int = 0,
                 config=None, previous_event: EventOverlap | None = None, async_finish: bool = False,
                 allocate_on_comm_stream: bool = False):
        """Sends each token to every rank holding one of its experts; see the module docstring."""
        del num_tokens_per_rank, num_tokens_per_rdma_rank, config, allocate_on_comm_stream  # implied by the layout
        if num_worst_tokens:
            raise NotImplementedError("num_worst_tokens is not provided; dx.ep.Buffer(worst_case=True) sizes the "
                                      "outputs for the worst case without a CPU sync")
        ops.check_alignment(expert_alignment)
        _wait(previous_event)
        data = x[0] if isinstance(x, tuple) else x
        if isinstance(x, tuple):
            check_tensor(data, "x[0]", (torch.float8_e4m3fn,), dim=2)
        else:
            check_tensor(data, "x", (torch.bfloat16, torch.float32), dim=2)
        if handle is not None:
            return self._cached_dispatch(x, handle, topk_idx, topk_weights, async_finish)
        if topk_idx is None or topk_weights is None:
            raise NotImplementedError("dispatch without topk_idx and topk_weights is not provided")
        layout = self._layout_for(topk_idx, is_token_in_rank)
        if layout is None and num_tokens_per_expert is None:
            raise ValueError("num_tokens_per_expert (from get_dispatch_layout) is needed: it gives the expert count")
        num_experts = layout.num_tokens_per_expert.shape[0] if layout is not None else num_tokens_per_expert.shape[0]
        engine = self._engine(data.shape[1], num_experts)
        result = engine.dispatch(x, topk_idx, topk_weights, layout=layout, async_op=async_finish)
        recv_x = (result.x, result.x_scales) if isinstance(x, tuple) else result.x
        counts = [ceil_div(int(n), expert_alignment) * expert_alignment for n in result.num_tokens_per_expert]
        handle = _Handle(engine, result.handle, layout, topk_idx, topk_weights, result.x.shape[0])
        return recv_x, result.topk_idx, result.topk_weights, counts, handle, EventOverlap(result.event)

    def _cached_dispatch(self, x, handle, topk_idx, topk_weights, async_finish: bool):
        """The tokens of an earlier dispatch sent the same way again (its handle's routing)."""
        if not isinstance(handle, _Handle):
            raise TypeError(f"handle must be the handle returned by dispatch, got {type(handle).__name__}")
        if topk_idx is not None or topk_weights is not None:
            raise ValueError("a cached dispatch (handle given) takes no topk_idx or topk_weights")
        result = handle.engine.dispatch(x, handle.topk_idx, handle.topk_weights, layout=handle.layout,
                                        async_op=async_finish)
        recv_x = (result.x, result.x_scales) if isinstance(x, tuple) else result.x
        return recv_x, None, None, None, None, EventOverlap(result.event)

    def combine(self, x: torch.Tensor, handle: _Handle, topk_weights: torch.Tensor | None = None, bias=None,
                config=None, previous_event: EventOverlap | None = None, async_finish: bool = False,
                allocate_on_comm_stream: bool = False):
        """x [num_recv, hidden] (the rows dispatch delivered) -> (per source token the sum over ranks
        [T, hidden] bf16, topk_weights summed back to [T, k] or None, event)."""
        del config, allocate_on_comm_stream
        if bias is not None:
            raise NotImplementedError("combine's bias is not provided; add it to the combined output")
        if not isinstance(handle, _Handle):
            raise TypeError(f"handle must be the handle returned by dispatch, got {type(handle).__name__}")
        if topk_weights is not None:
            check_tensor(topk_weights, "topk_weights", (torch.float32,), dim=2)
            check_shape(topk_weights, "topk_weights", (handle.num_recv, handle.topk_idx.shape[1]))
        _wait(previous_event)
        # dx.ep checks x (as "y") with every rank, so a bad x raises everywhere
        if async_finish:
            combined, event = handle.engine.combine(x, handle.handle, async_op=True)
        else:
            combined, event = handle.engine.combine(x, handle.handle), None
        # each slot's expert lives on one rank: the others send back zero for it
        combined_weights = None if topk_weights is None else handle.engine._combine_weights(topk_weights, handle.handle)
        return combined, combined_weights, EventOverlap(event)


def _wait(previous_event: EventOverlap | None) -> None:
    if previous_event is not None:
        previous_event.current_stream_wait()
