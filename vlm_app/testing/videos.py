"""Synthetic videos written with PyAV, for tests, benchmarks and examples (nothing to download).

`write_video` is the one writer: RGB frames in, any codec and container out, with optional display rotation and
per-frame durations (variable frame rate). Two pictures to feed it:
- `moving_square`: a red square crossing a blue background with a progress bar below (easy to describe);
- `textured_frames`: camera-like texture and sensor noise (real work for the encoder and the decoder).
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
    """Camera-like footage: a multi-scale noise texture panning slowly, plus fresh sensor noise in every frame (the
    temporal noise that makes real footage expensive to encode and decode; flat synthetic clips are not)."""
    rng = np.random.default_rng(seed)
    margin_x, margin_y = width // 3 + 1, height // 3 + 1
    texture = _octave_texture(rng, height + 2 * margin_y, width + 2 * margin_x)
    for index in range(count):
        left = round(margin_x * (1 + np.sin(index / 40)))
        top = round(margin_y * (1 + np.cos(index / 55)))
        image = texture[top:top + height, left:left + width].astype(np.int16)
        image += rng.integers(-12, 13, (height, width, 1), dtype=np.int16)
        yield np.clip(image, 0, 255).astype(np.uint8)


def _octave_texture(rng, height: int, width: int) -> np.ndarray:
    """Random detail at 4-, 16- and 64-pixel scales, like foliage, fabric and walls."""
    texture = np.full((height, width, 3), 128.0, np.float32)
    for scale, amplitude in ((4, 60.0), (16, 40.0), (64, 30.0)):
        coarse = rng.standard_normal((height // scale + 1, width // scale + 1, 3)).astype(np.float32)
        texture += amplitude * np.repeat(np.repeat(coarse, scale, 0), scale, 1)[:height, :width]
    return np.clip(texture, 0, 255).astype(np.uint8)


def make_clip(path: str | Path, seconds: float = 4.0, fps: int = 24, width: int = 320, height: int = 240) -> Path:
    """A libx264 clip of the moving square."""
    total = round(seconds * fps)
    frames = (moving_square(index, total, width, height) for index in range(total))
    return write_video(path, frames, fps, options={"preset": "ultrafast"})


def make_textured_clip(path: str | Path, seconds: float, fps: int = 24, width: int = 640, height: int = 360,
                       preset: str = "medium", bits_per_pixel: float = 0.18, gop: int = 250) -> Path:
    """A libx264 clip of `textured_frames` at a real bitrate: 0.18 bits per pixel per frame is about 4 Mb/s at
    720p 24 fps, with the encoder's default keyframe interval (250) and B-frames, like footage from the web."""
    frames = textured_frames(round(seconds * fps), width, height)
    return write_video(path, frames, fps, options={"preset": preset, "g": str(gop)},
                       bit_rate=round(bits_per_pixel * width * height * fps))
