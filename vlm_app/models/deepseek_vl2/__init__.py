"""DeepSeek-VL2 on current transformers: loads the official checkpoints (model_type `deepseek_vl_v2`) unchanged.

Importing this package registers the model type with AutoConfig and AutoModelForCausalLM (the released
config.json files have no `auto_map`).
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .configuration import DeepseekVLV2Config
from .modeling import DeepseekVLV2ForCausalLM
from .processing import DeepseekVLV2Processor

AutoConfig.register(DeepseekVLV2Config.model_type, DeepseekVLV2Config, exist_ok=True)
AutoModelForCausalLM.register(DeepseekVLV2Config, DeepseekVLV2ForCausalLM, exist_ok=True)

__all__ = ["DeepseekVLV2Config", "DeepseekVLV2ForCausalLM", "DeepseekVLV2Processor"]
