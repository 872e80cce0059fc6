"""Test videos generated with PyAV: several codecs, containers, frame rates, sizes, rotation, VFR and broken files.

Every frame carries its own index as a row of black/white blocks (`FRAME_ID_BITS` of them, read back with
`read_frame_id`), on top of a moving colour gradient so that resizing has real detail to work on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vlm_app.testing import videos

FRAME_ID_BITS = 12


@dataclass(frozen=True)
class VideoSpec:
    name: str
    codec: str = "libx264"
    container: str = "mp4"
    fps: Fraction = Fraction(24)
    num_frames: int = 48
    width: int = 96
    height: int = 64
    rotation: int = 0  # display-matrix rotation in degrees (counter-clockwise, as FFmpeg stores it)
    bframes: int = 0
    frame_durations: tuple[float, ...] = field(default=())  # seconds per frame, for VFR; empty means CFR
    faststart: bool = False  # mp4 index (moov) before the data, as web uploads have it

    @property
    def filename(self) -> str:
        return f"{self.name}.{self.container}"


def frame_image(index: int, width: int, height: int) -> np.ndarray:
    """An RGB frame: a moving gradient with the frame index written as blocks along the top."""
    y, x = np.mgrid[0:height, 0:width]
    red = (x * 255 // max(width - 1, 1) + index * 7) % 256
    green = (y * 255 // max(height - 1, 1) + index * 3) % 256
    blue = ((x + y + index * 5) * 4) % 256
    image = np.stack([red, green, blue], axis=-1).astype(np.uint8)
    band = max(height // 6, 8)
    block = width // FRAME_ID_BITS
    image[:band] = 0
    for bit in range(FRAME_ID_BITS):
        if index >> bit & 1:
            image[: band, bit * block + 1 : (bit + 1) * block - 1] = 255
    return image


def read_frame_id(frame_hwc: np.ndarray) -> int:
    """The index written by `frame_image` modulo 2**FRAME_ID_BITS, read from an (H, W, 3) uint8 frame at its encoded size."""
    height, width = frame_hwc.shape[:2]
    band = max(height // 6, 8)
    block = width // FRAME_ID_BITS
    rows = frame_hwc[1 : band - 1].astype(np.float32).mean(axis=(0, 2))
    bits = [rows[bit * block + block // 2] > 127 for bit in range(FRAME_ID_BITS)]
    return sum(1 << bit for bit, on in enumerate(bits) if on)


def write_video(path: Path, spec: VideoSpec) -> Path:
    """Encode `spec` to `path` with the shared writer (codec options, rotation, VFR durations)."""
    options = {"bf": str(spec.bframes)} if spec.codec in ("mpeg4", "mpeg2video") else {}
    if spec.codec == "libx264":
        options = {"preset": "ultrafast", "bf": str(spec.bframes)}
    elif spec.codec == "libx265":
        options = {"preset": "ultrafast", "x265-params": "log-level=error"}
    elif spec.codec == "libvpx-vp9":
        options = {"deadline": "realtime", "cpu-used": "8"}
    frames = (frame_image(index, spec.width, spec.height) for index in range(spec.num_frames))
    return videos.write_video(path, frames, spec.fps, codec=spec.codec, options=options,
                              bit_rate=2_000_000 if spec.codec in ("mpeg4", "mpeg2video") else None,
                              rotation=spec.rotation, durations=spec.frame_durations, faststart=spec.faststart)


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = int(16000 * seconds)
        tone = (np.sin(np.arange(samples) / 10) * 0.3).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_truncated(path: Path, source: Path, keep_fraction: float = 0.4) -> Path:
    """The first `keep_fraction` of `source`'s bytes, as an interrupted download leaves it."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def write_shifted(path: Path, source: Path, seconds: float) -> Path:
    """`source`'s packets, unchanged but `seconds` later (earlier if negative), remuxed into `path`'s container.
    Into an mp4, a shift earlier is a cut as `ffmpeg -ss S -i in.mp4 -c copy` leaves it: the muxer writes an edit list
    starting at the new zero, and the packets before it stay (a decoder needs them from the keyframe on) flagged to
    be decoded but never shown. Into MPEG-TS, a shifted copy appended to a file (`cat a.ts b.ts`) is a jump in its
    timestamps, as joined recordings have."""
    with av.open(str(source)) as original, av.open(str(path), "w") as shifted:
        stream = original.streams.video[0]
        output = shifted.add_stream_from_template(stream)
        offset = round(seconds / stream.time_base)
        for packet in original.demux(stream):
            if packet.dts is None:
                continue  # the demuxer's end-of-stream marker
            packet.pts, packet.dts, packet.stream = packet.pts + offset, packet.dts + offset, output
            shifted.mux(packet)
    return path


# decord 0.6 returns 4-channel garbage for 48-pixel-wide frames, so no clip here is 48 wide (after rotation).
# The parity set: codecs, frame rates, odd sizes, durations from 1 s to minutes, rotation, B-frames.
PARITY_SPECS = [
    VideoSpec("h264_24fps_2s", fps=Fraction(24), num_frames=48),
    VideoSpec("h264_25fps_odd", fps=Fraction(25), num_frames=63, width=97, height=59),
    VideoSpec("h264_2997fps_bframes", fps=Fraction(30000, 1001), num_frames=150, bframes=2),
    VideoSpec("h264_60fps_1s", fps=Fraction(60), num_frames=60, width=80, height=48),
    VideoSpec("h264_30fps_tall", fps=Fraction(30), num_frames=37, width=50, height=130),
    VideoSpec("hevc_30fps", codec="libx265", fps=Fraction(30), num_frames=45, width=96, height=64),
    VideoSpec("vp9_24fps", codec="libvpx-vp9", container="webm", fps=Fraction(24), num_frames=40),
    VideoSpec("mpeg4_avi_bframes", codec="mpeg4", container="avi", fps=Fraction(25), num_frames=75, bframes=2),
    VideoSpec("h264_rotated90", fps=Fraction(24), num_frames=24, width=96, height=64, rotation=90),
    VideoSpec("h264_rotated270", fps=Fraction(30), num_frames=30, width=80, height=64, rotation=270),
    VideoSpec("h264_24fps_long", fps=Fraction(24), num_frames=24 * 200, width=64, height=40),
]

# 60 frames at 30 fps then 30 frames at 10 fps: 2 s + 3 s.
VFR_SPEC = VideoSpec("h264_vfr", fps=Fraction(30), num_frames=90, frame_durations=(1 / 30,) * 60 + (1 / 10,) * 30)
MPEG2_SPEC = VideoSpec("mpeg2_ps", codec="mpeg2video", container="mpg", fps=Fraction(25), num_frames=50, bframes=2)
ONE_FRAME_SPEC = VideoSpec("h264_one_frame", num_frames=1)
THREE_FRAME_SPEC = VideoSpec("h264_three_frames", num_frames=3)


@pytest.fixture(scope="session")
def media_videos(tmp_path_factory) -> dict[str, Path]:
    """Every spec above, encoded once per test session: {spec name: path}."""
    directory = tmp_path_factory.mktemp("media_videos")
    specs = PARITY_SPECS + [VFR_SPEC, MPEG2_SPEC, ONE_FRAME_SPEC, THREE_FRAME_SPEC]
    return {spec.name: write_video(directory / spec.filename, spec) for spec in specs}


# 16 s clips whose later frames are reached by seeking: MPEG-PS and MPEG-TS seek by byte position.
SEEK_SPECS = [
    VideoSpec("seek_mpeg2_ps", codec="mpeg2video", container="mpg", fps=Fraction(25), num_frames=25 * 16, width=64,
              height=48, bframes=2),
    VideoSpec("seek_h264_ts", container="ts", num_frames=24 * 16, width=64, height=48),
    VideoSpec("seek_h264_mkv", container="mkv", num_frames=24 * 16, width=64, height=48, bframes=2),
]
# Index first, so cutting the tail leaves a file that promises more frames than it holds.
FASTSTART_SPEC = VideoSpec("h264_faststart", num_frames=96, faststart=True)


@pytest.fixture(scope="session")
def seek_videos(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("seek_videos")
    return {spec.name: write_video(directory / spec.filename, spec) for spec in SEEK_SPECS}


def write_index_cut(path: Path, source: Path, keep: int = 100) -> Path:
    """`source` (an mp4 with its index, the moov box, at the end) cut `keep` bytes into that index: an interrupted
    download that FFmpeg opens but finds no track in."""
    data = source.read_bytes()
    path.write_bytes(data[: data.rindex(b"moov") - 4 + keep])
    return path


def write_animated_webp(path: Path, count: int = 4) -> Path:
    images = [Image.fromarray(frame_image(index, 64, 48)) for index in range(count)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
    return path


@pytest.fixture(scope="session")
def broken_media(tmp_path_factory, media_videos) -> dict[str, Path]:
    """Files that are not usable videos: {kind: path}."""
    directory = tmp_path_factory.mktemp("broken_media")
    random_bytes = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    (directory / "corrupt.mp4").write_bytes(random_bytes)
    (directory / "notes.txt").write_text("this is not a video\n" * 100)
    (directory / "empty.mp4").write_bytes(b"")
    (directory / "folder").mkdir()
    return {
        "audio_only": write_audio_only(directory / "audio_only.m4a"),
        "truncated": write_truncated(directory / "truncated.mp4", media_videos["h264_24fps_2s"]),
        "index_cut": write_index_cut(directory / "index_cut.mp4", media_videos["h264_24fps_2s"]),
        "animated_webp": write_animated_webp(directory / "animated.webp"),
        "truncated_faststart": write_truncated(directory / "truncated_faststart.mp4",
                                               write_video(directory / FASTSTART_SPEC.filename, FASTSTART_SPEC), 0.6),
        "corrupt": directory / "corrupt.mp4",
        "text": directory / "notes.txt",
        "empty": directory / "empty.mp4",
        "directory": directory / "folder",
    }


@pytest.fixture
def frame_cache():
    """The process-wide frame cache, emptied before and after the test and restored to its size."""
    from vlm_app.media.video import FRAME_CACHE

    size = FRAME_CACHE.max_bytes
    FRAME_CACHE.resize(0)
    FRAME_CACHE.resize(size)
    yield FRAME_CACHE
    FRAME_CACHE.resize(0)
    FRAME_CACHE.resize(size)
