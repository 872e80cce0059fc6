"""Pure sampling arithmetic: how many frames, which ones, and at what size. No I/O.

The Qwen functions reproduce qwen-vl-utils 0.0.14 exactly for file inputs (Python's half-to-even `round`,
float32 `torch.linspace(...).round()` indices, its frame-range and pixel-budget rules). The SmolVLM function
reproduces transformers' `SmolVLMVideoProcessor.sample_frames`. Where the reference would crash on a valid
input we raise `OptionsError` with a message instead; the callers decide on deliberate differences.
"""

from __future__ import annotations

import bisect
import math

import numpy as np
import torch

from vlm_app.errors import LimitError, OptionsError

MAX_ASPECT_RATIO = 200
IMAGE_MIN_TOKENS = 4
IMAGE_MAX_TOKENS = 16384
MIN_PIXELS_SLACK = 1.05  # qwen-vl-utils keeps the per-frame cap at least 5 % above the floor


def round_by_factor(number: float, factor: int) -> int:
    return round(number / factor) * factor


def ceil_by_factor(number: float, factor: int) -> int:
    return math.ceil(number / factor) * factor


def floor_by_factor(number: float, factor: int) -> int:
    return math.floor(number / factor) * factor


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: float | None = None,
                 max_pixels: float | None = None) -> tuple[int, int]:
    """(height, width) snapped to multiples of `factor` with min_pixels <= h*w <= max_pixels, aspect kept."""
    max_pixels = IMAGE_MAX_TOKENS * factor**2 if max_pixels is None else max_pixels
    min_pixels = IMAGE_MIN_TOKENS * factor**2 if min_pixels is None else min_pixels
    if max_pixels < min_pixels:
        raise OptionsError(f"max_pixels ({max_pixels}) is smaller than min_pixels ({min_pixels}); "
                           "raise max_pixels or lower min_pixels")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise LimitError(f"the frame is {width}x{height}, an aspect ratio over {MAX_ASPECT_RATIO}; "
                         "crop or pad it to a less extreme shape")
    resized_height = max(factor, round_by_factor(height, factor))
    resized_width = max(factor, round_by_factor(width, factor))
    if resized_height * resized_width > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        resized_height = floor_by_factor(height / beta, factor)
        resized_width = floor_by_factor(width / beta, factor)
    elif resized_height * resized_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        resized_height = ceil_by_factor(height * beta, factor)
        resized_width = ceil_by_factor(width * beta, factor)
    return resized_height, resized_width


def smart_nframes(total_frames: int, video_fps: float, *, fps: float | None = None, nframes: int | None = None,
                  min_frames: int = 4, max_frames: int | None = None, frame_factor: int = 2,
                  default_fps: float = 2.0, default_max_frames: int = 768) -> int:
    """Number of frames to sample from a clip of `total_frames` frames at `video_fps`.

    `nframes` wins when given (rounded to the frame factor); otherwise `fps` (default `default_fps`) bounded by
    min/max frames. An explicit `max_frames` is not capped by `default_max_frames`, as in qwen-vl-utils.
    """
    if fps is not None and nframes is not None:
        raise OptionsError("give either fps or nframes, not both")
    if nframes is not None:
        count = round_by_factor(nframes, frame_factor)
    else:
        fps = default_fps if fps is None else fps
        low = ceil_by_factor(min_frames, frame_factor)
        high = floor_by_factor(min(default_max_frames, total_frames) if max_frames is None else max_frames,
                               frame_factor)
        count = min(max(total_frames / video_fps * fps, low), high, total_frames)
        count = floor_by_factor(count, frame_factor)
    if not frame_factor <= count <= total_frames:
        raise OptionsError(f"the clip has {total_frames} frames, so the number of sampled frames must be between "
                           f"{frame_factor} and {total_frames}, got {count}; ask for fewer frames (nframes, "
                           "min_frames) or use a longer clip")
    return count


def frame_range(total_frames: int, video_fps: float, video_start: float | None = None,
                video_end: float | None = None) -> tuple[int, int, int]:
    """(first, last, count) frame indices covered by [video_start, video_end] seconds, as qwen-vl-utils computes."""
    if video_start is None and video_end is None:
        return 0, total_frames - 1, total_frames
    duration = total_frames / video_fps
    first = math.ceil(min(max(video_start, 0.0), duration) * video_fps) if video_start is not None else 0
    last = total_frames - 1
    if video_end is not None:
        last = min(math.floor(min(max(video_end, 0.0), duration) * video_fps), total_frames - 1)
    if first >= last:
        raise OptionsError(f"the time range start={video_start} end={video_end} s covers frames {first}..{last} "
                           f"of a {duration:.2f} s clip ({total_frames} frames at {video_fps:g} fps); it needs at "
                           "least two frames: widen the range")
    return first, last, last - first + 1


def linspace_indices(first: int, last: int, count: int) -> list[int]:
    """`count` indices from first to last, rounded from a float32 linspace exactly as torch does it.

    A float64 linspace differs by one on ~7 % of long clips, so this must stay float32 torch.
    """
    return torch.linspace(first, last, count, dtype=torch.float32).round().long().tolist()


def time_uniform_indices(frame_times: list[float], first: int, last: int, count: int) -> list[int]:
    """For variable-frame-rate clips: the frames nearest to `count` instants evenly spaced from frame_times[first]
    to frame_times[last] (sorted presentation times in seconds)."""
    targets = np.linspace(frame_times[first], frame_times[last], count)
    indices = []
    for target in targets:
        right = min(max(bisect.bisect_left(frame_times, target, first, last + 1), first + 1), last)
        nearer_left = target - frame_times[right - 1] <= frame_times[right] - target
        indices.append(right - 1 if nearer_left else right)
    return indices


def sample_fps(nframes: int, count: int, video_fps: float) -> float:
    """qwen-vl-utils' sample fps: frames kept per source frame, times the source fps."""
    return nframes / max(count, 1e-6) * video_fps


def video_max_pixels(nframes: int, factor: int, min_pixels: float, total_pixels: float, max_tokens: int,
                     frame_factor: int, max_pixels: float | None = None) -> float:
    """Per-frame pixel cap: the per-frame maximum, shrunk so all frames fit `total_pixels`, never below
    5 % over the floor; a user `max_pixels` can only lower it."""
    cap = max(min(max_tokens * factor**2, total_pixels / nframes * frame_factor), int(min_pixels * MIN_PIXELS_SLACK))
    return cap if max_pixels is None else min(max_pixels, cap)


def smolvlm_indices(total_frames: int, video_fps: float, duration: float, fps: float = 1.0, max_frames: int = 64,
                    skip_secs: float = 1.0) -> list[int]:
    """transformers' SmolVLM frame choice: about `fps` per second up to `max_frames`, skipping `skip_secs` at both
    ends of long clips, integer-truncated float64 linspace, duplicates removed."""
    desired = max(1, min(int(round(fps * duration)), max_frames))
    first, last = 0, total_frames - 1
    if skip_secs > 0 and duration - 2 * skip_secs > max_frames * fps:
        first = int(skip_secs * video_fps)
        last = int(total_frames - skip_secs * video_fps)
    first, last = max(0, first), min(last, total_frames - 1)
    if first >= last:
        first, last = 0, total_frames - 1
    return np.unique(np.linspace(first, last, desired, dtype=int)).tolist()


def linspace_nframes(total_frames: int, video_fps: float, *, fps: float | None, nframes: int | None,
                     min_frames: int, max_frames: int) -> int:
    """transformers' default `sample_frames` count: `nframes` as given, else int(seconds · fps) within
    [min_frames, min(max_frames, total_frames)]."""
    if nframes is not None:
        count = int(nframes)
    else:
        count = min(max(int(total_frames / video_fps * fps), min_frames), max_frames, total_frames)
    if not 1 <= count <= total_frames:
        raise OptionsError(f"the clip has {total_frames} frames, so the number of sampled frames must be between 1 "
                           f"and {total_frames}, got {count}; ask for fewer frames (nframes) or use a longer clip")
    return count


def rounded_linspace_indices(first: int, last: int, count: int) -> list[int]:
    """transformers' `np.linspace(0, total - 1, n).round()` (float64, half to even) over [first, last]."""
    return (first + np.linspace(0, last - first, count).round().astype(int)).tolist()


def video_smart_resize(num_frames: int, height: int, width: int, factor: int, temporal_factor: int,
                       min_pixels: float, max_pixels: float) -> tuple[int, int]:
    """transformers' Qwen3-VL video resize: (height, width) in multiples of `factor`, aspect kept, so that frames ×
    height × width (frames rounded to the temporal factor) lies within [min_pixels, max_pixels]. Frames smaller
    than `factor` are first scaled up to it."""
    if max_pixels < min_pixels:
        raise OptionsError(f"max_pixels ({max_pixels}) is smaller than min_pixels ({min_pixels}); "
                           "raise max_pixels or lower min_pixels")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise LimitError(f"the frame is {width}x{height}, an aspect ratio over {MAX_ASPECT_RATIO}; "
                         "crop or pad it to a less extreme shape")
    resized_height, resized_width = round_by_factor(height, factor), round_by_factor(width, factor)
    frames = round_by_factor(num_frames, temporal_factor)
    if frames * resized_height * resized_width > max_pixels:
        beta = math.sqrt(num_frames * height * width / max_pixels)
        resized_height = max(factor, floor_by_factor(height / beta, factor))
        resized_width = max(factor, floor_by_factor(width / beta, factor))
    elif frames * resized_height * resized_width < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        resized_height = ceil_by_factor(height * beta, factor)
        resized_width = ceil_by_factor(width * beta, factor)
    return resized_height, resized_width


def capped_video_pixels(num_frames: int, factor: int, min_pixels: float, max_pixels: float,
                        max_tokens_per_frame: int) -> float:
    """The video budget with transformers' `cap_pixels_per_frame` (qwen-vl-utils' per-frame cap): each frame gets
    min(max_tokens · factor², max_pixels // frames), at least 5 % over min_pixels."""
    per_frame = max(min(max_tokens_per_frame * factor**2, max_pixels // num_frames),
                    int(min_pixels * MIN_PIXELS_SLACK))
    return per_frame * num_frames
