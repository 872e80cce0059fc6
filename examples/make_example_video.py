"""Write a small example video with PyAV: a red square crossing a blue background, a white progress bar below.

    python examples/make_example_video.py                # -> examples/example.mp4 (4 s, 24 fps, 320x240)
    python examples/make_example_video.py out.mp4 --seconds 10 --fps 30
"""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import numpy as np


def draw_frame(index: int, total: int, width: int, height: int) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 2] = 160  # blue background
    side = height // 4
    left = (width - side) * index // max(total - 1, 1)
    top = (height - side) // 2
    image[top:top + side, left:left + side] = (220, 30, 30)
    image[height - 12:height - 4, 4:4 + (width - 8) * (index + 1) // total] = 255
    return image


def make_video(path: str | Path, seconds: float = 4.0, fps: int = 24, width: int = 320, height: int = 240) -> Path:
    """Encode the clip with libx264 and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    total = round(seconds * fps)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(total):
            frame = av.VideoFrame.from_ndarray(draw_frame(index, total, width, height), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(Path(__file__).with_name("example.mp4")))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    args = parser.parse_args()
    print(make_video(args.out, args.seconds, args.fps, args.width, args.height))


if __name__ == "__main__":
    main()
