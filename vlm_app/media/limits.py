"""Explicit limits on what the media pipeline accepts, so no input can hang it or exhaust memory.

Pass `limits=DEFAULT_LIMITS.with_overrides(max_duration_seconds=7200)` to `load_video` / `load_image` to change
them per call.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 8 * 1024**3  # local files and downloads
    max_duration_seconds: float = 4 * 3600.0
    max_source_frames: int = 1_000_000
    max_frame_pixels: int = 8192 * 8192  # decoded frame size (16K video and larger images are refused)
    max_sampled_frames: int = 4096
    decode_seconds: float = 900.0  # wall clock for probing + decoding one video
    http_timeout_seconds: float = 30.0  # connect / read timeout per operation
    http_max_redirects: int = 5

    def with_overrides(self, **fields) -> Limits:
        return replace(self, **fields)


DEFAULT_LIMITS = Limits()
