"""dx.ep.Buffer: expert-parallel dispatch/combine over a torch.distributed group.

Backends: "ipc" (our kernels write straight into peers' memory over CUDA IPC, one node, sm_90),
"torch" (all_to_all_single: gloo on CPU, NCCL on GPUs and across nodes), "auto" (ipc when every
rank can, else torch). Both give the results of deepseek_ext/reference/ep.py bit for bit.
"""
from __future__ import annotations

import socket

import torch
import torch.distributed as dist

from deepseek_ext._backend import backend, has_cuda_ext, uses_kernels
from deepseek_ext.ep import autograd
from deepseek_ext.ep.torch_backend import TorchEngine
from deepseek_ext.ep.types import DispatchResult, Handle, Layout
from deepseek_ext.ops import ep as ops
from deepseek_ext.reference import ep as ref

_BACKENDS = ("auto", "ipc", "torch")


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _can_run_ipc() -> bool:
    if backend() == "emulate":  # the ipc kernels run on CPU tensors through deepseek_ext._emu
        return True
    return (has_cuda_ext() and torch.cuda.is_available()
            and uses_kernels(torch.empty(0, device=torch.device("cuda", torch.cuda.current_device()))))


def _pick_backend(group, backend: str) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "torch":
        return backend
    mine = (socket.gethostname(), _can_run_ipc())
    everyone = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, mine, group=group)
    possible = all(ok for _, ok in everyone) and len({host for host, _ in everyone}) == 1
    if backend == "ipc" and not possible:
        raise ValueError("backend='ipc' needs every rank on one node with the extension and an sm_90 GPU; "
                         f"ranks report (host, ready) = {everyone}")
    return "ipc" if possible else "torch"


class Buffer:
    """Dispatch/combine for `num_experts` experts split contiguously over the ranks of `group`.

    worst_case=True (ipc only): outputs are sized for num_ranks * max_tokens_per_rank received
    tokens and the counts stay on the device, so dispatch/combine need no CPU sync and can be
    captured in a CUDA graph. timeout_s bounds every device-side wait of the ipc kernels.
    """

    def __init__(self, group, hidden: int, num_experts: int, max_tokens_per_rank: int, num_sms: int = 20,
                 backend: str = "auto", *, worst_case: bool = False, timeout_s: float = 10.0, _ipc=None):
        self.hidden = _positive_int(hidden, "hidden")
        self.num_experts = _positive_int(num_experts, "num_experts")
        self.max_tokens_per_rank = _positive_int(max_tokens_per_rank, "max_tokens_per_rank")
        self.num_sms = _positive_int(num_sms, "num_sms")
        self.worst_case = bool(worst_case)
        if _ipc is not None:  # Buffer.loopback
            self.group, self.num_ranks, self.rank, self.backend = None, _ipc.num_ranks, 0, "ipc"
        else:
            self.group = group if group is not None else dist.group.WORLD
            self.num_ranks, self.rank = dist.get_world_size(self.group), dist.get_rank(self.group)
            self.backend = _pick_backend(self.group, backend)
        self.local_experts = ref.experts_per_rank(num_experts, self.num_ranks)
        if self.worst_case and self.backend != "ipc":
            raise ValueError("worst_case=True needs the ipc backend (all_to_all_single needs the sizes on the host)")
        self._torch = TorchEngine(self.group, num_experts) if self.group is not None else None
        self._ipc = _ipc
        if self.backend == "ipc" and _ipc is None:
            from deepseek_ext.ep.ipc_backend import IpcEngine
            self._ipc = IpcEngine.create(self.group, hidden, num_experts, max_tokens_per_rank, num_sms, timeout_s)
        ipc_on_gpu = self._ipc is not None and self._ipc.device.type == "cuda"
        self._comm_stream = torch.cuda.Stream() if ipc_on_gpu or (
            self.group is not None and torch.cuda.is_available() and dist.get_backend(self.group) == "nccl") else None

    @classmethod
    def loopback(cls, hidden: int, num_experts: int, num_ranks: int, max_tokens_per_rank: int,
                 num_sms: int = 20, *, worst_case: bool = False, timeout_s: float = 10.0) -> "Buffer":
        """Rank 0 of `num_ranks` on the current GPU, alone: the peers' buffers are local memory and
        no other rank sends (as if they had zero tokens). The real kernels run, so single-GPU
        benchmarks and tests measure them; `peer_received(p)` reads what peer p was sent."""
        from deepseek_ext.ep.ipc_backend import IpcEngine
        engine = IpcEngine.loopback(hidden, num_experts, num_ranks, max_tokens_per_rank, num_sms, timeout_s)
        return cls(None, hidden, num_experts, max_tokens_per_rank, num_sms, worst_case=worst_case, _ipc=engine)

    # --- layout ----------------------------------------------------------------------------

    def get_dispatch_layout(self, topk_idx: torch.Tensor) -> Layout:
        """Per-rank/per-expert counts and positions of this rank's routing (kernel on sm_90)."""
        ops.check_routing(topk_idx, None, None)
        if not self.worst_case:
            ops.check_expert_ids(topk_idx, self.num_experts)
        error = self._ipc.input_error if self._ipc is not None else None
        return Layout(*ops.dispatch_layout(topk_idx, self.num_experts, self.num_ranks, self.num_sms, error))

    # --- dispatch / combine ----------------------------------------------------------------

    def dispatch(self, x, topk_idx: torch.Tensor, topk_weights: torch.Tensor, layout: Layout | None = None,
                 expert_alignment: int = 1, async_op: bool = False) -> DispatchResult:
        """Sends each token once to every rank holding one of its experts (see the module doc of
        deepseek_ext/reference/ep.py for the receive order and the expanded layout)."""
        data, scales = ops.split_activation(x, self.hidden, self.max_tokens_per_rank)
        ops.check_routing(topk_idx, topk_weights, data.shape[0])
        ops.check_alignment(expert_alignment)
        for name, t in (("topk_idx", topk_idx), ("topk_weights", topk_weights)):
            if t.device != data.device:
                raise ValueError(f"{name} is on {t.device} but x is on {data.device}")
        if self._ipc is not None and data.device != self._ipc.device:
            raise ValueError(f"the ipc backend runs on {self._ipc.device}, got x on {data.device}")
        if layout is None:
            layout = self.get_dispatch_layout(topk_idx)
        elif not self.worst_case:
            ops.check_expert_ids(topk_idx, self.num_experts)
        if torch.is_grad_enabled() and scales is None and (data.requires_grad or topk_weights.requires_grad):
            if self.worst_case:
                raise ValueError("autograd through dispatch needs worst_case=False (sizes on the host)")
            return autograd.dispatch(self, data, topk_idx, topk_weights, layout, expert_alignment, async_op)
        return self._run(lambda: self._dispatch(data, scales, topk_idx, topk_weights, layout, expert_alignment),
                         async_op, (data, scales, topk_idx, topk_weights, *layout))

    def combine(self, y: torch.Tensor, handle: Handle, async_op: bool = False):
        """Sums every rank's partial result per token (fp32, ranks ascending) -> [T, H] bf16
        (with async_op: (out, event); wait for the event before reading out)."""
        if not isinstance(handle, Handle):
            raise TypeError(f"handle must be the Handle returned by dispatch, got {type(handle).__name__}")
        rows = handle.row_token.numel() if handle.row_token is not None else handle.src_rank.numel()
        ops.check_y(y, rows, self.hidden)
        if torch.is_grad_enabled() and y.requires_grad:
            if self.worst_case:
                raise ValueError("autograd through combine needs worst_case=False (sizes on the host)")
            return autograd.combine(self, y, handle, async_op)
        out, event = self._run(lambda: self._combine(y, handle), async_op, (y,))
        return (out, event) if async_op else out

    # --- engines (also the autograd functions' forward and backward) -----------------------

    def _dispatch(self, data, scales, topk_idx, topk_weights, layout, expert_alignment) -> DispatchResult:
        if self._ipc is not None:
            return self._ipc.dispatch(data, scales, topk_idx, topk_weights, layout, expert_alignment, self.worst_case)
        return self._torch.dispatch(data, scales, topk_idx, topk_weights, layout, expert_alignment)

    def _combine(self, y: torch.Tensor, handle: Handle) -> torch.Tensor:
        if self._ipc is not None:
            return self._ipc.combine(y, handle)
        return self._torch.combine(y, handle)

    def _combine_weights(self, grad_w: torch.Tensor, handle: Handle) -> torch.Tensor:
        if self._torch is None:
            raise ValueError("a loopback Buffer has no process group to send weight gradients back")
        return self._torch.combine_weights(grad_w, handle)

    def _run(self, work, async_op: bool, inputs) -> DispatchResult | tuple:
        """work() on the communication stream (after the caller's stream); outputs are safe to use
        on the caller's stream once it waited for the returned event (async_op) or at once."""
        if self._comm_stream is None:
            out = work()
            if self._ipc is not None and not self.worst_case:  # emulated launches are done: check now
                self._ipc.raise_if_failed()
            return out if isinstance(out, DispatchResult) else (out, None)
        caller = torch.cuda.current_stream()
        self._comm_stream.wait_stream(caller)
        with torch.cuda.stream(self._comm_stream):
            out = work()
        for t in inputs:
            if isinstance(t, torch.Tensor) and t.is_cuda:
                t.record_stream(self._comm_stream)
        for t in _tensors_of(out):
            t.record_stream(caller)
        event = torch.cuda.Event()
        event.record(self._comm_stream)
        if not async_op:
            caller.wait_event(event)
            if self._ipc is not None and not self.worst_case:
                self._ipc.raise_if_failed()
        if isinstance(out, DispatchResult):
            out.event = event if async_op else None
            return out
        return out, (event if async_op else None)

    def check_errors(self) -> None:
        """Waits for the device and raises RuntimeError if a device-side wait timed
        out (naming the rank and phase) or a kernel rejected an expert id."""
        if self._ipc is not None:
            if self._ipc.device.type == "cuda":
                torch.cuda.synchronize(self._ipc.device)
            self._ipc.raise_if_failed()

    def peer_received(self, peer: int, expert_alignment: int = 1) -> DispatchResult:
        """Loopback only: what peer `peer` holds from the last dispatch (rank 0's tokens to it)."""
        if self.group is not None:
            raise ValueError("peer_received is only for Buffer.loopback")
        return self._ipc.peer_received(peer, expert_alignment)


def _tensors_of(out):
    if isinstance(out, DispatchResult):
        h = out.handle
        items = (out.x, out.x_scales, out.topk_idx, out.topk_weights, out.m_indices, out.num_tokens_per_expert,
                 h.src_rank, h.src_token, h.row_token, h.row_weight, h.token_rows, h.num_recv)
    else:
        items = (out,)
    return [t for t in items if isinstance(t, torch.Tensor) and t.is_cuda]
