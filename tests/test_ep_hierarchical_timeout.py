"""dx.ep.Buffer across nodes when a rank is slow or dead: every other rank raises a TimeoutError
that says so within about timeout_s (gloo), instead of waiting; later calls raise at once."""
import os
import time

import pytest
import torch
import torch.distributed as dist

import deepseek_ext as dx
from gloo_ranks import run_ranks

TIMEOUT_S, HIDDEN, EXPERTS = 3.0, 128, 8
MESSAGE = rf"did not complete within timeout_s={TIMEOUT_S}: a rank is slow or has died"


def _dispatch(buffer, rank):
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(6, HIDDEN, generator=gen).bfloat16()
    idx = torch.rand(6, EXPERTS, generator=gen).argsort(1)[:, :2]
    return buffer.dispatch(x, idx, torch.rand(6, 2, generator=gen))


def worker(rank, num_ranks, fault, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=num_ranks)
    buffer = dx.ep.Buffer(None, HIDDEN, EXPERTS, 16, ranks_per_node=2, timeout_s=TIMEOUT_S)
    dist.barrier()  # the healthy round starts together (a loaded machine must not look like a slow rank)
    result = _dispatch(buffer, rank)  # everyone healthy: works
    buffer.combine(result.x, result.handle)
    faulty = rank == num_ranks - 1
    if faulty and fault == "dead":
        time.sleep(0.5)  # until the peers have read all it sent
        os._exit(0)  # gone without a word, as a crashed node
    if faulty:
        time.sleep(2.5 * TIMEOUT_S)  # a rank that stalls longer than the timeout
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=MESSAGE):
        _dispatch(buffer, rank)
    if not faulty:
        assert time.monotonic() - start < 4 * TIMEOUT_S + 2, "the error must come after about timeout_s"
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=MESSAGE):  # the Buffer stays unusable, and says so at once
        buffer.combine(result.x, result.handle)
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("fault", ["slow", "dead"])
def test_a_slow_or_dead_rank_gives_every_rank_a_timeout_error(fault, tmp_path):
    run_ranks(worker, 4, 4, fault, str(tmp_path / "pg"))
