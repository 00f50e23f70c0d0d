"""The tiny DeepSeek-V3, cut into stages, trains under DualPipeV (one process) and DualPipe (2 gloo
processes): the pipelined loss equals the per-chunk sequential loss, and it falls when trained."""
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import deepseek_ext as dx
from gloo_ranks import run_ranks

STEPS = 10


def _tiny_model():
    torch.manual_seed(0)
    config = dx.models.DeepSeekV3Config.preset("tiny", fp8=False, n_mtp_modules=0, dtype=torch.float32)
    return dx.models.DeepSeekV3(config), config


def _batch(config, rows: int):
    ids = torch.randint(0, config.vocab_size, (rows, 33), generator=torch.Generator().manual_seed(1))
    return ids[:, :-1], ids[:, 1:]


def criterion(logits, labels):
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def test_stage_split_covers_the_model_once():
    model, _ = _tiny_model()
    stages = dx.models.pipeline_stages(model, 2)
    in_stages = [id(p) for stage in stages for p in stage.parameters()]
    assert model.mtp is None and sorted(in_stages) == sorted(id(p) for p in model.parameters())
    x, _ = _batch(model.config, 2)
    with torch.no_grad():
        assert torch.equal(stages[1](stages[0](x)), model.logits(model.hidden_states(x)))


@pytest.mark.parametrize("bad", [0, 4, 1.5])
def test_stage_count_is_checked(bad):
    model, _ = _tiny_model()
    with pytest.raises(ValueError, match=r"num_stages must be an int in \[1, 3\]"):
        dx.models.pipeline_stages(model, bad)


def test_dualpipev_trains_the_tiny_model():
    model, config = _tiny_model()
    stages = dx.models.pipeline_stages(model, 2)
    pipe = dx.pipeline.DualPipeV(tuple(stages))
    x, y = _batch(config, 8)
    with torch.no_grad():
        sequential = sum(criterion(stages[1](stages[0](xc)), yc) for xc, yc in zip(x.chunk(4), y.chunk(4)))
    optimizer = torch.optim.AdamW(pipe.parameters(), lr=3e-3)
    biases = [m.gate.bias.clone() for m in model.moe_layers()]
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss, _ = pipe.step(x, num_chunks=4, criterion=criterion, labels=(y,))
        optimizer.step()
        dx.models.update_stage_balancing(*stages)
        losses.append(loss.item())
    assert losses[0] == pytest.approx(sequential.item(), rel=1e-6)
    assert losses[-1] < 0.6 * losses[0]
    assert any(not torch.equal(b, m.gate.bias) for b, m in zip(biases, model.moe_layers()))


def _dualpipe_worker(rank: int, init_file: str, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model, config = _tiny_model()
        stages = dx.models.pipeline_stages(model, 2)
        pipe = dx.pipeline.DualPipe((stages[rank], stages[1 - rank]))
        x, y = _batch(config, 16)
        inputs = (x[:8],) if rank == 0 else (x[8:],)  # rank 0 feeds route 0, rank 1 route 1
        labels = (y[8:],) if rank == 0 else (y[:8],)  # each rank scores the route that ends on it
        optimizer = torch.optim.AdamW(pipe.parameters(), lr=3e-3)
        losses = []
        for _ in range(STEPS):
            optimizer.zero_grad()
            loss, _ = pipe.step(*inputs, num_chunks=4, criterion=criterion, labels=labels)
            pipe.sum_mirror_grads()
            optimizer.step()
            dx.models.update_stage_balancing(*stages)
            losses.append(loss.item())
        results[rank] = losses
    finally:
        dist.destroy_process_group()


def test_dualpipe_trains_the_tiny_model_on_two_processes():
    with tempfile.TemporaryDirectory() as tmp:
        results = mp.Manager().dict()
        run_ranks(_dualpipe_worker, 2, f"{tmp}/init", results)
    for rank in (0, 1):
        assert results[rank][-1] < 0.6 * results[rank][0], (rank, results[rank])
