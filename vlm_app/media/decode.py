"""Probing and decoding videos.

Frame `i` always means the i-th frame of a plain sequential decode, in display order. The probe demuxes the
stream once (no decoding) with PyAV to count frames, read every frame's presentation time and find the keyframes,
like decord and torchcodec's exact mode do; that is what makes frame counts, VFR detection and seeking possible.

The decode plan is decided per file. Presentation times are trusted only where the file proves them: a container
that stores them per frame (MP4/MOV, Matroska/WebM), a codec that puts one frame in each packet, and a pts on
every packet, all distinct. Such files are decoded by time: a seek to the keyframe before each run of wanted
frames, and the packets of frames nobody asked for skipped unless other frames refer to them (FFmpeg's
skip_frame=NONREF, set per packet). The first frames are decoded in full and must come out exactly in the probe's
order, and every later frame's time must be known and increasing; a contradiction raises `TimestampsUnfit`, and
the caller decodes again by counting. Every
other file (AVI, MPEG-PS/TS, packed MPEG-4 B-frames, ...) is decoded from the start, counting frames.

Backends:
- `pyav` (default): the plan above, one threaded decode, converting only the wanted frames to RGB and stopping
  after the last one. A packet that fails to decode is skipped (timed plan) or ends the decode (counted plan).
- `torchcodec` (when installed, with FFmpeg's shared libraries): its random access (`get_frames_at`) in small
  chunks, each frame checked against the probe's presentation time; where it returns other frames, or the file's
  times are not proven, the rest is decoded with PyAV, with a note.
- `decord` (when installed): its random access (`get_batch`) in small chunks, each chunk's timestamps checked
  against the probe; the same fall-back to PyAV.
Every backend returns frames with the display rotation applied (PyAV does not rotate by itself, so we do).
"""

from __future__ import annotations

import bisect
import importlib.util
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import partial
from typing import Iterator

import av
import torch

from vlm_app.errors import DecodeError, DurationLimitError, LimitError, OptionsError
from vlm_app.media.limits import Limits

BACKENDS = ("pyav", "decord", "torchcodec")
VFR_TOLERANCE = 0.1  # frame intervals spreading more than this (relative) mark a variable-frame-rate clip
RANDOM_ACCESS_CHUNK = 16  # frames per decord/torchcodec call, to bound memory
PTS_TOLERANCE_SECONDS = 1e-4  # a neighbouring frame is at least a millisecond away
TEXT_FORMATS = {"tty"}  # FFmpeg renders any text file as ANSI-art "video"; that is never what a user meant
TIMED_FORMATS = {"mov", "mp4", "matroska", "webm"}  # containers that store each frame's presentation time
ONE_FRAME_PER_PACKET = {"h264", "hevc", "vp8", "vp9", "av1", "mjpeg", "prores", "dnxhd", "ffv1", "mpeg2video"}
SEEK_MIN_FRAMES = 12  # a keyframe fewer frames ahead than this is decoded through rather than sought to
VERIFY_FRAMES = 24  # frames decoded in full at the start of a timed decode to check the times against the probe
DECODE_THREADS = 0  # FFmpeg's choice: a thread per core
DTS_DELTA_THRESHOLD = 10.0  # seconds: a longer jump between packets of MPEG-TS/PS or Ogg is a discontinuity (ffmpeg's)
DTS_BACKWARD_THRESHOLD = 0.1  # seconds: so is a step back of more than this (decode times never go back)


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
    timestamps_proven: bool = False  # frames can be found by presentation time (see the module docstring)
    keyframes: tuple[int, ...] = field(default=(), repr=False)  # indices of the frames a decode can start at
    time_base: Fraction = field(default=Fraction(1), repr=False)

    def frame_time(self, index: int) -> float:
        """Presentation time of frame `index`, seconds from the first frame."""
        return float((self.frame_pts[index] - self.frame_pts[0]) * self.time_base)

    def frame_times(self) -> list[float]:
        return [self.frame_time(index) for index in range(self.num_frames)]

    def range_times(self) -> list[float]:
        """The second each frame counts as when a time range (video_start/video_end) picks frames: its presentation
        time in a VFR clip, index / fps otherwise (qwen-vl-utils' rule, kept for parity)."""
        return self.frame_times() if self.is_vfr else [index / self.fps for index in range(self.num_frames)]

    def index_of_pts(self, pts) -> int | None:
        index = bisect.bisect_left(self.frame_pts, pts) if pts is not None else self.num_frames
        return index if index < self.num_frames and self.frame_pts[index] == pts else None

    def restricted_to(self, indices: list[int]) -> VideoMetadata:
        """The same video as if it held only the frames `indices` (those of a damaged file that decode), for planning
        a sample over them: position i of the result is frame indices[i] of this one."""
        keyframes = set(self.keyframes)
        return replace(self, num_frames=len(indices), frame_pts=tuple(self.frame_pts[index] for index in indices),
                       keyframes=tuple(position for position, index in enumerate(indices) if index in keyframes),
                       duration=min(self.duration, len(indices) / self.fps))


class TimestampsUnfit(Exception):
    """Decoded presentation times contradict the probe: whatever was yielded is void; decode again counting."""


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


class Deadline:
    """When decoding must end (a monotonic time), renewable: a chapters run gives its probe and each of its segments
    `Limits.decode_seconds` of their own, so the model's time between two segments never counts as decoding."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.renew()

    def renew(self) -> None:
        self.at = time.monotonic() + self.seconds

    def __float__(self) -> float:
        return self.at


def check_deadline(deadline: float | Deadline, limits: Limits) -> None:
    if time.monotonic() > float(deadline):
        raise LimitError(f"decoding took longer than the {limits.decode_seconds:g} s limit; use a shorter clip "
                         "(or video_start/video_end) or raise Limits.decode_seconds")


def _open(path: str, label: str):
    try:
        return av.open(path, metadata_errors="ignore")
    except av.FFmpegError as error:
        raise DecodeError(f"{label} is not a readable video ({error.strerror}); check that the file is a complete "
                          "video (mp4, mkv, webm, avi, mov, mpg)") from None


def check_duration(label: str, seconds: float, limits: Limits, chapters: bool = False) -> None:
    """A plain request takes up to `max_duration_seconds`; a chapters run (one request per part of the video) has its
    own cap, `max_chapters_duration_seconds`, instead."""
    if chapters and seconds > limits.max_chapters_duration_seconds:
        raise LimitError(f"{label} lasts {seconds:.0f} s, over the {limits.max_chapters_duration_seconds:g} s limit "
                         "for chapters; cut it or raise Limits.max_chapters_duration_seconds")
    if not chapters and seconds > limits.max_duration_seconds:
        raise DurationLimitError(f"{label} lasts {seconds:.0f} s, over the {limits.max_duration_seconds:g} s limit; "
                                 "describe it in chapters (`describe --chapters`: one request per part of the video), "
                                 "cut it, or raise Limits.max_duration_seconds", label, seconds,
                                 limits.max_duration_seconds)


def probe(path: str, label: str, limits: Limits, deadline: float | Deadline,
          chapters: bool = False) -> VideoMetadata:
    """Count frames, read their presentation times and keyframes by demuxing once; decode just the first frame for
    its rotation. Raises DecodeError for non-video, audio-only, empty or undecodable files, LimitError over limits
    (`chapters`: the duration cap of a chapters run instead of a plain request's)."""
    with _open(path, label) as container:
        if container.format.name in TEXT_FORMATS:
            raise DecodeError(f"{label} is not a readable video (it is a text file); give a video file")
        if not (container.streams.video or container.streams.audio):
            raise DecodeError(f"{label} holds no video or audio stream (its index is missing or cut off, as an "
                              "interrupted download leaves an mp4, or it is not a video); re-download or re-export it")
        if not container.streams.video:
            raise DecodeError(f"{label} has no video stream (audio-only or not a video); give a video file")
        stream = container.streams.video[0]
        # A header's duration can lie (a Matroska Duration, FFmpeg's guess for a transport stream), so the frames
        # decide; going over the cap, the message names the larger of the two.
        declared = container.duration / av.time_base if container.duration else 0.0
        cap = float((limits.max_chapters_duration_seconds if chapters else limits.max_duration_seconds) /
                    stream.time_base)
        joined = _Joined(stream) if container.format.flags & av.format.Flags.ts_discont.value else None
        frame_pts, keyframe_pts, end_pts, first_frame, every_packet_timed = [], set(), None, None, True
        try:
            for packet in container.demux(stream):
                check_deadline(deadline, limits)
                every_packet_timed = every_packet_timed and (packet.pts is not None or packet.size == 0)
                pts = packet.pts if packet.pts is not None else packet.dts
                if first_frame is None and packet.size:
                    first_frame = next(iter(_decode_packet(stream, packet)), None)
                if packet.size == 0 or pts is None or packet.is_discard:
                    continue  # a discarded packet (before an edit list's start) is decoded, never displayed
                if joined is not None:
                    pts = joined(packet, pts)
                if frame_pts and pts - frame_pts[0] > cap:
                    check_duration(label, max(float((pts - frame_pts[0]) * stream.time_base), declared), limits,
                                   chapters)
                frame_pts.append(pts)
                if packet.is_keyframe:
                    keyframe_pts.add(pts)
                end_pts = max(end_pts or pts, pts + (packet.duration or 0))
                if len(frame_pts) > limits.max_source_frames:
                    raise LimitError(f"{label} has more than {limits.max_source_frames} frames; cut it or raise "
                                     "Limits.max_source_frames")
        except av.FFmpegError:
            pass  # a truncated tail: keep the frames demuxed so far
        if first_frame is None:
            first_frame = next(iter(_decode_packet(stream, None)), None)
        if first_frame is None and getattr(stream.codec_context, "name", None) == "webp":
            raise DecodeError(f"{label} is an animated WebP, which FFmpeg cannot decode; convert it to a GIF or a "
                              "video (e.g. `convert in.webp out.gif`), or give it as an image (its first frame)")
        if not frame_pts or first_frame is None:
            raise DecodeError(f"{label} contains no decodable video frames (empty, truncated or corrupt); "
                              "re-export or re-download it")
        ordered = sorted(frame_pts)
        metadata = _metadata(stream, label, ordered, end_pts, first_frame, limits, chapters)
        proven = (bool(TIMED_FORMATS & set(container.format.name.split(","))) and
                  stream.codec_context.name in ONE_FRAME_PER_PACKET and every_packet_timed and
                  len(set(frame_pts)) == len(frame_pts))
        keyframes = tuple(index for index, pts in enumerate(ordered) if pts in keyframe_pts)
        return replace(metadata, timestamps_proven=proven, keyframes=keyframes)


class _Joined:
    """Presentation times of a format whose timestamps may jump (MPEG-TS/PS, Ogg: recordings joined with `cat`, a
    33-bit wrap) made continuous, as ffmpeg does (-dts_delta_threshold): where the decode time jumps ahead by more
    than DTS_DELTA_THRESHOLD seconds from one packet to the next, or back by more than DTS_BACKWARD_THRESHOLD, the
    timeline goes on one frame after the last packet. Such files are decoded by counting frames, so their times
    only place the frames in time."""

    def __init__(self, stream):
        rate = stream.average_rate or stream.guessed_rate
        self.ahead, self.back = DTS_DELTA_THRESHOLD / stream.time_base, DTS_BACKWARD_THRESHOLD / stream.time_base
        self.step = max(round(1 / (rate * stream.time_base)), 1) if rate else 1
        self.shift, self.last = 0, None

    def __call__(self, packet, pts: int) -> int:
        stamp = (packet.dts if packet.dts is not None else pts) + self.shift
        if self.last is not None and not -self.back <= stamp - self.last <= self.ahead:
            continued = self.last + (packet.duration or self.step)
            self.shift, stamp = self.shift + continued - stamp, continued
        self.last = stamp
        return pts + self.shift


def _decode_packet(stream, packet) -> list:
    try:
        return stream.decode(packet)
    except av.FFmpegError:
        return []


def _metadata(stream, label: str, frame_pts: list[int], end_pts: int, first_frame, limits: Limits,
              chapters: bool) -> VideoMetadata:
    time_base = stream.time_base
    span = float((frame_pts[-1] - frame_pts[0]) * time_base)
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else (len(frame_pts) - 1) / span if span > 0 else 1.0
    duration = max(float((end_pts - frame_pts[0]) * time_base), span + 1 / fps)
    check_duration(label, duration, limits, chapters)
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
                  deadline: float | Deadline, notes: list[str]) -> Iterator[tuple[int, float, torch.Tensor]]:
    """Yield (index, seconds, picture) for each of the sorted unique `indices`, each frame at most once and in order;
    `picture()` returns the uint8 CHW frame with rotation applied (it converts to RGB, so the caller can call it on
    another thread than the decoder's). Stops after the last one; a damaged file may leave some out (the caller checks
    what came). Raises TimestampsUnfit when the file's times turn out wrong (decode again with
    `replace(metadata, timestamps_proven=False)`). A backend that deviates from what was asked adds a note."""
    if backend == "pyav":
        return _decode_pyav(path, metadata, indices, limits, deadline)
    if backend == "torchcodec":
        _torchcodec_decoder_class()  # a torchcodec that cannot load is an error, whatever the file
    if not metadata.timestamps_proven:
        notes.append(f"{backend} finds frames by presentation times, which {metadata.source} does not record "
                     "reliably; its frames were decoded sequentially with PyAV")
        return _decode_pyav(path, metadata, indices, limits, deadline)
    if backend == "torchcodec":
        return _decode_random_access(path, metadata, indices, limits, deadline, notes, backend, _torchcodec_chunks)
    return _decode_random_access(path, metadata, indices, limits, deadline, notes, backend, _decord_chunks)


def decodable_indices(path: str, metadata: VideoMetadata, limits: Limits,
                      deadline: float | Deadline) -> list[int]:
    """The frames of a damaged file that decode: every packet decoded, no colour conversion."""
    with _open(path, metadata.source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        every = list(range(metadata.num_frames))
        try:
            frames = (_timed_frames(container, stream, metadata, every, limits, deadline, skip_unwanted=False)
                      if metadata.timestamps_proven else _counted_frames(container, stream, metadata, every, limits,
                                                                         deadline))
            return [index for index, _ in frames]
        except TimestampsUnfit:
            return decodable_indices(path, replace(metadata, timestamps_proven=False), limits, deadline)


def _decode_pyav(path, metadata, indices, limits, deadline):
    frames = _timed_frames if metadata.timestamps_proven else _counted_frames
    with _open(path, metadata.source) as container:
        stream = container.streams.video[0]
        stream.thread_type, stream.thread_count = "AUTO", DECODE_THREADS
        for index, frame in frames(container, stream, metadata, indices, limits, deadline):
            yield index, metadata.frame_time(index), partial(_to_tensor, frame, metadata.rotation)


def _counted_frames(container, stream, metadata, indices, limits, deadline):
    """(index, frame) for the wanted `indices`, counting every decoded frame from the start. The first packet that
    fails to decode (or a truncated tail) ends it: past it the count would no longer name the right frames."""
    wanted, last = set(indices), indices[-1]
    index = -1
    try:
        for packet in container.demux(stream):
            check_deadline(deadline, limits)
            for frame in packet.decode():
                index += 1
                if index in wanted:
                    yield index, frame
                if index >= last:
                    return
    except av.FFmpegError:
        return


def _timed_frames(container, stream, metadata, indices, limits, deadline, skip_unwanted=True):
    """(index, frame) for the wanted `indices`, found by presentation time, decoding only what they need: a seek
    to the keyframe before each run of wanted frames that lies past what is already decoded, and (with
    `skip_unwanted`) a packet whose frame nobody asked for skipped unless later frames refer to it. The frames that
    come out are bit-identical to a full decode. A packet that fails to decode is passed over."""
    context = stream.codec_context
    verified = 0  # the first VERIFY_FRAMES frames are all decoded, and must come out as the probe ordered them
    for start, run in _seek_runs(metadata, sorted(indices)):
        if start is not None:
            container.seek(metadata.frame_pts[start], stream=stream, backward=True)
        wanted_pts = {metadata.frame_pts[index] for index in run}
        earliest, previous, expected = metadata.frame_pts[start or 0], None, start or 0
        try:
            for packet in container.demux(stream):
                check_deadline(deadline, limits)
                skip = skip_unwanted and verified >= VERIFY_FRAMES and packet.pts not in wanted_pts
                context.skip_frame = "NONREF" if skip else "DEFAULT"
                for frame in _decode_packet(stream, packet):
                    if frame.pts is None or frame.pts < earliest:
                        continue  # leading frames of an open GOP after a seek: not decodable from here
                    index = metadata.index_of_pts(frame.pts)
                    if index is None or (previous is not None and index <= previous):
                        raise TimestampsUnfit
                    if verified < VERIFY_FRAMES:
                        if index != expected:
                            raise TimestampsUnfit
                        verified, expected = verified + 1, expected + 1
                    previous = index
                    while run and run[0] < index:
                        run.pop(0)  # a frame that did not decode
                    if run and run[0] == index:
                        yield run.pop(0), frame
                    if not run:
                        break
                if not run:
                    break
        except av.FFmpegError:
            return  # a truncated tail: nothing after it can be reached
        finally:
            context.skip_frame = "DEFAULT"


def _seek_runs(metadata, indices) -> list[tuple[int | None, list[int]]]:
    """Split the sorted wanted `indices` into runs, each decoded from a keyframe: (keyframe to seek to, or None to
    go on from where the previous run stopped, run indices). A seek is worth it when the keyframe before the next
    wanted frame lies well past the last frame decoded."""
    runs, decoded_to = [], 0
    for index in indices:
        position = bisect.bisect_right(metadata.keyframes, index) - 1
        keyframe = metadata.keyframes[position] if position >= 0 else 0
        if keyframe - decoded_to >= SEEK_MIN_FRAMES or not runs:
            runs.append((keyframe if keyframe - decoded_to >= SEEK_MIN_FRAMES else None, []))
        runs[-1][1].append(index)
        decoded_to = index
    return runs


def _to_tensor(frame, rotation: int) -> torch.Tensor:
    image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
    return torch.rot90(image, rotation // 90, dims=(1, 2)) if rotation else image


def _decode_random_access(path, metadata, indices, limits, deadline, notes, backend, read_chunks):
    """A random-access backend's frames in chunks, each chunk checked against the probe's presentation times and
    size; from the first chunk that fails the check (or cannot be read) on, PyAV decodes the rest, with a note."""
    chunks = read_chunks(path, metadata, indices)
    for start in range(0, len(indices), RANDOM_ACCESS_CHUNK):
        check_deadline(deadline, limits)
        chunk = indices[start : start + RANDOM_ACCESS_CHUNK]
        images, seconds = next(chunks, (None, None))
        if images is None or not _are_frames(images, seconds, chunk, metadata):
            notes.append(f"{backend} could not return frame {chunk[0]} of {metadata.source} and later ones exactly "
                         "(its random access gives neighbouring frames on some files); they were decoded "
                         "sequentially with PyAV")
            yield from _decode_pyav(path, metadata, indices[start:], limits, deadline)
            return
        for index, image in zip(chunk, images):
            yield index, metadata.frame_time(index), partial(torch.Tensor.contiguous, image)


def _torchcodec_chunks(path, metadata, indices):
    """(uint8 NCHW frames, seconds from the stream start) per chunk of `indices`; (None, None) once it fails.
    torchcodec's own sequential API (`get_frames_in_range`) is no way out of its errors: it holds every frame of the
    range at full size, and seeks by the same table unless it starts at 0."""
    VideoDecoder = _torchcodec_decoder_class()
    try:
        decoder = VideoDecoder(path, seek_mode="exact", num_ffmpeg_threads=0)
    except (RuntimeError, ValueError):
        return
    start = float(metadata.frame_pts[0] * metadata.time_base)
    for offset in range(0, len(indices), RANDOM_ACCESS_CHUNK):
        try:
            batch = decoder.get_frames_at(indices=indices[offset : offset + RANDOM_ACCESS_CHUNK])
        except (RuntimeError, IndexError):  # e.g. an index past the frames it counted
            return
        yield batch.data, [seconds - start for seconds in batch.pts_seconds.tolist()]


def _decord_chunks(path, metadata, indices):
    import decord  # optional dependency

    try:
        reader = decord.VideoReader(path)
    except decord.DECORDError:
        return
    if len(reader) != metadata.num_frames:
        return
    start = float(reader.get_frame_timestamp(0)[0])
    for offset in range(0, len(indices), RANDOM_ACCESS_CHUNK):
        chunk = indices[offset : offset + RANDOM_ACCESS_CHUNK]
        try:
            images = torch.from_numpy(reader.get_batch(chunk).asnumpy()).permute(0, 3, 1, 2)
        except decord.DECORDError:
            return
        yield images, [float(reader.get_frame_timestamp(index)[0]) - start for index in chunk]


def _torchcodec_decoder_class():
    try:
        from torchcodec.decoders import VideoDecoder  # optional dependency
    except (ImportError, OSError, RuntimeError) as error:
        raise OptionsError(f"the torchcodec backend cannot load ({type(error).__name__}); it needs FFmpeg's shared "
                           "libraries (`apt-get install ffmpeg`); or use backend pyav") from None
    return VideoDecoder


def _are_frames(images: torch.Tensor, seconds: list[float], indices: list[int], metadata: VideoMetadata) -> bool:
    """Whether random access gave the frames `indices` name: display size and presentation times as probed."""
    if len(images) != len(indices) or tuple(images.shape[-2:]) != (metadata.height, metadata.width):
        return False
    return all(abs(got - metadata.frame_time(index)) < PTS_TOLERANCE_SECONDS for got, index in zip(seconds, indices))
