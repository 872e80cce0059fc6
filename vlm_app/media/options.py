"""The names of the per-request media options (qwen-vl-utils' names, plus `backend` and `resize`): the one list
that load_video / load_image accept and the chat-message schema validates against."""

import math
from numbers import Real

VIDEO_OPTIONS = ("fps", "nframes", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels",
                 "resized_height", "resized_width", "video_start", "video_end", "backend", "resize")
IMAGE_OPTIONS = ("min_pixels", "max_pixels", "resized_height", "resized_width")
RESIZE_OPTIONS = ("min_pixels", "max_pixels", "total_pixels", "resized_height", "resized_width", "resize")
RESIZE_KERNELS = ("exact", "fast")
TEXT_OPTIONS = ("backend", "resize")  # every other option is a number


def is_number(value) -> bool:
    """What a number option takes: a finite real number (not a bool, not a numeric string)."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
