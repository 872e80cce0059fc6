"""DeepSeek-VL2 on current transformers: loads the official checkpoints (model_type `deepseek_vl_v2`) unchanged."""

from .configuration import DeepseekVLV2Config
from .processing import DeepseekVLV2Processor

__all__ = ["DeepseekVLV2Config", "DeepseekVLV2Processor"]
