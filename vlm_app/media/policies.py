"""Sampling policies, as data: which frames (`index_rule`), how many, and at what size (`resize_rule`). Any field can
be overridden per request (`load_video(..., fps=1)`).

Media knows no model: each family defines its policies in its own module (`vlm_app.adapters.<family>`) and hands
them to `load_video`. A policy named by a string is looked up in the families' table (`get_policy`).

Index rules (pure functions in `sampling`):
- "qwen": qwen-vl-utils 0.0.14 — rounded float32 torch linspace, frame counts in multiples of `frame_factor`;
- "linspace": transformers' default `sample_frames` — int(seconds·fps) clamped to [min, max], rounded float64
  numpy linspace, any count (Qwen3-VL's processor pads an odd count itself);
- "smolvlm": SmolVLM's video processor — truncated linspace, skipping `skip_secs` at both ends of long clips;
A family with another rule gives its own object (`nframes(count, rate, policy, options)`, `indices(first, last, n)`).
Resize rules:
- "frame": qwen-vl-utils — per-frame bounds, shrunk so all frames fit `total_pixels`;
- "video": transformers' Qwen3-VL video processor — one pixel budget over frames × height × width;
- None: the native size (the family's processor resizes);
or the family's own function `(height, width, nframes, policy, options) -> (height, width)`.
`reference_resize` is the reference's kernel: qwen-vl-utils resizes float frames, transformers' video processors
uint8 ones with torch's uint8 kernel (then our `resize="fast"` kernel is the exact one).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Any

from vlm_app.errors import OptionsError


@dataclass(frozen=True)
class SamplingPolicy:
    name: str
    index_rule: Any  # a rule's name, or the family's own rule object
    fps: float
    min_frames: int
    max_frames: int
    frame_factor: int = 1  # frame count is a multiple of this (Qwen2.5-VL merges 2 frames per temporal patch)
    factor: int | None = None  # resize to multiples of this; None keeps the native size
    resize_rule: Any = None  # a rule's name, the family's own function, or None (native size)
    min_pixels: float | None = None
    max_pixels: float | None = None
    total_pixels: float | None = None
    max_tokens_per_frame: int | None = None  # per-frame pixel cap in tokens (factor² pixels each)
    cap_pixels_per_frame: bool = False  # "video" rule: qwen-vl-utils' per-frame cap inside the video budget
    reference_resize: str = "float"  # the reference's kernel: "float" (torchvision on float frames) or "uint8"
    skip_secs: float = 0.0
    tokens_per_frame: int | None = None  # fixed visual tokens per frame, for families that do not resize here
    notes: tuple[str, ...] = ()  # deliberate differences this policy carries (from the environment, say)

    def with_overrides(self, **fields) -> SamplingPolicy:
        return replace(self, **fields)


def get_policy(policy: str | SamplingPolicy) -> SamplingPolicy:
    """A policy object as it is, or the families' policy of that name, built now (so environment variables are
    read per call)."""
    if isinstance(policy, SamplingPolicy):
        return policy
    from vlm_app.adapters.registry import policy_factories  # the names belong to the families

    factories = policy_factories()
    if policy not in factories:
        raise OptionsError(f"unknown sampling policy {policy!r}; choose one of {', '.join(factories)}")
    return factories[policy]()


QWEN_VL_UTILS_MODEL_SEQ_LEN = 128000
QWEN_VL_UTILS_MIN_TOKENS = 128  # per video frame
QWEN_VL_UTILS_MAX_TOKENS = 768


def qwen_vl_utils(name: str, patch_size: int) -> SamplingPolicy:
    """qwen-vl-utils 0.0.14's video defaults for a model of `patch_size` (14: Qwen2.5-VL; 16: Qwen3-VL, its
    `image_patch_size=16`): fps 2, frame pairs, 4..768 frames, 128..768 tokens per frame and a total budget of
    MODEL_SEQ_LEN tokens, on a grid of patch_size × 2 (the spatial merge)."""
    factor = patch_size * 2
    total_pixels, note = _total_pixels_from_env(factor)
    return SamplingPolicy(name=name, index_rule="qwen", fps=2.0, min_frames=4, max_frames=768, frame_factor=2,
                          factor=factor, resize_rule="frame", min_pixels=QWEN_VL_UTILS_MIN_TOKENS * factor**2,
                          total_pixels=total_pixels, max_tokens_per_frame=QWEN_VL_UTILS_MAX_TOKENS,
                          notes=(note,) if note else ())


def _total_pixels_from_env(factor: int) -> tuple[float, str | None]:
    """The total pixel budget: VIDEO_MAX_PIXELS if set (the qwen-vl-utils README still tells users to set it, but
    0.0.14 ignores it; we honour it), else MODEL_SEQ_LEN tokens as qwen-vl-utils 0.0.14 reads it."""
    raw = os.environ.get("VIDEO_MAX_PIXELS")
    if raw is None:
        seq_len = int(float(os.environ.get("MODEL_SEQ_LEN", QWEN_VL_UTILS_MODEL_SEQ_LEN)))
        return seq_len * factor * factor * 0.9, None
    if not re.fullmatch(r"\s*[0-9.]+(\s*\*\s*[0-9.]+)*\s*", raw):
        raise OptionsError(f"VIDEO_MAX_PIXELS={raw!r} is not a number or a product like 32000*28*28*0.9; fix or unset it")
    total = 1.0
    for term in raw.split("*"):
        total *= float(term)
    return total, f"total_pixels={total:g} from VIDEO_MAX_PIXELS (qwen-vl-utils 0.0.14 ignores this variable)"


def policy_notes(policy: SamplingPolicy) -> list[str]:
    """The deliberate differences a policy carries, for `SampledVideo.notes`."""
    return list(policy.notes)
