"""DualPipe: bidirectional pipeline parallelism (DeepSeek-V3 technical report, section 3.2.1)."""
from __future__ import annotations

import torch
import torch.distributed as dist

from deepseek_ext.pipeline.runner import TwoStagePipeline
from deepseek_ext.pipeline.schedule import check_dualpipe_config, dualpipe


class DualPipe(TwoStagePipeline):
    """``DualPipe(modules=(stage_a, stage_b), process_group=None, batch_dim=0)`` on PP ranks (PP even).

    Rank r holds ``stage_a`` = stage r and ``stage_b`` = stage PP-1-r of the same PP-stage model,
    so every stage exists twice (2x parameters). Micro-batches enter from both ends: the
    ``inputs`` given on rank 0 run through the stage_a modules (rank 0 -> PP-1) and end on rank
    PP-1, which holds their ``labels`` and returns their loss/outputs; the ``inputs`` given on
    rank PP-1 run through the stage_b modules (rank PP-1 -> 0) and end on rank 0. Each end's
    batch is split into num_chunks / 2 chunks; num_chunks must be even and >= 2 * PP.

    After step(), the two copies of a stage hold gradients of different micro-batches: call
    ``sum_mirror_grads()`` before the optimizer step to give both copies the full gradient.
    """

    pipeline_name = "DualPipe"
    check_config = staticmethod(check_dualpipe_config)
    build_schedule = staticmethod(dualpipe)

    def sum_mirror_grads(self) -> None:
        """grad(stage r) = grad of its copy on rank r + grad of its copy on rank PP-1-r, on both ranks
        (a + b == b + a in floating point, so the copies stay bitwise equal)."""
        partner = self.global_rank(self.num_ranks - 1 - self.rank)
        own = [self._flat_grads(m) for m in self.module]
        theirs = [torch.empty_like(own[1]), torch.empty_like(own[0])]  # theirs[i]: the partner's module i
        ops = [dist.P2POp(dist.isend, own[i], partner, self.group, tag=i) for i in range(2)]
        ops += [dist.P2POp(dist.irecv, theirs[i], partner, self.group, tag=i) for i in range(2)]
        for work in dist.batch_isend_irecv(ops):
            work.wait()
        # our module 0 is their module 1 and the other way round
        for module, other in zip(self.module, (theirs[1], theirs[0])):
            offset = 0
            for param in module.parameters():
                n = param.numel()
                param.grad = param.grad + other[offset:offset + n].view_as(param)
                offset += n

    @staticmethod
    def _flat_grads(module) -> torch.Tensor:
        for param in module.parameters():
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        grads = [p.grad.reshape(-1) for p in module.parameters()]
        return torch.cat(grads) if grads else torch.zeros(0)
