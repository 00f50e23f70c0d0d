"""dx.models: the DeepSeek-V3 model, its configurations and its cost figures."""
from deepseek_ext.models.config import DeepSeekV3Config
from deepseek_ext.models.cost import H800_BF16_PEAK_FLOPS, TrainingCost, implied_mfu, training_cost
from deepseek_ext.models.counting import flops_per_token, param_counts
from deepseek_ext.models.deepseek_v3 import DeepSeekV3, ModelOutput
from deepseek_ext.models.generation import Generation, generate
from deepseek_ext.models.hf_checkpoint import load_hf_checkpoint, save_hf_checkpoint
from deepseek_ext.models.stages import PipelineStage, pipeline_stages, update_stage_balancing

__all__ = ["DeepSeekV3", "DeepSeekV3Config", "Generation", "H800_BF16_PEAK_FLOPS", "ModelOutput", "PipelineStage",
           "TrainingCost", "flops_per_token", "generate", "implied_mfu", "load_hf_checkpoint", "param_counts",
           "pipeline_stages", "save_hf_checkpoint", "training_cost", "update_stage_balancing"]
