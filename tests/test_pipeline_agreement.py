"""DualPipe / DualPipeV on 2 gloo processes: the ranks agree on the step (num_chunks, batch,
per-sample shapes, dtypes, grad mode) before any message, so a bad call raises the same ValueError
on every rank within seconds instead of deadlocking. Guarded twice against a hang: a short
process-group timeout and a SIGALRM (default action: the rank dies, run_ranks raises)."""
import datetime
import json
import os
import re
import signal
import time

import pytest
import torch
import torch.distributed as dist

from deepseek_ext.pipeline import DualPipe, DualPipeV
from gloo_ranks import run_ranks
from test_pipeline_dist import DIM, Block, criterion

FAST_S = 5.0  # every rank must raise within this


def _expect_error(pattern, call):
    start = time.monotonic()
    with pytest.raises(ValueError) as info:
        call()
    elapsed = time.monotonic() - start
    assert elapsed < FAST_S, f"took {elapsed:.1f}s"
    assert re.search(pattern, str(info.value)), str(info.value)
    return str(info.value)


def _data(batch, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, DIM, generator=g, dtype=dtype)


def agreement_worker(rank, init_file, out_dir):
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(60)  # a hang kills the rank; run_ranks then fails the test
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=15))
    torch.manual_seed(0)
    pipe = DualPipe((Block().double(), Block().double()))
    vpipe = DualPipeV((Block().double(), Block().double()))
    messages = {}

    # the case: rank 0 batch 8 in 4 chunks, rank 1 batch 16 in 8
    batch, chunks = (8, 4) if rank == 0 else (16, 8)
    x = _data(batch)
    messages["chunks"] = _expect_error(
        r"num_chunks: the ranks of the DualPipe step disagree \(4 on rank 0; 8 on rank 1\)",
        lambda: pipe.step(x, num_chunks=chunks, criterion=criterion, labels=(x,)))

    # rank 1 fails its own checks (labels not a tuple); rank 0 is fine: both raise the same error
    x = _data(8)
    labels = (x,) if rank == 0 else x
    messages["local"] = _expect_error(
        r"labels: expected a tuple or list of tensors, got Tensor \[DualPipe step: failed on rank 1\]",
        lambda: pipe.step(x, num_chunks=4, criterion=criterion, labels=labels))

    # rank 1 fails (too few rows for its chunks), rank 0 fails differently (no inputs): both named
    x = _data(8 if rank == 0 else 1)
    args = () if rank == 0 else (x,)
    messages["two_local"] = _expect_error(
        r"inputs: rank 0 starts a route of DualPipe and needs inputs \[DualPipe step: failed on rank 0\]; "
        r"inputs\[0\]: needs at least num_chunks=2 rows.*\[DualPipe step: failed on rank 1\]",
        lambda: pipe.step(*args, num_chunks=4, criterion=criterion, labels=(_data(8),)))

    # the two routes' inputs run through the same stages: their dtypes must match
    x = _data(8, torch.float64 if rank == 0 else torch.float32)
    messages["dtype"] = _expect_error(
        r"inputs \(per-sample shapes and dtypes\): .*float64.*on rank 0; .*float32.*on rank 1",
        lambda: pipe.step(x, num_chunks=4, criterion=criterion, labels=(x.double(),)))

    # labels held on rank 1 (route 0 ends there) have batch 6, route 0's inputs on rank 0 batch 8
    x = _data(8)
    labels = (_data(8),) if rank == 0 else (_data(6),)
    messages["labels"] = _expect_error(
        r"labels\[0\]: batch 6 along batch_dim on rank 1 != the inputs' batch 8 on rank 0 \(route 0 of DualPipe",
        lambda: pipe.step(x, num_chunks=4, criterion=criterion, labels=labels))

    # DualPipeV: inputs and labels both on rank 0, labels' batch wrong
    args, labels = ((_data(8),), (_data(7),)) if rank == 0 else ((), ())
    messages["labels_v"] = _expect_error(
        r"labels\[0\]: batch 7 along batch_dim on rank 0 != the inputs' batch 8 on rank 0 \(route 0 of DualPipeV",
        lambda: vpipe.step(*args, num_chunks=4, criterion=criterion, labels=labels))

    # one rank under no_grad, the other training: their schedules would differ
    x = _data(8)
    def mixed_grad():
        with torch.set_grad_enabled(rank == 0):
            pipe.step(x, num_chunks=4, criterion=criterion, labels=(x,))
    messages["grad"] = _expect_error(r"grad mode \(torch.is_grad_enabled\(\)\): .*true on rank 0; false on rank 1",
                                     mixed_grad)

    # after all that nothing is left in flight: a good step still runs on both pipelines
    x = _data(8)
    loss, _ = pipe.step(x, num_chunks=4, criterion=criterion, labels=(x,))
    assert loss is not None and torch.isfinite(loss)
    args, labels = ((x,), (x,)) if rank == 0 else ((), ())
    loss, _ = vpipe.step(*args, num_chunks=4, criterion=criterion, labels=labels)
    assert (loss is not None) == (rank == 0)
    dist.barrier()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(messages, f)
    dist.destroy_process_group()
    signal.alarm(0)


def test_bad_steps_raise_the_same_error_on_every_rank(tmp_path):
    run_ranks(agreement_worker, 2, str(tmp_path / "init"), str(tmp_path))
    done = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(done[0]) == 7 and done[0] == done[1], done  # the very same messages on both ranks


def test_single_process_labels_batch_checked():
    pipe = DualPipeV((Block().double(), Block().double()))
    x = _data(8)
    with pytest.raises(ValueError, match=r"labels\[0\]: batch 6 along batch_dim on rank 0 != the inputs' batch 8"):
        pipe.step(x, num_chunks=2, criterion=criterion, labels=(_data(6),))
    with pytest.raises(ValueError, match=r"inputs\[1\]: batch 6 along batch_dim=0 != 8, the batch of inputs\[0\]"):
        pipe.step(x, _data(6), num_chunks=2, criterion=criterion, labels=(x,))
