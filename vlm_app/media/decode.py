"""Probing and decoding videos.

Frame `i` always means the i-th frame of a sequential decode in display order. The probe demuxes the stream
once (no decoding) with PyAV to count frames and read every frame's presentation time, like decord and
torchcodec's exact mode do; that is what makes frame counts, VFR detection and seeking trustworthy.

Backends:
- `pyav` (default): one threaded sequential decode, converting only the wanted frames to RGB and stopping after
  the last one. When every packet carries its own timestamp, frames are found by time and the packets of frames
  nobody asked for are skipped unless other frames refer to them; a frame with an unknown time falls back to
  decoding everything and counting. When the first wanted frame is far in, it seeks to the keyframe before it and
  checks the first decoded frame's timestamp against the probe; any mismatch (or no frame at all) falls back to
  decoding from the start.
- `torchcodec` (when installed, with FFmpeg's shared libraries): its random access (`get_frames_at`) in small
  chunks, each frame checked against the probe's presentation time; where it returns neighbouring frames
  (AVI/MPEG-4 B-frame files) the rest is decoded with PyAV, with a note.
- `decord` (when installed): its random access (`get_batch`) in small chunks, unchecked (it reports no usable
  timestamps on AVI or MPEG-PS), so it returns neighbouring frames on AVI/MPEG-4 B-frame files; prefer `pyav` there.
Every backend returns frames with the display rotation applied (PyAV does not rotate by itself, so we do).
"""

from __future__ import annotations

import bisect
import importlib.util
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Iterator

import av
import torch

from vlm_app.errors import DecodeError, LimitError, OptionsError
from vlm_app.media.limits import Limits

BACKENDS = ("pyav", "decord", "torchcodec")
SEEK_AHEAD_SECONDS = 10.0  # decoding through less than this is cheaper than a seek
VFR_TOLERANCE = 0.1  # frame intervals spreading more than this (relative) mark a variable-frame-rate clip
RANDOM_ACCESS_CHUNK = 16  # frames per decord/torchcodec call, to bound memory
PTS_TOLERANCE_SECONDS = 1e-4  # a neighbouring frame is at least a millisecond away
TEXT_FORMATS = {"tty"}  # FFmpeg renders any text file as ANSI-art "video"; that is never what a user meant


@dataclass(frozen=True)
class VideoMetadata:
    """What the source video is, as displayed (width/height after rotation)."""

    num_frames: int
    fps: float  # average frame rate, as FFmpeg (and decord, torchcodec) report it
    duration: float  # seconds, first frame start to last frame end
    width: int
    height: int
    rotation: int  # degrees counter-clockwise applied to the decoded frames
    codec: str
    source: str
    is_vfr: bool = False
    frame_pts: tuple[int, ...] = field(default=(), repr=False)  # every frame's pts, display order
    packets_timed: bool = False  # every packet has its own unique pts: frames can be found by time
    time_base: Fraction = field(default=Fraction(1), repr=False)

    def frame_time(self, index: int) -> float:
        """Presentation time of frame `index`, seconds from the first frame."""
        return float((self.frame_pts[index] - self.frame_pts[0]) * self.time_base)

    def frame_times(self) -> list[float]:
        return [self.frame_time(index) for index in range(self.num_frames)]


def available_backends() -> list[str]:
    return [name for name in BACKENDS if name == "pyav" or importlib.util.find_spec(name) is not None]


def resolve_backend(name: str | None) -> str:
    if name in (None, "auto"):
        return "pyav"
    if name not in BACKENDS:
        raise OptionsError(f"unknown video backend {name!r}; choose auto, {', '.join(BACKENDS)}")
    if name not in available_backends():
        raise OptionsError(f"the {name} backend is not installed; `pip install {name}` or use backend pyav")
    return name


def check_deadline(deadline: float, limits: Limits) -> None:
    if time.monotonic() > deadline:
        raise LimitError(f"decoding took longer than the {limits.decode_seconds:g} s limit; use a shorter clip "
                         "(or video_start/video_end) or raise Limits.decode_seconds")


def _open(path: str, label: str):
    try:
        return av.open(path, metadata_errors="ignore")
    except av.FFmpegError as error:
        raise DecodeError(f"{label} is not a readable video ({error.strerror}); check that the file is a complete "
                          "video (mp4, mkv, webm, avi, mov, mpg)") from None


def probe(path: str, label: str, limits: Limits, deadline: float) -> VideoMetadata:
    """Count frames and read their presentation times by demuxing once; decode just the first frame for its
    rotation. Raises DecodeError for non-video, audio-only, empty or undecodable files, LimitError over limits."""
    with _open(path, label) as container:
        if container.format.name in TEXT_FORMATS:
            raise DecodeError(f"{label} is not a readable video (it is a text file); give a video file")
        if not container.streams.video:
            raise DecodeError(f"{label} has no video stream (audio-only or not a video); give a video file")
        stream = container.streams.video[0]
        if container.duration and container.duration / av.time_base > limits.max_duration_seconds:
            raise LimitError(f"{label} lasts {container.duration / av.time_base:.0f} s, over the "
                             f"{limits.max_duration_seconds:g} s limit; cut it or raise Limits.max_duration_seconds")
        frame_pts, end_pts, first_frame, packets_timed = [], None, None, True
        try:
            for packet in container.demux(stream):
                check_deadline(deadline, limits)
                packets_timed = packets_timed and (packet.pts is not None or packet.size == 0)
                pts = packet.pts if packet.pts is not None else packet.dts
                if packet.size == 0 or pts is None:
                    continue
                frame_pts.append(pts)
                end_pts = max(end_pts or pts, pts + (packet.duration or 0))
                if len(frame_pts) > limits.max_source_frames:
                    raise LimitError(f"{label} has more than {limits.max_source_frames} frames; cut it or raise "
                                     "Limits.max_source_frames")
                if first_frame is None:
                    first_frame = next(iter(_decode_packet(stream, packet)), None)
        except av.FFmpegError:
            pass  # a truncated tail: keep the frames demuxed so far
        if first_frame is None:
            first_frame = next(iter(_decode_packet(stream, None)), None)
        if not frame_pts or first_frame is None:
            raise DecodeError(f"{label} contains no decodable video frames (empty, truncated or corrupt); "
                              "re-export or re-download it")
        metadata = _metadata(stream, label, sorted(frame_pts), end_pts, first_frame, limits)
        return replace(metadata, packets_timed=packets_timed and len(set(frame_pts)) == len(frame_pts))


def _decode_packet(stream, packet) -> list:
    try:
        return stream.decode(packet)
    except av.FFmpegError:
        return []


def _metadata(stream, label: str, frame_pts: list[int], end_pts: int, first_frame, limits: Limits) -> VideoMetadata:
    time_base = stream.time_base
    span = float((frame_pts[-1] - frame_pts[0]) * time_base)
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else (len(frame_pts) - 1) / span if span > 0 else 1.0
    duration = max(float((end_pts - frame_pts[0]) * time_base), span + 1 / fps)
    if duration > limits.max_duration_seconds:
        raise LimitError(f"{label} lasts {duration:.0f} s, over the {limits.max_duration_seconds:g} s limit; cut it "
                         "or raise Limits.max_duration_seconds")
    rotation = int(first_frame.rotation or 0) % 360
    width, height = first_frame.width, first_frame.height
    if width * height > limits.max_frame_pixels:
        raise LimitError(f"{label} frames are {width}x{height}, over the {limits.max_frame_pixels} pixel limit; "
                         "downscale it or raise Limits.max_frame_pixels")
    if rotation in (90, 270):
        width, height = height, width
    intervals = [later - earlier for earlier, later in zip(frame_pts, frame_pts[1:])]
    is_vfr = bool(intervals) and max(intervals) - min(intervals) > max(2, VFR_TOLERANCE * sorted(intervals)[len(intervals) // 2])
    return VideoMetadata(num_frames=len(frame_pts), fps=fps, duration=duration, width=width, height=height,
                         rotation=rotation, codec=stream.codec_context.name, source=label, is_vfr=is_vfr,
                         frame_pts=tuple(frame_pts), time_base=time_base)


def decode_frames(path: str, metadata: VideoMetadata, indices: list[int], backend: str, limits: Limits,
                  deadline: float, notes: list[str]) -> Iterator[tuple[int, float, torch.Tensor]]:
    """Yield (index, seconds, uint8 CHW frame with rotation applied) for each of the sorted unique `indices`.
    Stops after the last one; a truncated file may end early (the caller checks what came). A backend that has
    to deviate from what was asked appends a sentence to `notes`."""
    if backend == "torchcodec":
        return _decode_torchcodec(path, metadata, indices, limits, deadline, notes)
    if backend == "decord":
        return _decode_decord(path, metadata, indices, limits, deadline)
    return _decode_pyav(path, metadata, indices, limits, deadline)


class _UntimedFrame(Exception):
    """A decoded frame's pts is not one the probe saw: frames cannot be found by time in this file."""


class _SeekMissed(Exception):
    """A seek found no frame, or landed after the first wanted one (MPEG-PS/TS seek by byte position)."""


def _decode_pyav(path, metadata, indices, limits, deadline):
    passes = [dict(skip_unwanted=True, seek=True), dict(skip_unwanted=True, seek=False)] if metadata.packets_timed \
        else []
    for options in passes:
        try:
            yield from _decode_pyav_pass(path, metadata, indices, limits, deadline, **options)
            return
        except _SeekMissed:
            continue  # decode from the start, still skipping what nobody needs
        except _UntimedFrame:
            break  # decode every frame, counting them in display order
    yield from _decode_pyav_pass(path, metadata, indices, limits, deadline, skip_unwanted=False)


def _decode_pyav_pass(path, metadata, indices, limits, deadline, skip_unwanted, seek=True):
    wanted = set(indices)
    with _open(path, metadata.source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = (_timed_frames(container, stream, metadata, indices, seek) if skip_unwanted
                  else _indexed_frames(container, stream, metadata, indices[0]))
        try:
            for index, frame in frames:
                check_deadline(deadline, limits)
                if index in wanted:
                    yield index, _frame_seconds(metadata, frame, index), _to_tensor(frame, metadata.rotation)
                if index >= indices[-1]:
                    return
        except av.FFmpegError:
            return  # corrupt or truncated data: stop here


def _timed_frames(container, stream, metadata, indices, seek: bool) -> Iterator[tuple[int, av.VideoFrame]]:
    """(index, frame) found by presentation time, decoding only what the wanted frames need: a packet whose frame
    nobody asked for is skipped unless later frames refer to it (FFmpeg's skip_frame=NONREF, set per packet).
    On H.264 with B-frames that halves the decoding work; the frames that come out are bit-identical."""
    wanted_pts = {metadata.frame_pts[index] for index in indices}
    context = stream.codec_context
    seeking = seek and metadata.frame_time(indices[0]) >= SEEK_AHEAD_SECONDS
    if seeking:
        container.seek(metadata.frame_pts[indices[0]], stream=stream, backward=True)
    for packet in container.demux(stream):
        context.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in wanted_pts else "NONREF"
        for frame in packet.decode():
            if seeking and _index_after_seek(metadata, frame.pts, indices[0]) is None:
                raise _SeekMissed
            seeking = False
            index = _index_of_pts(metadata, frame.pts)
            if index is None:
                raise _UntimedFrame
            yield index, frame
    if seeking:
        raise _SeekMissed


def _index_of_pts(metadata, pts) -> int | None:
    index = bisect.bisect_left(metadata.frame_pts, pts) if pts is not None else metadata.num_frames
    return index if index < metadata.num_frames and metadata.frame_pts[index] == pts else None


def _indexed_frames(container, stream, metadata, first_index) -> Iterator[tuple[int, av.VideoFrame]]:
    """(display-order index, frame) pairs, from the keyframe before `first_index` when it is far in. A seek is
    trusted only when the first frame after it carries a probed timestamp at or before `first_index`; otherwise
    (MPEG-PS and MPEG-TS seek by byte position and may land anywhere, even at the end) decoding starts over."""
    if metadata.frame_time(first_index) >= SEEK_AHEAD_SECONDS:
        container.seek(metadata.frame_pts[first_index], stream=stream, backward=True)
        frames = container.decode(stream)
        first = next(frames, None)
        index = _index_after_seek(metadata, first.pts, first_index) if first is not None else None
        if index is not None:
            yield index, first
            yield from enumerate(frames, index + 1)
            return
        container.seek(0, stream=stream)
    yield from enumerate(container.decode(stream))


def _index_after_seek(metadata, pts, first_index) -> int | None:
    if pts is None:
        return None
    index = bisect.bisect_left(metadata.frame_pts, pts)
    exact = index < metadata.num_frames and metadata.frame_pts[index] == pts
    return index if exact and index <= first_index else None


def _frame_seconds(metadata, frame, index) -> float:
    if frame.pts is None:
        return metadata.frame_time(index)
    return float((frame.pts - metadata.frame_pts[0]) * metadata.time_base)


def _to_tensor(frame, rotation: int) -> torch.Tensor:
    image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
    return torch.rot90(image, rotation // 90, dims=(1, 2)) if rotation else image


def _decode_decord(path, metadata, indices, limits, deadline):
    import decord  # optional dependency

    reader = decord.VideoReader(path)
    if len(reader) != metadata.num_frames:
        raise DecodeError(f"decord counts {len(reader)} frames in {metadata.source} where the stream has "
                          f"{metadata.num_frames}; use backend pyav for this file")
    for start in range(0, len(indices), RANDOM_ACCESS_CHUNK):
        check_deadline(deadline, limits)
        chunk = indices[start : start + RANDOM_ACCESS_CHUNK]
        batch = torch.from_numpy(reader.get_batch(chunk).asnumpy()).permute(0, 3, 1, 2)
        for index, image in zip(chunk, batch):
            yield index, metadata.frame_time(index), image


def _decode_torchcodec(path, metadata, indices, limits, deadline, notes):
    """torchcodec's random access (exact seek mode), checked frame by frame: each frame it returns must carry the
    presentation time and size our probe gives that index. Where it does not (AVI/MPEG-4 B-frame files, whose
    packet times its index table trusts; MPEG-PS files decoded with threads) or cannot read the file, the rest is
    decoded sequentially with PyAV and a note says so. torchcodec's own sequential API (`get_frames_in_range`) is
    no way out: it holds every frame of the range at full size, and seeks by the same table unless it starts at 0."""
    VideoDecoder = _torchcodec_decoder_class()
    try:
        decoder = VideoDecoder(path, seek_mode="exact", num_ffmpeg_threads=0)
    except (RuntimeError, ValueError):
        decoder = None
    for start in range(0, len(indices), RANDOM_ACCESS_CHUNK):
        check_deadline(deadline, limits)
        chunk = indices[start : start + RANDOM_ACCESS_CHUNK]
        try:
            batch = decoder.get_frames_at(indices=chunk) if decoder else None
        except (RuntimeError, IndexError):  # e.g. an index past the frames it counted
            batch = None
        if batch is None or not _are_frames(batch.data, batch.pts_seconds.tolist(), chunk, metadata):
            notes.append(f"torchcodec could not return frame {chunk[0]} of {metadata.source} and later ones exactly "
                         "(its random access gives neighbouring frames on some files); they were decoded "
                         "sequentially with PyAV")
            yield from _decode_pyav(path, metadata, indices[start:], limits, deadline)
            return
        for index, image in zip(chunk, batch.data):
            yield index, metadata.frame_time(index), image


def _torchcodec_decoder_class():
    try:
        from torchcodec.decoders import VideoDecoder  # optional dependency
    except (ImportError, OSError, RuntimeError) as error:
        raise OptionsError(f"the torchcodec backend cannot load ({type(error).__name__}); it needs FFmpeg's shared "
                           "libraries (`apt-get install ffmpeg`); or use backend pyav") from None
    return VideoDecoder


def _are_frames(images: torch.Tensor, seconds: list[float], indices: list[int], metadata: VideoMetadata) -> bool:
    """Whether random access gave the frames `indices` name: display size and presentation times as probed."""
    if tuple(images.shape[-2:]) != (metadata.height, metadata.width):
        return False
    start = float(metadata.frame_pts[0] * metadata.time_base)
    return all(abs(got - start - metadata.frame_time(index)) < PTS_TOLERANCE_SECONDS
               for got, index in zip(seconds, indices))
