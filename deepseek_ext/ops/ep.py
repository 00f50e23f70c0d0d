"""Expert-parallel ops: input validation, the dispatch layout (kernel or reference), and the
launches of the dispatch/combine kernels over CUDA IPC peer memory (see deepseek_ext/ep)."""
from __future__ import annotations

import torch

from deepseek_ext._backend import uses_kernels
from deepseek_ext.ops import _launch
from deepseek_ext.ops._checks import check_shape, check_tensor
from deepseek_ext.reference import ep as ref
from deepseek_ext.reference.quant import FP8_DTYPE, GROUP, ceil_div

MAX_TOPK = 32  # kernel limit: one lane per top-k slot
MAX_RANKS = 32  # layout kernel limit (the ipc kernels: EP_MAX_RANKS)
_INDEX_DTYPES = (torch.int64, torch.int32)
_WEIGHT_DTYPES = (torch.float32, torch.bfloat16)


# --- validation ------------------------------------------------------------------------------

def check_routing(topk_idx: torch.Tensor, topk_weights: torch.Tensor | None, num_tokens: int | None) -> None:
    """topk_idx [T, k] int64/int32 and topk_weights [T, k] float, on one device."""
    check_tensor(topk_idx, "topk_idx", _INDEX_DTYPES, dim=2)
    if num_tokens is not None and topk_idx.shape[0] != num_tokens:
        raise ValueError(f"topk_idx must have {num_tokens} rows (one per token of x), got {topk_idx.shape[0]}")
    if topk_idx.shape[1] > MAX_TOPK:
        raise ValueError(f"topk_idx may have at most {MAX_TOPK} columns, got {topk_idx.shape[1]}")
    if topk_weights is not None:
        check_tensor(topk_weights, "topk_weights", _WEIGHT_DTYPES, dim=2)
        check_shape(topk_weights, "topk_weights", tuple(topk_idx.shape))
        if topk_weights.device != topk_idx.device:
            raise ValueError(f"topk_weights is on {topk_weights.device} but topk_idx is on {topk_idx.device}")


def check_expert_ids(topk_idx: torch.Tensor, num_experts: int) -> None:
    """Host-side range check (one device sync): ids in [-1, num_experts)."""
    if topk_idx.numel() and (int(topk_idx.min()) < -1 or int(topk_idx.max()) >= num_experts):
        raise ValueError(f"topk_idx holds expert ids outside [-1, {num_experts}): "
                         f"min {int(topk_idx.min())}, max {int(topk_idx.max())}")


def split_activation(x, hidden: int, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x is bf16 [T, hidden] or an FP8 pair (q [T, hidden] e4m3, s [T, ceil(hidden/128)] fp32)."""
    if isinstance(x, tuple):
        if len(x) != 2:
            raise TypeError(f"x must be a tensor or a (q, s) pair, got a tuple of {len(x)}")
        q, s = x
        check_tensor(q, "x[0] (q)", (FP8_DTYPE,), dim=2)
        check_tensor(s, "x[1] (s)", (torch.float32,), dim=2)
        check_shape(s, "x[1] (s)", (q.shape[0], ceil_div(q.shape[1], GROUP)))
        if s.device != q.device:
            raise ValueError(f"x[1] (s) is on {s.device} but x[0] (q) is on {q.device}")
        data, name = q, "x[0] (q)"
    else:
        check_tensor(x, "x", (torch.bfloat16, torch.float32), dim=2)
        data, s, name = x, None, "x"
    if data.shape[1] != hidden:
        raise ValueError(f"{name} must have hidden size {hidden} (the Buffer's), got {data.shape[1]}")
    if data.shape[0] > max_tokens:
        raise ValueError(f"{name} has {data.shape[0]} tokens but the Buffer holds at most "
                         f"max_tokens_per_rank={max_tokens}")
    return data, s


def check_alignment(expert_alignment) -> None:
    if isinstance(expert_alignment, bool) or not isinstance(expert_alignment, int):
        raise TypeError(f"expert_alignment must be an int, got {type(expert_alignment).__name__}")
    if expert_alignment < 1:
        raise ValueError(f"expert_alignment must be >= 1, got {expert_alignment}")


# --- dispatch layout -------------------------------------------------------------------------

def positions_reference(topk_idx: torch.Tensor, is_token_in_rank: torch.Tensor,
                        num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """token_slot_in_rank [T, R] int32: a token's index among this rank's tokens sent to that
    rank (-1 if not sent); slot_in_expert [T, k] int32: the token's index among this rank's
    tokens routed to that slot's expert (-1 on -1 slots)."""
    in_rank = is_token_in_rank.to(torch.int32)
    token_slot_in_rank = torch.where(is_token_in_rank, in_rank.cumsum(0, dtype=torch.int32) - 1, -1)
    valid = topk_idx >= 0
    one_hot = torch.zeros(topk_idx.shape[0], num_experts + 1, dtype=torch.int32, device=topk_idx.device)
    one_hot.scatter_(1, torch.where(valid, topk_idx, num_experts).long(), 1)
    before = one_hot.cumsum(0, dtype=torch.int32) - one_hot  # tokens before t holding each expert
    slot_in_expert = torch.where(valid, before.gather(1, torch.where(valid, topk_idx, num_experts).long()), -1)
    return token_slot_in_rank.to(torch.int32), slot_in_expert.to(torch.int32)


def _layout_outputs(topk_idx: torch.Tensor, num_experts: int, num_ranks: int):
    t, k = topk_idx.shape
    dev = topk_idx.device
    return (torch.empty(num_ranks, dtype=torch.int64, device=dev),
            torch.empty(num_experts, dtype=torch.int64, device=dev),
            torch.empty(t, num_ranks, dtype=torch.bool, device=dev),
            torch.empty(t, num_ranks, dtype=torch.int32, device=dev),
            torch.empty(t, k, dtype=torch.int32, device=dev))


@torch.library.custom_op("deepseek_ext::ep_dispatch_layout", mutates_args=("error_word",))
def _dispatch_layout(topk_idx: torch.Tensor, num_experts: int, num_ranks: int, num_sms: int,
                     error_word: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                        torch.Tensor, torch.Tensor]:
    if not uses_kernels(topk_idx):
        layout = ref.get_dispatch_layout(topk_idx, num_experts, num_ranks)
        return (*layout, *positions_reference(topk_idx, layout.is_token_in_rank, num_experts))
    outs = _layout_outputs(topk_idx, num_experts, num_ranks)
    idx = topk_idx.to(torch.int64).contiguous()
    _launch.call("ep_dispatch_layout", idx.data_ptr(), idx.shape[0], idx.shape[1], num_experts, num_ranks,
                 *(o.data_ptr() for o in outs), error_word.data_ptr(), num_sms, device=idx.device)
    return outs


@_dispatch_layout.register_fake
def _(topk_idx, num_experts, num_ranks, num_sms, error_word):
    return _layout_outputs(topk_idx, num_experts, num_ranks)


def dispatch_layout(topk_idx: torch.Tensor, num_experts: int, num_ranks: int, num_sms: int = 20,
                    error_word: torch.Tensor | None = None):
    """(num_tokens_per_rank [R] int64, num_tokens_per_expert [E] int64, is_token_in_rank [T, R]
    bool, token_slot_in_rank [T, R] int32, slot_in_expert [T, k] int32) of one rank's routing.
    The kernel records out-of-range ids in error_word (and skips them) instead of a host check."""
    check_routing(topk_idx, None, None)
    ref.experts_per_rank(num_experts, num_ranks)
    if error_word is None:
        error_word = torch.zeros(1, dtype=torch.int64, device=topk_idx.device)
    return torch.ops.deepseek_ext.ep_dispatch_layout(topk_idx, num_experts, num_ranks, num_sms, error_word)


# --- kernel launches (CUDA IPC backend) ------------------------------------------------------

def launch_ep(name: str, params, device: torch.device) -> None:
    """Runs ep_notify / ep_dispatch / ep_combine with the parameters deepseek_ext.ep.ipc_backend prepares."""
    _launch.call(name, params, device=device)


def check_y(y: torch.Tensor, rows: int, hidden: int) -> None:
    """combine's input: [rows, hidden] bf16/fp32 (the rows dispatch returned)."""
    check_tensor(y, "y", (torch.bfloat16, torch.float32), dim=2)
    check_shape(y, "y", (rows, hidden))
