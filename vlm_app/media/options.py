"""The names of the per-request media options (qwen-vl-utils' names, plus `backend`, `resize` and the soundtrack's
`audio` mode and `max_audio_seconds`, `vlm_app.media.audio`): the one list
that load_video / load_image accept and the chat-message schema validates against."""

import math
from numbers import Real

VIDEO_OPTIONS = ("fps", "nframes", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels",
                 "resized_height", "resized_width", "video_start", "video_end", "backend", "resize", "policy",
                 "cap_pixels_per_frame", "audio", "max_audio_seconds")
IMAGE_OPTIONS = ("min_pixels", "max_pixels", "resized_height", "resized_width")
RESIZE_OPTIONS = ("min_pixels", "max_pixels", "total_pixels", "resized_height", "resized_width", "resize",
                  "cap_pixels_per_frame")
RESIZE_KERNELS = ("exact", "fast")
TEXT_OPTIONS = ("backend", "resize", "policy", "audio")
BOOL_OPTIONS = ("cap_pixels_per_frame",)  # every other option is a number


def value_error(name: str, value) -> str | None:
    """What is wrong with an option's value (its kind only), or None."""
    if value is None or name in TEXT_OPTIONS:
        return None
    if name in BOOL_OPTIONS:
        return None if isinstance(value, bool) else f"{name} must be true or false, got {value!r}"
    return None if is_number(value) else f"{name} must be a finite number, got {value!r}"


def is_number(value) -> bool:
    """What a number option takes: a finite real number (not a bool, not a numeric string)."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def without_policy(options: dict) -> dict:
    """load_video options without the `policy` choice (a caller resolves it to the policy object it passes)."""
    return {key: value for key, value in options.items() if key != "policy"}
