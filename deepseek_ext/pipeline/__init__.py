"""dx.pipeline: DualPipe and DualPipeV pipeline parallelism, the zero-bubble WeightGradStore,
and simulate() for the timelines of 1F1B, ZB1P, DualPipe and DualPipeV."""
import warnings

from deepseek_ext.pipeline.dualpipe import DualPipe
from deepseek_ext.pipeline.dualpipev import DualPipeV
from deepseek_ext.pipeline.schedule import Schedule, build_schedule
from deepseek_ext.pipeline.simulate import Simulation, simulate
from deepseek_ext.pipeline.weight_grad_store import DeferredWeightGradLinear, WeightGradStore

# `python -m deepseek_ext.pipeline.simulate` re-runs the module this package already imported
# for dx.pipeline.simulate; runpy's warning about it is harmless here.
warnings.filterwarnings("ignore", category=RuntimeWarning,
                        message="'deepseek_ext.pipeline.simulate' found in sys.modules")

__all__ = ["DualPipe", "DualPipeV", "WeightGradStore", "DeferredWeightGradLinear", "simulate",
           "Simulation", "Schedule", "build_schedule"]
