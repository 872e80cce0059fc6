"""Per-model sampling policies, as data. Any field can be overridden per request (`load_video(..., fps=1)`).

- `qwen2_5_vl`: qwen-vl-utils 0.0.14 defaults (fps 2, 28-px grid, frame pairs, 4..768 frames, 128..768 tokens
  per frame, a total budget of MODEL_SEQ_LEN tokens).
- `smolvlm2`: transformers' SmolVLM video processor (fps 1, at most 64 frames, skip 1 s at both ends of long
  clips). No resize here: the SmolVLM processor does its own two-stage resize.
- `deepseek_vl2`: frames become untiled images (421 tokens each) inside a 4096-token context, so the frame
  count is computed by `deepseek_max_frames`. No resize here: the DeepSeek processor pads each frame to 384².
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from vlm_app.errors import OptionsError

QWEN_FACTOR = 28  # patch 14 x spatial merge 2
QWEN_MODEL_SEQ_LEN = 128000

SMOLVLM2_TOKENS_PER_FRAME = {"256m": 64, "500m": 64, "2.2b": 81}

DEEPSEEK_CONTEXT_TOKENS = 4096
DEEPSEEK_TOKENS_PER_FRAME = 421  # one untiled 384 view: 14*15 global + 1 separator + 14*15 local
DEEPSEEK_TEXT_TOKENS_PER_FRAME = 10  # "Frame at MM:SS:" line around each <image>
DEEPSEEK_DEFAULT_PROMPT_TOKENS = 128
DEEPSEEK_DEFAULT_MAX_NEW_TOKENS = 512


@dataclass(frozen=True)
class SamplingPolicy:
    name: str
    index_rule: str  # "qwen": rounded float32 linspace; "smolvlm": SmolVLM's skip-ends truncated linspace
    fps: float
    min_frames: int
    max_frames: int
    frame_factor: int = 1  # frame count is a multiple of this (Qwen merges 2 frames per temporal patch)
    factor: int | None = None  # resize to multiples of this; None keeps native size
    min_pixels: float | None = None
    max_pixels: float | None = None
    total_pixels: float | None = None
    max_tokens_per_frame: int | None = None  # per-frame pixel cap in tokens (factor² pixels each)
    skip_secs: float = 0.0
    tokens_per_frame: int | None = None  # fixed visual tokens per frame, for families that do not resize here

    def with_overrides(self, **fields) -> SamplingPolicy:
        return replace(self, **fields)


def deepseek_max_frames(prompt_tokens: int, max_new_tokens: int, context_tokens: int = DEEPSEEK_CONTEXT_TOKENS,
                        tokens_per_frame: int = DEEPSEEK_TOKENS_PER_FRAME,
                        text_tokens_per_frame: int = DEEPSEEK_TEXT_TOKENS_PER_FRAME) -> int:
    """How many untiled frames fit in DeepSeek-VL2's context next to the prompt and the answer."""
    room = context_tokens - prompt_tokens - max_new_tokens
    return max(room // (tokens_per_frame + text_tokens_per_frame), 0)


def _total_pixels_from_env() -> tuple[float, str | None]:
    """The Qwen total pixel budget: VIDEO_MAX_PIXELS if set (the qwen-vl-utils README still tells users to set it,
    but 0.0.14 ignores it; we honour it), else MODEL_SEQ_LEN tokens as qwen-vl-utils 0.0.14 reads it."""
    raw = os.environ.get("VIDEO_MAX_PIXELS")
    if raw is None:
        seq_len = int(float(os.environ.get("MODEL_SEQ_LEN", QWEN_MODEL_SEQ_LEN)))
        return seq_len * QWEN_FACTOR * QWEN_FACTOR * 0.9, None
    if not re.fullmatch(r"\s*[0-9.]+(\s*\*\s*[0-9.]+)*\s*", raw):
        raise OptionsError(f"VIDEO_MAX_PIXELS={raw!r} is not a number or a product like 32000*28*28*0.9; fix or unset it")
    total = 1.0
    for factor in raw.split("*"):
        total *= float(factor)
    return total, f"total_pixels={total:g} from VIDEO_MAX_PIXELS (qwen-vl-utils 0.0.14 ignores this variable)"


def _qwen2_5_vl() -> SamplingPolicy:
    total_pixels, _ = _total_pixels_from_env()
    return SamplingPolicy(name="qwen2_5_vl", index_rule="qwen", fps=2.0, min_frames=4, max_frames=768,
                          frame_factor=2, factor=QWEN_FACTOR, min_pixels=128 * QWEN_FACTOR**2,
                          total_pixels=total_pixels, max_tokens_per_frame=768)


def _smolvlm2() -> SamplingPolicy:
    return SamplingPolicy(name="smolvlm2", index_rule="smolvlm", fps=1.0, min_frames=1, max_frames=64,
                          skip_secs=1.0, tokens_per_frame=SMOLVLM2_TOKENS_PER_FRAME["256m"])


def _deepseek_vl2() -> SamplingPolicy:
    max_frames = deepseek_max_frames(DEEPSEEK_DEFAULT_PROMPT_TOKENS, DEEPSEEK_DEFAULT_MAX_NEW_TOKENS)
    return SamplingPolicy(name="deepseek_vl2", index_rule="qwen", fps=1.0, min_frames=1, max_frames=max_frames,
                          tokens_per_frame=DEEPSEEK_TOKENS_PER_FRAME)


POLICIES = {"qwen2_5_vl": _qwen2_5_vl, "smolvlm2": _smolvlm2, "deepseek_vl2": _deepseek_vl2}


def get_policy(name: str) -> SamplingPolicy:
    """The named family's policy, built now (so environment variables are read per call)."""
    if name not in POLICIES:
        raise OptionsError(f"unknown sampling policy {name!r}; choose one of {', '.join(POLICIES)}")
    return POLICIES[name]()


def policy_notes(policy: SamplingPolicy) -> list[str]:
    """Deliberate differences a policy carries from the environment, for `SampledVideo.notes`."""
    if policy.name != "qwen2_5_vl":
        return []
    total_pixels, note = _total_pixels_from_env()
    return [note] if note and policy.total_pixels == total_pixels else []


def smolvlm2_tokens_per_frame(model_name: str) -> int:
    """64 for SmolVLM2-256M/500M (512 px frames), 81 for SmolVLM2-2.2B (384 px frames)."""
    lowered = model_name.lower()
    return next((tokens for size, tokens in SMOLVLM2_TOKENS_PER_FRAME.items() if size in lowered),
                SMOLVLM2_TOKENS_PER_FRAME["256m"])
