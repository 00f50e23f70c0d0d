"""dx.ep.Buffer: expert-parallel dispatch/combine over a torch.distributed group.

Backends: "ipc" (our kernels write straight into peers' memory over CUDA IPC, one node, sm_90),
"torch" (all_to_all_single: gloo on CPU, NCCL on GPUs and across nodes), "auto" (ipc when every
rank can and every pair of ranks' GPUs has peer access, else torch). Both give the results of
deepseek_ext/reference/ep.py bit for bit.

The ranks cannot disagree silently (deepseek_ext/ep/agreement.py): the configuration is compared
at creation, every operation's first exchange carries a header that every rank checks, and a rank
whose own input checks fail still takes part in that exchange, flagged invalid.

Failures are sticky: after a device-side timeout or diverged calls every later call raises until
every rank calls reset(). With the ipc backend on a GPU the host waits once per normal-mode
dispatch (for the received sizes) and never in a combine, so errors of work it did not wait for
(the dispatch's data phase, combines, worst_case and async_op calls, CUDA graph replays) surface
at the next synchronizing call: check_errors(), reset(), destroy(), or the next normal-mode
dispatch. destroy() is collective; __del__ only warns.
"""
from __future__ import annotations

import socket
import warnings

import torch
import torch.distributed as dist

from deepseek_ext._backend import backend, has_cuda_ext, uses_kernels
from deepseek_ext.ep import autograd
from deepseek_ext.ep.agreement import DeviceFailure, Diverged, OpHeader, agree_on_config
from deepseek_ext.ep.hierarchical import backend_across_nodes, torch_engine
from deepseek_ext.ep.topology import Topology, resolve_topology
from deepseek_ext.ep.traffic import Traffic
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


def _bus_id(device: int) -> str:
    props = torch.cuda.get_device_properties(device)
    ids = [getattr(props, name, None) for name in ("pci_domain_id", "pci_bus_id", "pci_device_id")]
    return ":".join(f"{i:02x}" for i in ids) if None not in ids else str(getattr(props, "uuid", device))


def _device_facts() -> tuple[str | None, tuple[str, ...]]:
    """(bus id of this rank's device, bus ids of the devices it can access: itself and its peers)."""
    if backend() == "emulate":  # the emulator's regions are shared memory: every process reaches them
        return "emulated", ("emulated",)
    if not torch.cuda.is_available():
        return None, ()
    me = torch.cuda.current_device()
    reach = [d for d in range(torch.cuda.device_count()) if d == me or torch.cuda.can_device_access_peer(me, d)]
    return _bus_id(me), tuple(_bus_id(d) for d in reach)


def ipc_possible(everyone: list[tuple]) -> str | None:
    """Why the ipc backend cannot run on ranks reporting (host, ready, bus id, reachable bus ids),
    or None when it can."""
    if len({host for host, *_ in everyone}) > 1:
        return f"the ranks are on several hosts ({sorted({host for host, *_ in everyone})})"
    not_ready = [r for r, (_, ready, *_) in enumerate(everyone) if not ready]
    if not_ready:
        return f"ranks {not_ready} have no compiled extension with an sm_90 GPU (or emulator)"
    for a, (_, _, _, reach) in enumerate(everyone):
        for b, (_, _, bus, _) in enumerate(everyone):
            if bus not in reach:
                return f"rank {a}'s GPU cannot access rank {b}'s (bus id {bus}) as a peer"
    return None


def _pick_backend(group, backend: str) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "torch":
        return backend
    mine = (socket.gethostname(), _can_run_ipc(), *_device_facts())
    everyone = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, mine, group=group)
    why_not = ipc_possible(everyone)
    if backend == "ipc" and why_not:
        raise ValueError(f"backend='ipc' needs every rank on one node with peer access between their GPUs: {why_not}")
    return "torch" if why_not else "ipc"


class Buffer:
    """Dispatch/combine for `num_experts` experts split contiguously over the ranks of `group`.

    worst_case=True (ipc only): outputs are sized for num_ranks * max_tokens_per_rank received
    tokens and the counts stay on the device, so dispatch/combine need no CPU sync and can be
    captured in a CUDA graph. timeout_s bounds every device-side wait of the ipc kernels.
    ring_bytes (ipc): bytes of each (channel, peer) ring the kernels stream through; channels are
    num_sms // 2. A rank's memory is about num_sms x num_ranks x ring_bytes (2 directions x
    channels x num_ranks rings), independent of max_tokens_per_rank.

    ranks_per_node (None: from LOCAL_WORLD_SIZE, else the hostnames; group ranks are node-major):
    with more than one node, dispatch and combine run in two hops, across nodes then within
    (deepseek_ext/ep/hierarchical.py), on groups whose collectives time out after timeout_s.
    stats() reports the bytes of the last dispatch and combine by link.
    """

    def __init__(self, group, hidden: int, num_experts: int, max_tokens_per_rank: int, num_sms: int = 20,
                 backend: str = "auto", *, worst_case: bool = False, timeout_s: float = 100.0,
                 ranks_per_node: int | None = None, ring_bytes: int = 1 << 19, _ipc=None):
        self.hidden = _positive_int(hidden, "hidden")
        self.num_experts = _positive_int(num_experts, "num_experts")
        self.max_tokens_per_rank = _positive_int(max_tokens_per_rank, "max_tokens_per_rank")
        self.num_sms = _positive_int(num_sms, "num_sms")
        self.worst_case = bool(worst_case)
        if _ipc is not None:  # Buffer.loopback
            self.group, self.num_ranks, self.rank, self.backend = None, _ipc.num_ranks, 0, "ipc"
            self.topology = Topology(self.num_ranks, self.num_ranks, 0)
        else:
            self.group = group if group is not None else dist.group.WORLD
            self.num_ranks, self.rank = dist.get_world_size(self.group), dist.get_rank(self.group)
            agree_on_config(self.group, {"hidden": hidden, "num_experts": num_experts,
                                         "max_tokens_per_rank": max_tokens_per_rank, "num_sms": num_sms,
                                         "backend": backend, "worst_case": self.worst_case, "timeout_s": timeout_s})
            self.topology = resolve_topology(self.group, ranks_per_node)
            if self.topology.num_nodes > 1:
                backend = backend_across_nodes(backend, self.topology)
            self.backend = _pick_backend(self.group, backend)
        self.local_experts = ref.experts_per_rank(num_experts, self.num_ranks)
        if self.worst_case and self.backend != "ipc":
            raise ValueError("worst_case=True needs the ipc backend (all_to_all_single needs the sizes on the host)")
        self._seq, self._failure, self._destroyed = 0, None, False
        self._torch = torch_engine(self.group, num_experts, self.topology, timeout_s) if self.group is not None else None
        self._traffic = Traffic(self.topology)
        self._ipc = _ipc
        if self.backend == "ipc" and _ipc is None:
            from deepseek_ext.ep.ipc_backend import IpcEngine
            self._ipc = IpcEngine.create(self.group, hidden, num_experts, max_tokens_per_rank, num_sms, ring_bytes,
                                         timeout_s)
        ipc_on_gpu = self._ipc is not None and self._ipc.device.type == "cuda"
        self._comm_stream = torch.cuda.Stream() if ipc_on_gpu or (
            self.group is not None and torch.cuda.is_available() and dist.get_backend(self.group) == "nccl") else None

    @classmethod
    def loopback(cls, hidden: int, num_experts: int, num_ranks: int, max_tokens_per_rank: int,
                 num_sms: int = 20, *, worst_case: bool = False, timeout_s: float = 100.0,
                 ring_bytes: int = 1 << 19) -> "Buffer":
        """Rank 0 of `num_ranks` on the current GPU, alone: the peers' buffers are local memory and
        no other rank sends tokens (as if they had zero). Each launch also runs the peers' side of
        rank 0's traffic: in dispatch their receivers (`peer_received(p)` is what peer p got), in
        combine their senders, returning zero partials. The real kernels run, so single-GPU
        benchmarks and tests measure them."""
        from deepseek_ext.ep.ipc_backend import IpcEngine
        engine = IpcEngine.loopback(hidden, num_experts, num_ranks, max_tokens_per_rank, num_sms, ring_bytes, timeout_s)
        return cls(None, hidden, num_experts, max_tokens_per_rank, num_sms, worst_case=worst_case, _ipc=engine)

    # --- layout ----------------------------------------------------------------------------

    def get_dispatch_layout(self, topk_idx: torch.Tensor) -> Layout:
        """Per-rank/per-expert counts and positions of this rank's routing (kernel on sm_90)."""
        ops.check_routing(topk_idx, None, None)
        if self._ipc is None:  # the ipc layout kernel flags bad ids itself (no host sync): see dispatch
            ops.check_expert_ids(topk_idx, self.num_experts)
        error = self._ipc.input_error if self._ipc is not None else None
        return Layout(*ops.dispatch_layout(topk_idx, self.num_experts, self.num_ranks, self.num_sms, error))

    # --- dispatch / combine ----------------------------------------------------------------

    def dispatch(self, x, topk_idx: torch.Tensor, topk_weights: torch.Tensor, layout: Layout | None = None,
                 expert_alignment: int = 1, async_op: bool = False) -> DispatchResult:
        """Sends each token once to every rank holding one of its experts (see the module doc of
        deepseek_ext/reference/ep.py for the receive order and the expanded layout)."""
        data, scales, layout = self._validated("dispatch", lambda: self._check_dispatch(
            x, topk_idx, topk_weights, layout, expert_alignment))
        if torch.is_grad_enabled() and scales is None and (data.requires_grad or topk_weights.requires_grad):
            return autograd.dispatch(self, data, topk_idx, topk_weights, layout, expert_alignment, async_op)
        return self._run(lambda: self._dispatch(data, scales, topk_idx, topk_weights, layout, expert_alignment),
                         async_op, (data, scales, topk_idx, topk_weights, *layout))

    def _check_dispatch(self, x, topk_idx, topk_weights, layout, expert_alignment):
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
        elif self._ipc is None:
            ops.check_expert_ids(topk_idx, self.num_experts)
        if self.worst_case and torch.is_grad_enabled() and scales is None and (
                data.requires_grad or topk_weights.requires_grad):
            raise ValueError("autograd through dispatch needs worst_case=False (sizes on the host)")
        return data, scales, layout

    def combine(self, y: torch.Tensor, handle: Handle, async_op: bool = False):
        """Sums every rank's partial result per token (fp32, ranks ascending) -> [T, H] bf16
        (with async_op: (out, event); wait for the event before reading out)."""
        self._validated("combine", lambda: self._check_combine(y, handle))
        if torch.is_grad_enabled() and y.requires_grad:
            return autograd.combine(self, y, handle, async_op)
        out, event = self._run(lambda: self._combine(y, handle), async_op, (y,))
        return (out, event) if async_op else out

    def _check_combine(self, y, handle) -> None:
        if not isinstance(handle, Handle):
            raise TypeError(f"handle must be the Handle returned by dispatch, got {type(handle).__name__}")
        rows = handle.row_token.numel() if handle.row_token is not None else handle.src_rank.numel()
        ops.check_y(y, rows, self.hidden)
        if self.worst_case and torch.is_grad_enabled() and y.requires_grad:
            raise ValueError("autograd through combine needs worst_case=False (sizes on the host)")

    # --- agreement and sticky failures -------------------------------------------------------

    def _header(self, kind: str, k: int = 0, hidden: int = 0, dtype=None, has_scales: bool = False,
                invalid: bool = False) -> OpHeader:
        self._seq += 1
        return OpHeader.make(self._seq - 1, kind, k, hidden, dtype, has_scales, invalid)

    def _validated(self, kind: str, check):
        """check() (the local input checks); when it raises, this rank still takes part in the
        operation's first exchange, flagged invalid, so the peers raise at once too."""
        self._raise_if_unusable()
        try:
            return check()
        except (TypeError, ValueError):
            if self.group is not None:
                header = self._header(kind, invalid=True)
                if self._ipc is not None:
                    self._ipc.reject(header)
                else:
                    try:
                        self._torch.agree(header)
                    except ValueError:  # the peers' view of this rank's failure: raise our own
                        pass
            raise

    def _raise_if_unusable(self) -> None:
        if self._destroyed:
            raise RuntimeError("dx.ep.Buffer: used after destroy()")
        if self._failure is not None:
            raise RuntimeError(f"{self._failure}; this Buffer raises until reset() is called on every rank")

    def _guarded(self, work):
        """work(), after the sticky-failure check; a timeout or diverged calls become sticky."""
        self._raise_if_unusable()
        try:
            return work()
        except (DeviceFailure, Diverged) as error:
            self._failure = str(error)
            raise

    def reset(self) -> None:
        """Collective: after a device timeout or diverged calls, every rank's communication state
        (device counters, headers, error words, operation sequence) starts afresh."""
        if self._destroyed:
            raise RuntimeError("dx.ep.Buffer: reset() after destroy()")
        if self._ipc is not None:
            self._ipc.reset()
        elif self.group is not None:
            dist.barrier(group=self.group)
        self._seq, self._failure = 0, None

    def destroy(self) -> None:
        """Collective: waits for the device, then (ipc) every rank closes the peers' regions it
        opened and frees its own once no rank holds it open. Later calls raise."""
        if self._destroyed:
            return
        if self._ipc is not None:
            self._ipc.destroy()
        elif self.group is not None:
            dist.barrier(group=self.group)
        self._destroyed = True

    def __del__(self):
        ipc = getattr(self, "_ipc", None)
        if ipc is None or getattr(self, "_destroyed", True) or not ipc.holds_memory:
            return
        if ipc.group is None:  # loopback: no other process holds this memory
            ipc.destroy()
            return
        warnings.warn(f"dx.ep.Buffer (rank {self.rank}) was garbage-collected without destroy(): its device memory "
                      "stays allocated (peers may still hold it open); call destroy() on every rank", ResourceWarning)

    # --- engines (also the autograd functions' forward and backward) -----------------------

    def _dispatch(self, data, scales, topk_idx, topk_weights, layout, expert_alignment) -> DispatchResult:
        header = self._header("dispatch", topk_idx.shape[1], data.shape[1], data.dtype, scales is not None)
        if self._ipc is not None:
            result = self._ipc.dispatch(data, scales, topk_idx, topk_weights, layout, expert_alignment,
                                        self.worst_case, header)
        else:
            self._torch.agree(header)
            result = self._torch.dispatch(data, scales, topk_idx, topk_weights, layout, expert_alignment)
        self._traffic.dispatched(layout, result.handle, data, scales)
        return result

    def _combine(self, y: torch.Tensor, handle: Handle) -> torch.Tensor:
        self._traffic.combined(handle, self.hidden)
        k = handle.topk_idx.shape[1] if handle.topk_idx is not None else 0
        header = self._header("combine", k, y.shape[1], torch.bfloat16)  # partials travel in bf16
        if self._ipc is not None:
            return self._ipc.combine(y, handle, header)
        self._torch.agree(header)
        return self._torch.combine(y, handle)

    def _combine_weights(self, grad_w: torch.Tensor, handle: Handle) -> torch.Tensor:
        if self._torch is None:
            raise ValueError("a loopback Buffer has no process group to send weight gradients back")

        def work():
            self._torch.agree(self._header("combine_weights", grad_w.shape[1], 0, torch.float32))
            return self._torch.combine_weights(grad_w, handle)
        return self._guarded(work)

    def _run(self, work, async_op: bool, inputs) -> DispatchResult | tuple:
        """work() on the communication stream (after the caller's stream); outputs are safe to use
        on the caller's stream once it waited for the returned event (async_op) or at once."""
        return self._guarded(lambda: self._run_on_stream(work, async_op, inputs))

    def _run_on_stream(self, work, async_op: bool, inputs) -> DispatchResult | tuple:
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
        if isinstance(out, DispatchResult):
            out.event = event if async_op else None
            return out
        return out, (event if async_op else None)

    def stats(self) -> dict[str, int]:
        """Bytes this rank sent in the last dispatch and the last combine (autograd's included), by
        link: {dispatch,combine}_{internode,intranode}_bytes and the sums internode_bytes,
        intranode_bytes. Activation rows only (deepseek_ext/ep/traffic.py says what is counted)."""
        return self._traffic.stats()

    def check_errors(self) -> None:
        """Waits for the device and raises RuntimeError if a device-side wait timed out (naming
        the rank and phase), a kernel rejected an expert id, or the ranks' calls diverged (ValueError)."""
        if self._ipc is not None:
            if self._ipc.device.type == "cuda":
                torch.cuda.synchronize(self._ipc.device)
            self._guarded(self._ipc.raise_if_failed)

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
