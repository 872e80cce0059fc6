"""Synthetic videos written with PyAV, for tests, benchmarks and examples (nothing to download).

`write_video` is the one writer: RGB frames in, any codec and container out, with optional display rotation and
per-frame durations (variable frame rate). Two pictures to feed it:
- `moving_square`: a red square crossing a blue background with a progress bar below (easy to describe);
- `textured_frames`: moving gradients plus a noise block (real work for the encoder and the decoder).
`make_clip` and `make_textured_clip` put a picture and the writer together.
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import av
import numpy as np

MILLISECONDS = Fraction(1, 1000)


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float | Fraction = 24, codec: str = "libx264",
                options: dict | None = None, bit_rate: int | None = None, rotation: int = 0,
                durations: Sequence[float] = (), faststart: bool = False) -> Path:
    """Encode (H, W, 3) uint8 RGB frames to `path`. `rotation`: degrees counter-clockwise, stored as display-matrix
    side data as phones do. `durations`: seconds per frame for a variable frame rate (empty: constant `fps`).
    `faststart`: the mp4 index (moov) before the data, as web uploads have it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = iter(frames)
    first = next(frames)
    height, width = first.shape[:2]
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else None) as container:
        stream = container.add_stream(codec, rate=Fraction(fps), options=options or {})
        stream.width, stream.height = width, height
        # 4:2:0 needs even sizes; odd-sized clips use 4:4:4 like screen recordings do
        stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        if bit_rate is not None:
            stream.bit_rate = bit_rate
        if durations:
            stream.codec_context.time_base = MILLISECONDS
        if rotation:
            stream.set_display_rotation(rotation)
        elapsed = 0.0
        for index, image in enumerate(itertools.chain([first], frames)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if durations:
                frame.pts, frame.time_base = round(elapsed * 1000), MILLISECONDS
                elapsed += durations[index]
            else:
                frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def moving_square(index: int, total: int, width: int, height: int) -> np.ndarray:
    """Frame `index` of `total`: the square's position and the progress bar's length tell the time."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 2] = 160  # blue background
    side = height // 4
    left = (width - side) * index // max(total - 1, 1)
    top = (height - side) // 2
    image[top:top + side, left:left + side] = (220, 30, 30)
    image[height - 12:height - 4, 4:4 + (width - 8) * (index + 1) // total] = 255
    return image


def textured_frames(count: int, width: int, height: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Moving gradients plus a 64-pixel noise block at a random place (cheap to draw: uint8 wraps at 256)."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
    step = np.array([3, 2, 1], dtype=np.uint8)
    block = min(64, width, height)
    rng = np.random.default_rng(seed)
    for index in range(count):
        image = base + step * np.uint8(index % 256)
        top, left = rng.integers(0, height - block + 1), rng.integers(0, width - block + 1)
        image[top:top + block, left:left + block] = rng.integers(0, 256, (block, block, 3), dtype=np.uint8)
        yield image


def make_clip(path: str | Path, seconds: float = 4.0, fps: int = 24, width: int = 320, height: int = 240) -> Path:
    """A libx264 clip of the moving square."""
    total = round(seconds * fps)
    frames = (moving_square(index, total, width, height) for index in range(total))
    return write_video(path, frames, fps, options={"preset": "ultrafast"})


def make_textured_clip(path: str | Path, seconds: float, fps: int = 24, width: int = 640, height: int = 360,
                       preset: str = "veryfast") -> Path:
    """A libx264 clip of textured frames at a typical quality (crf 23)."""
    frames = textured_frames(round(seconds * fps), width, height)
    return write_video(path, frames, fps, options={"preset": preset, "crf": "23"})
