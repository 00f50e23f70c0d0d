"""Dispatch/combine with our kernels writing straight into peers' memory over CUDA IPC.

Memory: each rank allocates one region with cudaMalloc (through deepseek_ext._C.ep_alloc, not
the torch caching allocator, so the IPC handle covers exactly the region and its base needs no
offset), exports it with cudaIpcGetMemHandle, and the group exchanges the handles with
all_gather_object; every rank opens the others'. Parts of the region are read from Python as
torch tensors wrapping the raw memory (no copy).

Under DEEPSEEK_EXT_BACKEND=emulate the same path runs on CPU tensors through deepseek_ext._emu,
whose regions are POSIX shared memory: the handles open in the other (gloo) processes.

A dispatch is two launches (notify: counts to every peer; then, with the sizes on the host, the
data), or one in worst-case mode (outputs sized for num_ranks * max_tokens_per_rank received
tokens, counts left on the device: no CPU sync, CUDA-graph capturable).
"""
from __future__ import annotations

import ctypes

import torch
import torch.distributed as dist

from deepseek_ext._backend import backend, kernel_module
from deepseek_ext.ep.agreement import DeviceFailure, Diverged, OpHeader, agree_on_config, check_headers, headers_from
from deepseek_ext.ep.types import DispatchResult, Handle, Layout
from deepseek_ext.ops import ep as ops
from deepseek_ext.reference import ep as ref
from deepseek_ext.reference.quant import GROUP, ceil_div, empty_m_major_scales

_CTRL_BYTES = 512  # arrival slots (8 bytes x up to 32 ranks), then the local words
_PHASES = {1: "dispatch start barrier", 2: "dispatch end barrier", 3: "combine start barrier",
           4: "combine end barrier", 5: "grid barrier"}
_DIVERGED = 7


def _align(n: int, a: int) -> int:
    return ceil_div(n, a) * a


def _checked(result):
    value, error = result
    if error:
        raise RuntimeError(f"deepseek_ext ep: CUDA error: {error}")
    return value


class _RawMemory:
    """Device memory we own, seen by torch as uint8 [nbytes]."""

    def __init__(self, address: int, nbytes: int):
        self.__cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (address, False),
                                         "version": 3, "strides": None}


def _wrap(address: int, nbytes: int, device: torch.device) -> torch.Tensor:
    if device.type == "cpu":  # emulated regions are host memory
        return torch.frombuffer((ctypes.c_uint8 * nbytes).from_address(address), dtype=torch.uint8)
    return torch.as_tensor(_RawMemory(address, nbytes), device=device)


def engine_device() -> torch.device:
    """Where the ipc kernels run: the current GPU, or the CPU under the emulator."""
    if backend() == "emulate":
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":  # emulated launches have finished when they return
        torch.cuda.synchronize(device)


def region_layout(kernels, num_ranks: int, max_tokens: int, hidden: int, num_experts: int):
    """Byte offsets of a rank's region (the same on every rank) and its size."""
    layout = kernels.EpRegionLayout()
    layout.arrivals, layout.barrier_epoch, layout.grid_base = 0, 256, 264
    layout.grid_arrivals, layout.error = 272, 280
    layout.count_cols = 2 + num_experts // num_ranks
    layout.x_row_bytes = _align(4 * hidden, 16)  # fp32 rows; bf16 and FP8 rows use the front
    layout.scale_cols = _align(ceil_div(hidden, GROUP), 4)
    layout.max_tokens = max_tokens
    rows = num_ranks * max_tokens
    offset = _CTRL_BYTES
    for name, nbytes in (("headers", 2 * num_ranks * kernels.EP_HEADER_WORDS * 8),
                         ("counts", num_ranks * layout.count_cols * 4), ("recv_x", rows * layout.x_row_bytes),
                         ("recv_scales", rows * layout.scale_cols * 4), ("recv_meta", rows * kernels.EP_META_INTS * 4),
                         ("combine", rows * hidden * 2)):
        setattr(layout, name, offset)
        offset = _align(offset + nbytes, 256)
    return layout, offset


class IpcEngine:
    def __init__(self, rank, num_ranks, hidden, num_experts, max_tokens, num_sms, timeout_s, device,
                 data_bases, signal_bases, owned, opened, group):
        self.kernels = kernel_module(device)
        if num_ranks > self.kernels.EP_MAX_RANKS:
            raise ValueError(f"the ipc backend supports at most {self.kernels.EP_MAX_RANKS} ranks, got {num_ranks}")
        if hidden % 16:
            raise ValueError(f"the ipc backend needs hidden to be a multiple of 16, got {hidden}")
        self.rank, self.num_ranks, self.hidden, self.num_experts = rank, num_ranks, hidden, num_experts
        self.local_experts = ref.experts_per_rank(num_experts, num_ranks)
        self.max_tokens, self.num_sms, self.device = max_tokens, num_sms, device
        self.timeout_ns = int(timeout_s * 1e9)
        self.layout, self.region_bytes = region_layout(self.kernels, num_ranks, max_tokens, hidden, num_experts)
        self.bases = data_bases
        self.peer_table = torch.tensor([data_bases, signal_bases], dtype=torch.int64, device=device)
        self._owned, self._opened, self.group = owned, opened, group
        self.region = _wrap(data_bases[rank], self.region_bytes, device)
        self.error_word = self.region[self.layout.error:self.layout.error + 8].view(torch.int64)
        self.epoch_word = self.region[self.layout.barrier_epoch:self.layout.barrier_epoch + 8].view(torch.int64)
        self.input_error = torch.zeros(1, dtype=torch.int64, device=device)  # the layout kernel's bad ids

    @classmethod
    def create(cls, group, hidden, num_experts, max_tokens, num_sms, timeout_s) -> "IpcEngine":
        rank, num_ranks = dist.get_rank(group), dist.get_world_size(group)
        device = engine_device()
        kernels = kernel_module(device)
        _, nbytes = region_layout(kernels, num_ranks, max_tokens, hidden, num_experts)
        agree_on_config(group, {"region bytes": nbytes})
        local = _checked(kernels.ep_alloc(nbytes))
        handles = [None] * num_ranks
        dist.all_gather_object(handles, _checked(kernels.ep_ipc_handle(local)), group=group)
        bases, opened = [], []
        for peer, handle in enumerate(handles):
            if peer == rank:
                bases.append(local)
            else:
                bases.append(_checked(kernels.ep_ipc_open(handle)))
                opened.append(bases[-1])
        dist.barrier(group=group)  # every rank holds every region before any kernel writes to one
        return cls(rank, num_ranks, hidden, num_experts, max_tokens, num_sms, timeout_s, device,
                   bases, bases, [local], opened, group)

    @classmethod
    def loopback(cls, hidden, num_experts, num_ranks, max_tokens, num_sms, timeout_s) -> "IpcEngine":
        """Rank 0 with local-memory peers; every rank's arrival slots alias rank 0's (so the
        barriers complete with rank 0 alone)."""
        device = engine_device()
        kernels = kernel_module(device)
        _, nbytes = region_layout(kernels, num_ranks, max_tokens, hidden, num_experts)
        bases = [_checked(kernels.ep_alloc(nbytes)) for _ in range(num_ranks)]
        return cls(0, num_ranks, hidden, num_experts, max_tokens, num_sms, timeout_s, device,
                   bases, [bases[0]] * num_ranks, bases, [], None)

    @property
    def holds_memory(self) -> bool:
        return bool(self._owned or self._opened)

    def destroy(self) -> None:
        """Collective (loopback: local): no kernel runs on any rank, every rank closes the regions
        it opened, and only then frees its own (which peers held open until then)."""
        _synchronize(self.device)
        if self.group is not None:
            dist.barrier(group=self.group)
        for address in self._opened:
            _checked((0, self.kernels.ep_ipc_close(address)))
        if self.group is not None:
            dist.barrier(group=self.group)
        for address in self._owned:
            _checked((0, self.kernels.ep_free(address)))
        self._owned, self._opened = [], []

    def reset(self) -> None:
        """Collective: every rank's control words (barrier counters, headers, error word) back to
        zero once no kernel runs anywhere, so the next operation starts as the first one did."""
        _synchronize(self.device)
        if self.group is not None:
            dist.barrier(group=self.group)
        for base in self.bases if self.group is None else [self.bases[self.rank]]:
            _wrap(base, self.layout.counts, self.device).zero_()
        self.input_error.zero_()
        _synchronize(self.device)
        if self.group is not None:
            dist.barrier(group=self.group)

    # --- errors ----------------------------------------------------------------------------

    def raise_if_failed(self) -> None:
        """Reads the error word (the caller synchronized) and raises: RuntimeError for a rejected
        expert id, DeviceFailure naming the rank and phase that stalled, the agreement's ValueError
        when the ranks' operation headers differed (only a peer's rejected inputs: the operation
        ran nowhere, the error word is cleared)."""
        bad_id = int(self.input_error.item())
        if bad_id:
            self.input_error.zero_()
            detail = bad_id & 0xFFFFFFFF
            bad = detail - (1 << 32) if detail >= 1 << 31 else detail
            raise RuntimeError(f"deepseek_ext ep: topk_idx holds expert id {bad} outside [-1, {self.num_experts}) "
                               "(those slots were skipped)")
        code = int(self.error_word.item())
        if not code:
            return
        phase, detail = code >> 32, code & 0xFFFFFFFF
        if phase == _DIVERGED:
            self._raise_diverged()
        if phase == 5:
            waited = "its own blocks (all num_sms blocks must be resident)"
        else:
            waited = f"rank {detail - 1}" if detail else "a rank"
        raise DeviceFailure(f"deepseek_ext ep: rank {self.rank} timed out after {self.timeout_ns / 1e9:g} s in the "
                            f"{_PHASES.get(phase, f'phase {phase}')} waiting for {waited}")

    def _raise_diverged(self) -> None:
        words = self.kernels.EP_HEADER_WORDS
        slot = int(self.epoch_word.item()) % 2
        start = self.layout.headers + slot * self.num_ranks * words * 8
        table = self.region[start:start + self.num_ranks * words * 8].view(torch.int64).view(self.num_ranks, words)
        try:
            check_headers(headers_from(table))
        except Diverged:
            raise
        except ValueError:  # a rank rejected its inputs: nothing ran anywhere
            self.error_word.zero_()
            raise

    # --- dispatch --------------------------------------------------------------------------

    def _params(self, rank: int, local: int, signal: torch.Tensor | None = None):
        p = self.kernels.EpDispatchParams()
        p.rank, p.num_ranks, p.local_experts = rank, self.num_ranks, self.local_experts
        p.timeout_ns, p.layout, p.local = self.timeout_ns, self.layout, local
        peers = self.peer_table if signal is None else signal
        p.set_peers(peers[0].data_ptr(), peers[1].data_ptr())
        return p

    def _outputs(self, p, num_recv: int, num_rows: int, topk: int, dtype, fp8: bool, alignment: int):
        """Output tensors for num_recv received tokens (num_rows expanded rows), set into p."""
        dev = self.device
        out = {"x": torch.empty(num_rows, self.hidden, dtype=dtype, device=dev),
               "scales": (empty_m_major_scales((), num_rows, ceil_div(self.hidden, GROUP), dev) if fp8 else None),
               "topk_idx": torch.empty(num_recv, topk, dtype=torch.int64, device=dev),
               "topk_weights": torch.empty(num_recv, topk, dtype=torch.float32, device=dev),
               "src_rank": torch.empty(num_recv, dtype=torch.int64, device=dev),
               "src_token": torch.empty(num_recv, dtype=torch.int64, device=dev)}
        if alignment > 1:
            out.update(m_indices=torch.empty(num_rows, dtype=torch.int32, device=dev),
                       row_token=torch.empty(num_rows, dtype=torch.int64, device=dev),
                       row_weight=torch.empty(num_rows, dtype=torch.float32, device=dev),
                       token_rows=torch.empty(num_recv, topk, dtype=torch.int32, device=dev))
        p.topk, p.alignment, p.cap_tokens, p.cap_rows = topk, alignment, num_recv, num_rows
        p.x_bytes = self.hidden * dtype.itemsize
        p.scale_groups = ceil_div(self.hidden, GROUP) if fp8 else 0
        p.out_x = out["x"].data_ptr()
        if fp8:
            p.out_scales, p.ld_out_scales = out["scales"].data_ptr(), out["scales"].stride(1)
        for name in ("topk_idx", "topk_weights", "src_rank", "src_token"):
            setattr(p, f"out_{name}", out[name].data_ptr())
        if alignment > 1:
            for name in ("m_indices", "row_token", "row_weight", "token_rows"):
                setattr(p, f"out_{name}", out[name].data_ptr())
        return out

    def _counts(self, region: torch.Tensor) -> list[list[int]]:
        cols = self.layout.count_cols
        raw = region[self.layout.counts:self.layout.counts + self.num_ranks * cols * 4]
        return raw.view(torch.int32).view(self.num_ranks, cols).tolist()

    def _launch_dispatch(self, p) -> None:
        ops.launch_dispatch([p, self.num_sms], self.device)

    def _receive(self, p, region, topk, dtype, fp8, alignment, worst_case, routing) -> DispatchResult:
        """Launches p (whose flags say what it pushes) and lays out what this region received."""
        num_recv_t = torch.zeros(2, dtype=torch.int64, device=self.device)
        per_expert = torch.empty(self.local_experts, dtype=torch.int64, device=self.device)
        p.num_recv, p.tokens_per_local_expert = num_recv_t.data_ptr(), per_expert.data_ptr()
        if worst_case:
            cap = self.num_ranks * self.max_tokens
            rows = cap * min(topk, self.local_experts) + self.local_experts * (alignment - 1) if alignment > 1 else cap
            out = self._outputs(p, cap, rows, topk, dtype, fp8, alignment)
            self._launch_dispatch(p)
            counts, num_src, per_rank = per_expert, (), ()
        else:
            push_data = p.push_data
            p.push_data = False  # first launch: counts (and barriers) only
            self._outputs(p, 0, 0, topk, dtype, fp8, alignment)
            self._launch_dispatch(p)
            _synchronize(self.device)
            self.raise_if_failed()
            num_recv, num_rows = num_recv_t.tolist()
            table = self._counts(region)
            per_rank, num_src = tuple(r[0] for r in table), tuple(r[1] for r in table)
            out = self._outputs(p, num_recv, num_rows, topk, dtype, fp8, alignment)
            p.start_barrier = p.push_counts = False
            p.push_data = push_data
            self._launch_dispatch(p)
            counts = per_expert.tolist()
        topk_idx, topk_weights, is_token_in_rank = routing
        handle = Handle(out["src_rank"], out["src_token"], num_src, out.get("row_token"), out.get("row_weight"),
                        is_token_in_rank=is_token_in_rank, num_recv_per_rank=per_rank,
                        token_rows=out.get("token_rows"), topk_idx=topk_idx, topk_weights=topk_weights,
                        num_recv=num_recv_t)
        local_idx = out["topk_idx"] if topk_idx is None else out["topk_idx"].to(topk_idx.dtype)
        return DispatchResult(out["x"], out["scales"], local_idx, out["topk_weights"], counts, handle,
                              m_indices=out.get("m_indices"))

    def reject(self, header: OpHeader) -> None:
        """Takes part in the operation's first exchange with an invalid header (nothing else)."""
        p = self._params(self.rank, self.bases[self.rank])
        p.num_tokens, p.start_barrier, p.push_counts, p.push_data = 0, True, False, False
        p.header = _words(header, self.kernels)
        self._outputs(p, 0, 0, 0, torch.bfloat16, False, 1)
        empty = torch.zeros(self.local_experts + 2, dtype=torch.int64, device=self.device)
        p.num_recv, p.tokens_per_local_expert = empty.data_ptr(), empty[2:].data_ptr()
        self._launch_dispatch(p)
        _synchronize(self.device)
        if (int(self.error_word.item()) >> 32) in (0, _DIVERGED):  # every header differs from ours
            self.error_word.zero_()

    def dispatch(self, x, scales, topk_idx, topk_weights, layout: Layout, alignment: int,
                 worst_case: bool, header: OpHeader) -> DispatchResult:
        x = _rows_16b(x)
        idx = topk_idx.to(torch.int64).contiguous()
        weights = topk_weights.to(torch.float32).contiguous()
        p = self._params(self.rank, self.bases[self.rank])
        p.num_tokens, p.start_barrier, p.push_counts, p.push_data = x.shape[0], True, True, True
        p.header = _words(header, self.kernels)
        p.x, p.ld_x_bytes = x.data_ptr(), (x.stride(0) if x.shape[0] > 1 else x.shape[1]) * x.element_size()
        if scales is not None:
            if scales.shape[0] > 1 and scales.stride(0) != 1:
                scales = empty_m_major_scales((), *scales.shape, scales.device).copy_(scales)
            p.scales, p.ld_scales = scales.data_ptr(), scales.stride(1)
        p.topk_idx, p.topk_weights = idx.data_ptr(), weights.data_ptr()
        # locals: the kernels read them after this returns, so no temporary may be freed (and its
        # memory handed to an output) before the launches
        slots, slot_in_expert = layout.token_slot_in_rank.contiguous(), layout.slot_in_expert.contiguous()
        per_rank, per_expert = layout.num_tokens_per_rank.contiguous(), layout.num_tokens_per_expert.contiguous()
        p.token_slot_in_rank, p.slot_in_expert = slots.data_ptr(), slot_in_expert.data_ptr()
        p.tokens_per_rank, p.tokens_per_expert = per_rank.data_ptr(), per_expert.data_ptr()
        self._last_topk, self._last_dtype = idx.shape[1], (x.dtype, scales is not None)
        routing = (topk_idx, topk_weights, layout.is_token_in_rank)
        return self._receive(p, self.region, idx.shape[1], x.dtype, scales is not None, alignment, worst_case,
                             routing)

    def peer_received(self, peer: int, alignment: int) -> DispatchResult:
        """Loopback: lays out what peer `peer`'s region received (rank 0's tokens only)."""
        region = _wrap(self.bases[peer], self.region_bytes, self.device)
        own = torch.tensor([[self.bases[peer]] * self.num_ranks] * 2, dtype=torch.int64, device=self.device)
        p = self._params(peer, self.bases[peer], own)  # its barriers count on its own slots
        p.num_tokens, p.start_barrier, p.push_counts, p.push_data = 0, False, False, True
        topk = self._last_topk
        dtype, fp8 = self._last_dtype
        return self._receive(p, region, topk, dtype, fp8, alignment, False, (None, None, None))

    # --- combine ---------------------------------------------------------------------------

    def combine(self, y: torch.Tensor, handle: Handle, header: OpHeader) -> torch.Tensor:
        y = y.contiguous()
        in_rank = handle.is_token_in_rank.contiguous()
        out = torch.empty(in_rank.shape[0], self.hidden, dtype=torch.bfloat16, device=self.device)
        p = self.kernels.EpCombineParams()
        p.rank, p.num_ranks, p.hidden, p.num_tokens = self.rank, self.num_ranks, self.hidden, in_rank.shape[0]
        p.timeout_ns, p.layout, p.local = self.timeout_ns, self.layout, self.bases[self.rank]
        p.set_peers(self.peer_table[0].data_ptr(), self.peer_table[1].data_ptr())
        p.header = _words(header, self.kernels)
        p.y, p.y_is_fp32, p.out = y.data_ptr(), y.dtype == torch.float32, out.data_ptr()
        p.num_recv, p.src_rank, p.src_token = handle.num_recv.data_ptr(), handle.src_rank.data_ptr(), handle.src_token.data_ptr()
        p.is_token_in_rank = in_rank.data_ptr()
        p.topk = handle.token_rows.shape[1] if handle.token_rows is not None else 0
        if handle.token_rows is not None:
            p.token_rows, p.row_weight = handle.token_rows.data_ptr(), handle.row_weight.data_ptr()
        ops.launch_combine([p, self.num_sms], self.device)
        return out


def _words(header: OpHeader, kernels) -> list[int]:
    return header.words() + [0] * (kernels.EP_HEADER_WORDS - OpHeader.WORDS)


def _rows_16b(x: torch.Tensor) -> torch.Tensor:
    """x with a unit last stride and 16-byte aligned rows (a copy otherwise)."""
    ok = (x.stride(-1) == 1 or x.shape[1] <= 1) and x.data_ptr() % 16 == 0 and \
        (x.shape[0] <= 1 or (x.stride(0) * x.element_size()) % 16 == 0)
    return x if ok else x.contiguous()
