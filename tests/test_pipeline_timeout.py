"""A rank that never starts a DualPipe step (it raised in its own code first) must not keep its
peers waiting for the process-group timeout: they raise a TimeoutError naming it and the step
within agreement_timeout, a latecomer learns at once that the step was abandoned, the ranks then
step together again, and no step's keys stay in the store. The process-group timeout (60 s) and
a SIGALRM are far above what each case may take, so only the agreement timeout can end a wait."""
import datetime
import json
import os
import re
import signal
import time

import pytest
import torch
import torch.distributed as dist

from deepseek_ext.pipeline import DualPipe
from deepseek_ext.pipeline.step_exchange import TIMEOUT_ENV, resolve_agreement_timeout
from gloo_ranks import run_ranks
from test_pipeline_dist import DIM, Block, criterion

TIMEOUT_S = 1.0
FAST_S = 5.0  # the FileStore polls about once a second


def _data(batch, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, DIM, generator=g, dtype=torch.float64)


def _timed_out(call):
    start = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        call()
    elapsed = time.monotonic() - start
    assert elapsed < FAST_S, f"took {elapsed:.1f}s"
    return str(info.value), elapsed


def _step_keys_left(num_steps, world):
    store = dist.distributed_c10d._get_default_store()
    return [k for n in range(1, num_steps + 1)
            for k in [f"deepseek_ext/pipeline/step{n}/{part}" for part in (*[f"rank{r}" for r in range(world)],
                                                                            "outcome", "read")]
            if store.check([k])]


def absent_rank_worker(rank, world, absent, init_file, out_dir):
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(50)  # a hang kills the rank; run_ranks then fails the test
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    store = dist.distributed_c10d._get_default_store()
    torch.manual_seed(rank)
    pipe = DualPipe((Block().double(), Block().double()), agreement_timeout=TIMEOUT_S)
    x = _data(8, seed=rank)
    step = lambda: pipe.step(x, num_chunks=2 * world, criterion=criterion, labels=(x,))  # noqa: E731
    result = {}
    if rank in absent:
        with pytest.raises(RuntimeError, match="a bug in this rank's own code"):
            raise RuntimeError("a bug in this rank's own code")  # raised before step: step 1 never starts here
        store.wait([f"test/gave_up{r}" for r in range(world) if r not in absent])
        result["late"], result["late_s"] = _timed_out(step)  # the abandoned step 1, at once
    else:
        result["waited"], result["waited_s"] = _timed_out(step)
        store.set(f"test/gave_up{rank}", "1")
    loss, _ = step()  # step 2 runs on every rank: the step counts are in line again
    assert (loss is None) == (rank not in (0, world - 1)) and (loss is None or torch.isfinite(loss))
    dist.barrier()
    result["keys_left"] = _step_keys_left(2, world)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()
    signal.alarm(0)


@pytest.mark.parametrize("world, absent", [(2, (1,)), (4, (1, 3))])
def test_a_rank_that_raises_before_step_stops_its_peers_within_the_timeout(tmp_path, world, absent):
    run_ranks(absent_rank_worker, world, world, absent, str(tmp_path / "init"), str(tmp_path))
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    waited = [results[r]["waited"] for r in range(world) if r not in absent]
    missing = ("rank 1" if len(absent) == 1 else "ranks 1, 3")
    assert re.match(rf"DualPipe step 1: {missing} of the process group did not start the step within 1 s", waited[0])
    assert f"agreement_timeout= to the pipeline or set ${TIMEOUT_ENV}" in waited[0]
    assert all(w == waited[0] for w in waited)  # the same message on every waiting rank
    assert all(results[r]["waited_s"] >= TIMEOUT_S for r in range(world) if r not in absent)
    assert all(results[r]["late"] == waited[0] for r in absent)  # the latecomers too
    assert all(results[r]["late_s"] < TIMEOUT_S for r in absent)  # without waiting
    assert all(r["keys_left"] == [] for r in results)


def test_agreement_timeout_is_checked(monkeypatch):
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert resolve_agreement_timeout(None) == 120.0 and resolve_agreement_timeout(2) == 2.0
    monkeypatch.setenv(TIMEOUT_ENV, "7.5")
    assert resolve_agreement_timeout(None) == 7.5 and resolve_agreement_timeout(3.0) == 3.0
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=f"{TIMEOUT_ENV}: expected a number of seconds, got 'soon'"):
        resolve_agreement_timeout(None)
    monkeypatch.delenv(TIMEOUT_ENV)
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="agreement_timeout: expected a positive, finite number of seconds"):
            resolve_agreement_timeout(bad)
    for bad in ("60", True):
        with pytest.raises(TypeError, match="agreement_timeout: expected a number of seconds"):
            resolve_agreement_timeout(bad)
