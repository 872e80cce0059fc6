"""vlm_app: understand videos with open vision-language models (Qwen2.5-VL, SmolVLM2, DeepSeek-VL2).

`from vlm_app import load, describe, describe_chapters` — see `vlm_app.api` (torch is imported only when a model is loaded).
"""

from vlm_app.api import describe, describe_chapters, load

__all__ = ["describe", "describe_chapters", "load"]
