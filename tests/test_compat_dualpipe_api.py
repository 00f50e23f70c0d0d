"""deepseek_ext.compat.dualpipe's surface: upstream's constructor order, per-chunk losses, labels as a
list, rank_mapping, WeightGradStore's cache/funcs_queue, run_backward and set_p2p_tensor_*, and
their bad-input errors."""
import copy
import json
import os

import pytest
import torch
import torch.distributed as dist

import deepseek_ext.compat.dualpipe as compat
from deepseek_ext.compat.dualpipe import DualPipe, DualPipeV, WeightGradStore, run_backward
from gloo_ranks import run_ranks
from test_pipeline_dist import DIM, Block, criterion, make_data, make_stages, sequential


def test_positional_batch_dim_and_per_chunk_losses():
    stages = make_stages(2, seed=3)
    x, labels = torch.randn(2, 6, DIM, dtype=torch.float64), torch.randn(2, 6, DIM, dtype=torch.float64)
    pipe = DualPipeV(tuple(copy.deepcopy(stages)), 1)  # upstream: (modules, batch_dim, ...)
    assert pipe.batch_dim == 1
    loss, out = pipe.step(x, num_chunks=3, criterion=criterion, labels=[labels], return_outputs=True)
    outputs = [stages[1](stages[0](xc)).detach() for xc in x.tensor_split(3, 1)]
    losses = [criterion(o, lc) for o, lc in zip(outputs, labels.tensor_split(3, 1))]
    assert loss.shape == (3,) and torch.equal(loss, torch.stack(losses))
    assert torch.equal(out, torch.cat(outputs, 1))


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"rank_mapping: expected the pipeline rank of each of the 1 process-group "
                                         r"ranks \(a permutation of 0..0\), got \[1\]"):
        DualPipeV((Block(), Block()), 0, None, [1])
    with pytest.raises(ValueError, match="batch_dim: expected a non-negative int"):
        DualPipeV((Block(), Block()), -1)
    with pytest.raises(ValueError, match="process_group: DualPipe needs an even number of ranks >= 2, got 1"):
        DualPipe((Block(), Block()))
    with pytest.raises(ValueError, match="agreement_timeout: expected a positive"):
        DualPipeV((Block(), Block()), agreement_timeout=0)


def test_set_p2p_tensor_shapes_and_dtype():
    compat.set_p2p_tensor_shapes([(3, 16, 8), [3, 16]])
    compat.set_p2p_tensor_dtype(torch.bfloat16)
    assert compat.TENSOR_SHAPES == [(3, 16, 8), (3, 16)] and compat.TENSOR_DTYPE is torch.bfloat16
    for bad in ((3, 16, 8), [(3, -1)], [(3.0, 2)], "3x16"):
        with pytest.raises(TypeError, match="shapes: expected a list of shapes"):
            compat.set_p2p_tensor_shapes(bad)
    with pytest.raises(TypeError, match="dtype: expected a torch.dtype, got 'float32'"):
        compat.set_p2p_tensor_dtype("float32")


def test_run_backward_accumulates_like_autograd():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 5, generator=g, requires_grad=True)
    x = torch.randn(3, 5, generator=g)
    upstream = torch.randn(3, 4, generator=g)
    run_backward([x @ w.T], [upstream])
    run_backward([x @ w.T], [upstream])
    assert torch.allclose(w.grad, 2 * upstream.T @ x)
    with pytest.raises(ValueError, match="grad_tensors: 1 given for 2 tensors"):
        run_backward([x @ w.T, x @ w.T], [upstream])


def test_weight_grad_store_cache_and_funcs_queue():
    WeightGradStore.clear()
    ran = []
    WeightGradStore.enabled = True
    WeightGradStore.put(lambda: ran.append("a"))
    WeightGradStore.put(lambda: ran.append("b"))
    assert len(WeightGradStore.cache) == 2 and WeightGradStore.funcs_queue.empty()
    WeightGradStore.flush()
    WeightGradStore.put(lambda: ran.append("c"))
    WeightGradStore.flush()
    WeightGradStore.enabled = False
    assert WeightGradStore.cache == [] and WeightGradStore.funcs_queue.qsize() == 2
    WeightGradStore.pop()
    assert ran == ["a", "b"]
    WeightGradStore.pop()
    assert ran == ["a", "b", "c"] and WeightGradStore.funcs_queue.empty()
    with pytest.raises(RuntimeError, match="WeightGradStore.pop: no deferred weight gradients are waiting"):
        WeightGradStore.pop()
    WeightGradStore.put(lambda: ran.append("now"))  # not enabled: runs at once
    assert ran[-1] == "now"


def swapped_ranks_worker(rank, init_file, out_dir):
    """rank_mapping=[1, 0]: process 1 is pipeline rank 0, so it holds stages 0 and 3 and feeds the inputs."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    stages = make_stages(4, seed=11)
    x, labels = make_data(8, seed=12)
    pipeline_rank = 1 - rank
    pipe = DualPipeV((copy.deepcopy(stages[pipeline_rank]), copy.deepcopy(stages[3 - pipeline_rank])), 0, None, [1, 0])
    args = (x,) if pipeline_rank == 0 else (None,)
    loss, _ = pipe.step(*args, num_chunks=4, criterion=criterion, labels=(labels if pipeline_rank == 0 else None,))
    reference = copy.deepcopy(stages)
    ref_loss, _ = sequential(reference, x, labels, 4)
    result = {"rank": pipe.rank, "loss": None if loss is None else loss.tolist(), "ref_sum": ref_loss.item(),
              "grads_equal": all(torch.allclose(p.grad, q.grad, rtol=1e-12, atol=0)
                                 for p, q in zip(pipe.module[0].parameters(), reference[pipeline_rank].parameters()))}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


def test_rank_mapping_swaps_the_pipeline_ranks(tmp_path):
    run_ranks(swapped_ranks_worker, 2, str(tmp_path / "init"), str(tmp_path))
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in results] == [1, 0] and results[0]["loss"] is None
    assert len(results[1]["loss"]) == 4 and sum(results[1]["loss"]) == pytest.approx(results[1]["ref_sum"], rel=1e-14)
    assert all(r["grads_equal"] for r in results)
