"""DualPipeV: DualPipe cut in half, a V-shaped schedule on half the devices."""
from __future__ import annotations

from deepseek_ext.pipeline.runner import TwoStagePipeline
from deepseek_ext.pipeline.schedule import check_dualpipev_config, dualpipev


class DualPipeV(TwoStagePipeline):
    """``DualPipeV(modules=(stage_a, stage_b), process_group=None, batch_dim=0)`` on PP ranks.

    The model has 2*PP stages; rank r holds ``stage_a`` = stage r and ``stage_b`` = stage
    2*PP-1-r, each stage once. Every micro-batch goes down the stage_a modules (rank 0 -> PP-1),
    turns on the last rank, and comes back up the stage_b modules, so rank 0 gives the
    ``inputs`` and ``labels`` and returns the loss/outputs. num_chunks must be >= 2 * PP.
    Without torch.distributed initialized it runs on one process (PP = 1).
    """

    pipeline_name = "DualPipeV"
    check_config = staticmethod(check_dualpipev_config)
    build_schedule = staticmethod(dualpipev)
