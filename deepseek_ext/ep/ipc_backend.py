"""Dispatch/combine with our kernels streaming straight into peers' memory over CUDA IPC.

Memory: each rank allocates one region with cudaMalloc (through deepseek_ext._C.ep_alloc, not
the torch caching allocator, so the IPC handle covers exactly the region and its base needs no
offset), exports it with cudaIpcGetMemHandle, and the group exchanges the handles with
all_gather_object; every rank opens the others'. A region holds control words, the counts rows
and, per direction (dispatch, combine), one ring of `ring_bytes` per (channel, source rank):
its size does not depend on max_tokens_per_rank. Channels are num_sms // 2 (a sender and a
receiver block each). The notify kernel's summary lands in pinned host memory mapped into the
device (ep_host_alloc), read after one wait.

Under DEEPSEEK_EXT_BACKEND=emulate the same path runs on CPU tensors through deepseek_ext._emu,
whose regions are POSIX shared memory: the handles open in the other (gloo) processes.

A dispatch is two launches: notify (the header and the counts; the receiving side's sizes into
the host-mapped summary) and the streaming dispatch. Normal mode waits once, between them, for
the sizes of the outputs; worst-case mode (outputs sized for num_ranks * max_tokens_per_rank
received tokens, counts left on the device) never waits and is CUDA-graph capturable. A
combine is one launch and never waits.
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
_PHASES = {1: "dispatch start barrier", 2: "dispatch counts barrier", 3: "combine start barrier", 5: "grid barrier",
           8: "dispatch send", 9: "dispatch receive", 10: "combine send", 11: "combine receive"}
_DIVERGED = 7
_INFO_GLOBAL = 2  # the summary's global words: the error word, the layout kernel's bad-id word


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
    if device.type == "cpu":  # emulated regions and host-mapped memory are host memory
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


def _wait_for_stream(device: torch.device) -> None:
    """The host's one wait of a normal-mode dispatch: the work queued so far on the current stream."""
    if device.type == "cuda":
        event = torch.cuda.Event()
        event.record()
        event.synchronize()


def check_ring_bytes(kernels, ring_bytes: int, hidden: int) -> None:
    """A ring holds two dispatch slots of fp32 rows with the most top-k slots, and a combine
    receiver's step (EP_WARPS tokens) of bf16 partials."""
    if isinstance(ring_bytes, bool) or not isinstance(ring_bytes, int):
        raise TypeError(f"ring_bytes must be an int, got {type(ring_bytes).__name__}")
    need = max(2 * kernels.ep_dispatch_slot_bytes(4 * hidden, 0, kernels.EP_MAX_TOPK),
               kernels.EP_WARPS * 2 * hidden)
    if ring_bytes < need or ring_bytes % 16:
        raise ValueError(f"ring_bytes must be a multiple of 16 and at least {need} for hidden={hidden} (two fp32 "
                         f"dispatch rows, {kernels.EP_WARPS} bf16 combine rows), got {ring_bytes}")


def region_layout(kernels, num_ranks: int, num_experts: int, channels: int, ring_bytes: int):
    """Byte offsets of a rank's region (the same on every rank) and its size."""
    layout = kernels.EpRegionLayout()
    layout.arrivals, layout.barrier_epoch, layout.grid_base = 0, 256, 264
    layout.grid_arrivals, layout.error = 272, 280
    layout.count_cols = 2 + num_experts // num_ranks
    layout.channels, layout.ring_bytes = channels, ring_bytes
    offset = _CTRL_BYTES
    for name, nbytes in (("headers", 2 * num_ranks * kernels.EP_HEADER_WORDS * 8),
                         ("ring_words", 2 * 2 * channels * num_ranks * 8),
                         ("counts", num_ranks * layout.count_cols * 4),
                         ("rings", 2 * channels * num_ranks * ring_bytes)):
        setattr(layout, name, offset)
        offset = _align(offset + nbytes, 256)
    return layout, offset


class IpcEngine:
    def __init__(self, rank, num_ranks, hidden, num_experts, max_tokens, num_sms, ring_bytes, timeout_s, device,
                 data_bases, signal_bases, owned, opened, group):
        self.kernels = kernel_module(device)
        self.rank, self.num_ranks, self.hidden, self.num_experts = rank, num_ranks, hidden, num_experts
        self.local_experts = ref.experts_per_rank(num_experts, num_ranks)
        self.max_tokens, self.num_sms, self.device = max_tokens, num_sms, device
        self.timeout_ns = int(timeout_s * 1e9)
        self.layout, self.region_bytes = region_layout(self.kernels, num_ranks, num_experts, num_sms // 2, ring_bytes)
        self.bases = data_bases
        self.peer_table = torch.tensor([data_bases, signal_bases], dtype=torch.int64, device=device)
        self._owned, self._opened, self.group = owned, opened, group
        self.region = _wrap(data_bases[rank], self.region_bytes, device)
        self.error_word = self.region[self.layout.error:self.layout.error + 8].view(torch.int64)
        self.epoch_word = self.region[self.layout.barrier_epoch:self.layout.barrier_epoch + 8].view(torch.int64)
        self.input_error = torch.zeros(1, dtype=torch.int64, device=device)  # the layout kernel's bad ids
        # the notify's summary: global words, then one block per receiving side (loopback: every rank)
        self.num_sides = num_ranks if group is None else 1
        self.info_words = 2 + 2 * num_ranks + self.local_experts
        nbytes = 8 * (_INFO_GLOBAL + self.num_sides * self.info_words)
        self._info_host, self._info_device = _checked(self.kernels.ep_host_alloc(nbytes))
        self.info = _wrap(self._info_host, nbytes, torch.device("cpu")).view(torch.int64)
        self._peer_results: list[DispatchResult] = []  # loopback: what every rank received last

    @staticmethod
    def _checked_config(kernels, num_ranks, hidden, num_sms, ring_bytes) -> None:
        if num_ranks > kernels.EP_MAX_RANKS:
            raise ValueError(f"the ipc backend supports at most {kernels.EP_MAX_RANKS} ranks, got {num_ranks}")
        if hidden % 16:
            raise ValueError(f"the ipc backend needs hidden to be a multiple of 16, got {hidden}")
        if num_sms < 2:
            raise ValueError(f"the ipc backend needs num_sms >= 2 (a sender and a receiver block per channel), got {num_sms}")
        check_ring_bytes(kernels, ring_bytes, hidden)

    @classmethod
    def create(cls, group, hidden, num_experts, max_tokens, num_sms, ring_bytes, timeout_s) -> "IpcEngine":
        rank, num_ranks = dist.get_rank(group), dist.get_world_size(group)
        device = engine_device()
        kernels = kernel_module(device)
        cls._checked_config(kernels, num_ranks, hidden, num_sms, ring_bytes)
        _, nbytes = region_layout(kernels, num_ranks, num_experts, num_sms // 2, ring_bytes)
        agree_on_config(group, {"ring_bytes": ring_bytes, "region bytes": nbytes})
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
        return cls(rank, num_ranks, hidden, num_experts, max_tokens, num_sms, ring_bytes, timeout_s, device,
                   bases, bases, [local], opened, group)

    @classmethod
    def loopback(cls, hidden, num_experts, num_ranks, max_tokens, num_sms, ring_bytes, timeout_s) -> "IpcEngine":
        """Rank 0 with local-memory peers; every rank's arrival slots alias rank 0's (so the
        barriers complete with rank 0 alone). The launches run every rank's receiving side
        (dispatch) and sending side (combine) of what rank 0 sends."""
        device = engine_device()
        kernels = kernel_module(device)
        cls._checked_config(kernels, num_ranks, hidden, num_sms, ring_bytes)
        _, nbytes = region_layout(kernels, num_ranks, num_experts, num_sms // 2, ring_bytes)
        bases = [_checked(kernels.ep_alloc(nbytes)) for _ in range(num_ranks)]
        return cls(0, num_ranks, hidden, num_experts, max_tokens, num_sms, ring_bytes, timeout_s, device,
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
        if self._info_host:
            _checked((0, self.kernels.ep_host_free(self._info_host)))
        self._owned, self._opened, self._info_host, self._peer_results = [], [], 0, []

    def reset(self) -> None:
        """Collective: every rank's control words (barrier counters, headers, ring counters, error
        word) back to zero once no kernel runs anywhere, so the next operation starts as the first did."""
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
        """Reads the error words (the caller synchronized) and raises (see _raise)."""
        self._raise(int(self.error_word.item()), int(self.input_error.item()))

    def _raise(self, code: int, bad_id: int) -> None:
        """RuntimeError for a rejected expert id, DeviceFailure naming the rank and phase that
        stalled, the agreement's ValueError when the ranks' operation headers differed (only a
        peer's rejected inputs: the operation ran nowhere, the error word is cleared)."""
        if bad_id:
            self.input_error.zero_()
            detail = bad_id & 0xFFFFFFFF
            bad = detail - (1 << 32) if detail >= 1 << 31 else detail
            raise RuntimeError(f"deepseek_ext ep: topk_idx holds expert id {bad} outside [-1, {self.num_experts}) "
                               "(those slots were skipped)")
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

    def _params(self, header: OpHeader):
        p = self.kernels.EpDispatchParams()
        p.rank, p.num_ranks, p.local_experts = self.rank, self.num_ranks, self.local_experts
        p.timeout_ns, p.layout, p.local = self.timeout_ns, self.layout, self.bases[self.rank]
        p.set_peers(self.peer_table[0].data_ptr(), self.peer_table[1].data_ptr())
        p.header, p.tag = _words(header, self.kernels), header.seq + 1
        p.input_error, p.info = self.input_error.data_ptr(), self._info_device
        p.num_rx = self.num_sides
        return p

    def _side(self, j: int):
        """Receiving side j (this rank, or loopback rank j) with its device counts."""
        side = self.kernels.EpRecvSide()
        side.rank = self.rank if self.num_sides == 1 else j
        side.local = self.bases[side.rank]
        num_recv = torch.zeros(2 + self.num_ranks, dtype=torch.int64, device=self.device)
        per_expert = torch.zeros(self.local_experts, dtype=torch.int64, device=self.device)
        side.num_recv, side.tokens_per_local_expert = num_recv.data_ptr(), per_expert.data_ptr()
        side.info = self._info_device + 8 * (_INFO_GLOBAL + j * self.info_words)
        return side, num_recv, per_expert

    def _outputs(self, side, num_recv: int, num_rows: int, topk: int, dtype, fp8: bool, alignment: int):
        """Output tensors of one receiving side for num_recv tokens (num_rows expanded rows), set into it."""
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
        side.cap_tokens, side.cap_rows = num_recv, num_rows
        side.out_x = out["x"].data_ptr()
        if fp8:
            side.out_scales, side.ld_out_scales = out["scales"].data_ptr(), out["scales"].stride(1)
        for name in ("topk_idx", "topk_weights", "src_rank", "src_token") + (
                ("m_indices", "row_token", "row_weight", "token_rows") if alignment > 1 else ()):
            setattr(side, f"out_{name}", out[name].data_ptr())
        return out

    def _launch(self, name: str, p) -> None:
        ops.launch_ep(name, p, self.device)

    def reject(self, header: OpHeader) -> None:
        """Takes part in the operation's first exchange with an invalid header (nothing else)."""
        p = self._params(header)
        p.only_agree = True
        self._launch("ep_notify", p)
        _wait_for_stream(self.device)
        if (int(self.info[0]) >> 32) in (0, _DIVERGED):  # every header differs from ours
            self.error_word.zero_()

    def dispatch(self, x, scales, topk_idx, topk_weights, layout: Layout, alignment: int,
                 worst_case: bool, header: OpHeader) -> DispatchResult:
        x = _rows_16b(x)
        idx = topk_idx.to(torch.int64).contiguous()
        weights = topk_weights.to(torch.float32).contiguous()
        topk, fp8 = idx.shape[1], scales is not None
        p = self._params(header)
        p.num_tokens, p.topk, p.alignment = x.shape[0], topk, alignment
        p.x, p.ld_x_bytes = x.data_ptr(), (x.stride(0) if x.shape[0] > 1 else x.shape[1]) * x.element_size()
        p.x_bytes = self.hidden * x.element_size()
        p.scale_groups = ceil_div(self.hidden, GROUP) if fp8 else 0
        p.slot_bytes = self.kernels.ep_dispatch_slot_bytes(p.x_bytes, p.scale_groups, topk)
        if fp8:
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
        sides = [self._side(j) for j in range(self.num_sides)]
        for j, (side, _, _) in enumerate(sides):
            p.set_rx(j, side)
        self._launch("ep_notify", p)
        if worst_case:
            cap = self.num_ranks * self.max_tokens
            rows = cap * min(topk, self.local_experts) + self.local_experts * (alignment - 1) if alignment > 1 else cap
            sizes = [(cap, rows, (), (), per_expert_t) for _, _, per_expert_t in sides]
        else:
            _wait_for_stream(self.device)
            self._raise(int(self.info[0]), 0)
            sizes = [self._summary(j) for j in range(self.num_sides)]
        results = []
        for j, ((side, num_recv_t, _), (num_recv, num_rows, per_src, num_src, counts)) in enumerate(zip(sides, sizes)):
            out = self._outputs(side, num_recv, num_rows, topk, x.dtype, fp8, alignment)
            p.set_rx(j, side)
            mine = j == 0
            handle = Handle(out["src_rank"], out["src_token"], num_src, out.get("row_token"), out.get("row_weight"),
                            is_token_in_rank=layout.is_token_in_rank if mine else None, num_recv_per_rank=per_src,
                            token_rows=out.get("token_rows"), topk_idx=topk_idx if mine else None,
                            topk_weights=topk_weights if mine else None, num_recv=num_recv_t)
            local_idx = out["topk_idx"].to(topk_idx.dtype) if mine else out["topk_idx"]
            results.append(DispatchResult(out["x"], out["scales"], local_idx, out["topk_weights"], counts, handle,
                                          m_indices=out.get("m_indices")))
        self._launch("ep_dispatch", p)
        if self.num_sides > 1:
            self._peer_results = results
        if not worst_case:  # bad expert ids (skipped on every rank, so the operation completed everywhere)
            self._raise(0, int(self.info[1]))
        return results[0]

    def _summary(self, j: int):
        """Receiving side j's sizes from the host-mapped summary: (tokens, expanded rows, tokens
        from each source, each source's token count, per local expert)."""
        R = self.num_ranks
        start = _INFO_GLOBAL + j * self.info_words
        words = self.info[start:start + self.info_words].tolist()
        return words[0], words[1], tuple(words[2:2 + R]), tuple(words[2 + R:2 + 2 * R]), words[2 + 2 * R:]

    def peer_received(self, peer: int, alignment: int) -> DispatchResult:
        """Loopback: what rank `peer` received in the last dispatch (rank 0's tokens only)."""
        if not self._peer_results:
            raise ValueError("peer_received needs a dispatch first")
        result = self._peer_results[peer]
        if (result.m_indices is not None) != (alignment > 1):
            raise ValueError(f"expert_alignment={alignment} differs from the last dispatch's")
        return result

    # --- combine ---------------------------------------------------------------------------

    def _send_side(self, rank: int, handle: Handle, y: torch.Tensor | None):
        side = self.kernels.EpSendSide()
        side.rank = rank
        side.y = y.data_ptr() if y is not None else 0
        side.num_recv, side.src_rank, side.src_token = (handle.num_recv.data_ptr(), handle.src_rank.data_ptr(),
                                                        handle.src_token.data_ptr())
        if handle.token_rows is not None and y is not None:
            side.token_rows, side.row_weight = handle.token_rows.data_ptr(), handle.row_weight.data_ptr()
        return side

    def combine(self, y: torch.Tensor, handle: Handle, header: OpHeader) -> torch.Tensor:
        y = y.contiguous()
        in_rank = handle.is_token_in_rank.contiguous()
        out = torch.empty(in_rank.shape[0], self.hidden, dtype=torch.bfloat16, device=self.device)
        p = self.kernels.EpCombineParams()
        p.rank, p.num_ranks, p.hidden, p.num_tokens = self.rank, self.num_ranks, self.hidden, in_rank.shape[0]
        p.timeout_ns, p.layout, p.local = self.timeout_ns, self.layout, self.bases[self.rank]
        p.set_peers(self.peer_table[0].data_ptr(), self.peer_table[1].data_ptr())
        p.header, p.tag = _words(header, self.kernels), header.seq + 1
        p.y_is_fp32, p.out, p.is_token_in_rank = y.dtype == torch.float32, out.data_ptr(), in_rank.data_ptr()
        p.topk = handle.token_rows.shape[1] if handle.token_rows is not None else 0
        p.set_tx(0, self._send_side(self.rank, handle, y))
        p.num_tx = 1
        if self.num_sides > 1:  # loopback: every other rank sends zero partials of what rank 0 sent it
            if not self._peer_results or handle is not self._peer_results[0].handle:
                raise ValueError("a loopback combine needs the handle of the Buffer's last dispatch")
            for peer in range(1, self.num_ranks):
                p.set_tx(peer, self._send_side(peer, self._peer_results[peer].handle, None))
            p.num_tx = self.num_ranks
        self._launch("ep_combine", p)
        return out


def _words(header: OpHeader, kernels) -> list[int]:
    return header.words() + [0] * (kernels.EP_HEADER_WORDS - OpHeader.WORDS)


def _rows_16b(x: torch.Tensor) -> torch.Tensor:
    """x with a unit last stride and 16-byte aligned rows (a copy otherwise)."""
    ok = (x.stride(-1) == 1 or x.shape[1] <= 1) and x.data_ptr() % 16 == 0 and \
        (x.shape[0] <= 1 or (x.stride(0) * x.element_size()) % 16 == 0)
    return x if ok else x.contiguous()
