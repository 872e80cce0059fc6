"""Write a small example video: a red square crossing a blue background, a white progress bar below.

    python examples/make_example_video.py                # -> examples/example.mp4 (4 s, 24 fps, 320x240)
    python examples/make_example_video.py out.mp4 --seconds 10 --fps 30
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlm_app.testing.videos import make_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(Path(__file__).with_name("example.mp4")))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    args = parser.parse_args()
    print(make_clip(args.out, args.seconds, args.fps, args.width, args.height))


if __name__ == "__main__":
    main()
