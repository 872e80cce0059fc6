"""`load_video(source, policy, **options) -> SampledVideo`: probe, choose frames, decode once, resize as they come.

Memory stays bounded by the sampled output: only the wanted frames are converted to RGB, each is resized as soon
as it is decoded, and decoding stops after the last wanted frame.

Frame cache: a chat UI sends the same video with every turn, so results for local files are kept in a small LRU
cache bounded by the bytes of their frames (`VLM_APP_FRAME_CACHE_MB`, default 512; 0 turns it off; or
`FRAME_CACHE.resize(max_bytes)`). A file is known by its real path, inode, size and modification time, so an
edited file is decoded again. Downloads and data: URIs are not cached (their temporary copies are gone).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict, deque
from contextlib import closing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from vlm_app.errors import DecodeError, LimitError, OptionsError
from vlm_app.media import sampling
from vlm_app.media.audio import AUDIO_MODES, Soundtrack, attach_soundtrack
from vlm_app.media.decode import (Deadline, TimestampsUnfit, VideoMetadata, decodable_indices, decode_frames,
                                  probe, resolve_backend)
from vlm_app.media.image import open_rgb_image
from vlm_app.media.limits import DEFAULT_LIMITS, Limits
from vlm_app.media.options import RESIZE_KERNELS, RESIZE_OPTIONS, VIDEO_OPTIONS, value_error
from vlm_app.media.policies import SamplingPolicy, get_policy, policy_notes
from vlm_app.media.resize import resize_exact
from vlm_app.media.sources import is_local, local_file

RESIZE_QUEUE = 4  # decoded frames waiting for a resize worker
PROBE_CACHE = 16  # probed files remembered (their frame times), so a probe before the decode is not repeated
RESIZE_WORKERS = len(os.sched_getaffinity(0))
_UNFIT_NOTE = ("the presentation times in {source} contradict its frame order; frames were counted in a sequential "
               "decode instead")
FRAME_LIST_IGNORED = ("nframes", "min_frames", "max_frames", "video_start", "video_end", "backend")


@dataclass
class SampledVideo:
    frames: torch.Tensor  # uint8 (T, C, H, W); may be shared with the frame cache: clone before editing in place
    frames_indices: list[int]  # display-order indices into the source's frames
    timestamps: list[float]  # seconds, each sampled frame's presentation time
    sample_fps: float
    metadata: VideoMetadata
    backend: str
    policy: SamplingPolicy
    notes: list[str] = field(default_factory=list)
    decode_seconds: float = 0.0
    soundtrack: Soundtrack | None = None  # the range's sound, when the `audio` option asks for it (media.audio)

    @property
    def resized_height(self) -> int:
        return self.frames.shape[2]

    @property
    def resized_width(self) -> int:
        return self.frames.shape[3]


def load_video(source, policy: str | SamplingPolicy = "qwen2_5_vl", *, limits: Limits | None = None,
               fit=None, **options) -> SampledVideo:
    """Sample `source` (path, file://, http(s)://, data: URI, or a list of frames) the way `policy` says.

    `fit(metadata, options) -> options`: a last word on the options once the file is probed and before anything
    is decoded (the request layer's memory fit lowers frames or pixels there; it may raise)."""
    policy = get_policy(policy) if isinstance(policy, str) else policy
    limits = limits or DEFAULT_LIMITS
    check_options(options, policy)
    started = time.perf_counter()
    if isinstance(source, (list, tuple)):
        video = _load_frame_list(source, policy, options, limits)
    else:
        with local_file(source, limits) as (path, label):
            if fit is not None:
                options = fit(probe_cached(path, label, limits, time.monotonic() + limits.decode_seconds), options)
                check_options(options, policy)
            load = _load_file_cached if is_local(source) else _load_file
            video = load(path, label, policy, options, limits)
            attach_soundtrack(video, path, label, options, time.monotonic() + limits.decode_seconds)
    video.notes = policy_notes(policy) + video.notes
    video.decode_seconds = time.perf_counter() - started
    return video


class FrameCache:
    """Least recently used `SampledVideo`s, bounded by the total bytes of their frames; thread-safe.

    Entries are keyed by path and request; the file's identity (inode, size, mtime) is checked on every hit, so a
    file replaced at the same path (as uploads are) replaces its entry instead of leaving a stale one behind."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._videos: OrderedDict[tuple, tuple[tuple, SampledVideo]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple, identity: tuple) -> SampledVideo | None:
        with self._lock:
            entry = self._videos.get(key)
            if entry is None:
                return None
            if entry[0] != identity:
                self._drop(key)
                return None
            self._videos.move_to_end(key)
            return entry[1]

    def put(self, key: tuple, identity: tuple, video: SampledVideo) -> None:
        with self._lock:
            if key in self._videos:
                self._drop(key)
            if video.frames.nbytes <= self.max_bytes:
                self._videos[key] = (identity, video)
                self._bytes += video.frames.nbytes
            self._evict()

    def resize(self, max_bytes: int) -> None:
        with self._lock:
            self.max_bytes = max_bytes
            self._evict()

    def _drop(self, key: tuple) -> None:
        self._bytes -= self._videos.pop(key)[1].frames.nbytes

    def _evict(self) -> None:
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._videos)))


def probe_cached(path: str, label: str, limits: Limits, deadline: float) -> VideoMetadata:
    """`probe`, remembered for the last PROBE_CACHE files by their identity (a fit probes before the decode)."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, label, limits)
    with _PROBES_LOCK:
        if key in _PROBES:
            _PROBES.move_to_end(key)
            return _PROBES[key]
    metadata = probe(path, label, limits, deadline)
    with _PROBES_LOCK:
        _PROBES[key] = metadata
        while len(_PROBES) > PROBE_CACHE:
            _PROBES.popitem(last=False)
    return metadata


_PROBES: OrderedDict[tuple, VideoMetadata] = OrderedDict()
_PROBES_LOCK = threading.Lock()


def frame_cache_bytes_from_env() -> int:
    megabytes = os.environ.get("VLM_APP_FRAME_CACHE_MB", "512")
    try:
        return max(int(float(megabytes) * 2**20), 0)
    except ValueError:
        raise OptionsError(f"VLM_APP_FRAME_CACHE_MB={megabytes!r} is not a number of megabytes; fix or unset it") from None


FRAME_CACHE = FrameCache(frame_cache_bytes_from_env())


def _load_file_cached(path: str, label: str, policy: SamplingPolicy, options: dict, limits: Limits) -> SampledVideo:
    """`_load_file` through FRAME_CACHE. Callers get their own copy: only the frames tensor is shared."""
    stat = os.stat(path)
    effective = {name: value for name, value in options.items() if value is not None}
    effective["backend"] = resolve_backend(options.get("backend"))
    key = (os.path.realpath(path), label, policy, tuple(sorted(effective.items())), limits)
    identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    video = FRAME_CACHE.get(key, identity)
    if video is None:
        video = _load_file(path, label, policy, options, limits)
        FRAME_CACHE.put(key, identity, video)
    return replace(video, frames_indices=list(video.frames_indices), timestamps=list(video.timestamps),
                   notes=list(video.notes))


def check_options(options: dict, policy: SamplingPolicy) -> None:
    """Reject unknown, out-of-range and contradictory options before any work."""
    unknown = sorted(set(options) - set(VIDEO_OPTIONS))
    if unknown:
        raise OptionsError(f"unknown option(s) {', '.join(unknown)}; valid options: {', '.join(VIDEO_OPTIONS)}")
    if options.get("fps") is not None and options.get("nframes") is not None:
        raise OptionsError("give either fps or nframes, not both")
    for name in VIDEO_OPTIONS:
        if error := value_error(name, options.get(name)):
            raise OptionsError(error)
    for name in ("fps", "nframes", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels",
                 "resized_height", "resized_width"):
        if options.get(name) is not None and not options[name] > 0:
            raise OptionsError(f"{name} must be positive, got {options[name]}")
    for low, high in (("min_frames", "max_frames"), ("min_pixels", "max_pixels"), ("video_start", "video_end")):
        if options.get(low) is not None and options.get(high) is not None and options[low] > options[high]:
            raise OptionsError(f"{low} ({options[low]}) is greater than {high} ({options[high]}); swap or fix them")
    if (options.get("resized_height") is None) != (options.get("resized_width") is None):
        raise OptionsError("give resized_height and resized_width together")
    if options.get("video_start") is not None and options["video_start"] < 0:
        raise OptionsError(f"video_start must be >= 0 seconds, got {options['video_start']}")
    if options.get("audio", "off") not in AUDIO_MODES:
        raise OptionsError(f"audio must be one of {', '.join(AUDIO_MODES)}, got {options['audio']!r}")
    if options.get("resize", "exact") not in RESIZE_KERNELS:
        raise OptionsError(f"resize must be one of {', '.join(RESIZE_KERNELS)}, got {options['resize']!r}")
    if policy.resize_rule is None and any(options.get(name) is not None for name in RESIZE_OPTIONS):
        raise OptionsError(f"the {policy.name} policy does not resize (its processor does); pixel options apply "
                           "to the Qwen policies")
    if policy.resize_rule == "video" and options.get("total_pixels") is not None:
        raise OptionsError(f"the {policy.name} policy has one pixel budget for the whole video: set max_pixels "
                           "(frames x height x width), not total_pixels")


def _load_file(path: str, label: str, policy: SamplingPolicy, options: dict, limits: Limits) -> SampledVideo:
    """Probe, plan, decode. When frames of a damaged file do not decode, the sample is planned again over the frames
    that do, so no frame ever stands in for another."""
    backend = resolve_backend(options.get("backend"))
    deadline = time.monotonic() + limits.decode_seconds
    metadata = probe_cached(path, label, limits, deadline)
    indices, fps_sampled, notes = _planned_frames(metadata, policy, options, limits)
    frames, times, metadata = _decode_sample(path, metadata, indices, backend, policy, options, limits, deadline, notes)
    if len(times) < len(set(indices)):
        decodable = _decodable(path, label, metadata, limits, deadline)
        indices, fps_sampled, notes = _planned_frames(metadata, policy, options, limits, decodable)
        frames, times, metadata = _decode_sample(path, metadata, indices, backend, policy, options, limits, deadline,
                                                 notes)
        if len(times) < len(set(indices)):
            raise _unsteady(label, set(indices) - set(times))
    return SampledVideo(frames=frames, frames_indices=indices, timestamps=[times[index] for index in indices],
                        sample_fps=fps_sampled, metadata=metadata, backend=backend, policy=policy, notes=notes)


def _planned_frames(metadata: VideoMetadata, policy: SamplingPolicy, options: dict, limits: Limits,
                    decodable: list[int] | None = None) -> tuple[list[int], float, list[str]]:
    """`choose_frames` within the limits; over only the `decodable` frames of a damaged file when given."""
    if decodable is not None:
        positions, fps_sampled, notes = _planned_frames(metadata.restricted_to(decodable), policy, options, limits)
        notes.append(f"{len(decodable)} of {metadata.num_frames} frames decodable (truncated or corrupt file); "
                     "the sample was planned over those")
        return [decodable[position] for position in positions], fps_sampled, notes
    indices, fps_sampled, notes = choose_frames(metadata, policy, options)
    if len(indices) > limits.max_sampled_frames:
        raise LimitError(f"{len(indices)} frames requested, over the {limits.max_sampled_frames} limit; lower "
                         "fps/nframes or raise Limits.max_sampled_frames")
    return indices, fps_sampled, notes


def _decodable(path, label, metadata, limits, deadline) -> list[int]:
    decodable = decodable_indices(path, metadata, limits, deadline)
    if not decodable:
        raise DecodeError(f"{label} contains no decodable video frames (truncated or corrupt); re-export it")
    return decodable


def _unsteady(label: str, missing: set[int]) -> DecodeError:
    return DecodeError(f"{label} decodes differently each time (frame {min(missing)} decoded once, then not); "
                       "re-export it")


def load_video_segments(source, policy: str | SamplingPolicy, segments, *, limits: Limits | None = None,
                        **options) -> Iterator[SampledVideo]:
    """Sample many time segments of one video, each exactly as `load_video(source, policy, **options, **segment)`
    samples it, with one probe and one decode pass (a chapters run: an hour-long video, part by part).

    `segments`: each segment's own load_video options (video_start and video_end, ...), in time order; or a function
    of the probed `VideoMetadata` that returns them (to size the segments by the duration without probing twice).
    Each segment's SampledVideo is yielded as soon as its last frame is resized, and the consumer drops it before
    asking for the next, so one segment's frames are held at a time (overlapping neighbours share a few). Files
    whose timestamps are not proven are decoded by counting from the start: once for all segments, never once per
    segment. The frame cache is bypassed. The duration cap is `Limits.max_chapters_duration_seconds`; the probe and
    each segment get `Limits.decode_seconds` of decoding of their own."""
    policy = get_policy(policy) if isinstance(policy, str) else policy
    limits = limits or DEFAULT_LIMITS
    check_options(options, policy)
    if isinstance(source, (list, tuple)):
        raise OptionsError("a list of frames is already sampled; give a video file or URL to sample in segments")
    with local_file(source, limits) as (path, label):
        yield from _load_file_segments(path, label, policy, segments, options, limits)


@dataclass
class _SegmentPlan:
    """One segment's sample while a shared decode pass fills it; its frames are allocated at its first frame."""

    options: dict
    indices: list[int]
    sample_fps: float
    notes: list[str]
    size: tuple[int, int]
    decodable: list[int] | None  # planned over only these frames (a damaged file)
    last: int = 0  # the segment's last frame: once the decode is past it, the segment is done
    failure: OptionsError | None = None
    positions: dict[int, list[int]] = field(default_factory=dict)
    frames: torch.Tensor | None = None
    times: dict[int, float] = field(default_factory=dict)

    @classmethod
    def of(cls, metadata, policy, options, limits, decodable=None) -> _SegmentPlan:
        try:
            indices, fps_sampled, notes = _planned_frames(metadata, policy, options, limits, decodable)
        except OptionsError as error:  # too few decodable frames left in its range: it fails in its turn
            if decodable is None:
                raise
            return cls(options, [], 0.0, [], (0, 0), decodable, last=-1, failure=error)
        size = output_size(metadata.height, metadata.width, len(indices), policy, options)
        plan = cls(options, indices, fps_sampled, notes, size, decodable, last=max(indices))
        for position, index in enumerate(indices):
            plan.positions.setdefault(index, []).append(position)
        return plan

    def place(self, index: int) -> tuple[torch.Tensor, list[int]]:
        if self.frames is None:
            self.frames = torch.empty((len(self.indices), 3, *self.size), dtype=torch.uint8)
        return self.frames, self.positions[index]

    @property
    def complete(self) -> bool:
        return len(self.times) == len(self.positions)

    def video(self, metadata, backend, policy, decode_notes, seconds) -> SampledVideo:
        """The finished sample; the plan lets go of its frames (the consumer's copy is the only one)."""
        frames, self.frames = self.frames, None
        return SampledVideo(frames=frames, frames_indices=self.indices,
                            timestamps=[self.times[index] for index in self.indices], sample_fps=self.sample_fps,
                            metadata=metadata, backend=backend, policy=policy,
                            notes=policy_notes(policy) + self.notes + decode_notes, decode_seconds=seconds)


def _load_file_segments(path, label, policy, segments, options, limits) -> Iterator[SampledVideo]:
    """Probe once, plan every segment, decode their frames in one pass. As in `_load_file`: a file whose times
    contradict its frame order is decoded again counting, and a segment whose frames do not all decode is planned
    again over the frames that do (every segment after it too when the decode ended there)."""
    backend = resolve_backend(options.get("backend"))
    deadline = Deadline(limits.decode_seconds)
    started = time.perf_counter()
    metadata = probe(path, label, limits, deadline, chapters=True)
    asked = [{**options, **segment} for segment in (segments(metadata) if callable(segments) else segments)]
    for segment_options in asked:
        check_options(segment_options, policy)
    plans = [_SegmentPlan.of(metadata, policy, segment_options, limits) for segment_options in asked]
    decode_notes, decodable = [], None
    while plans:
        try:
            with closing(_fill_segments(path, metadata, plans, backend, limits, deadline, decode_notes,
                                        resize_kernel(policy, options))) as filled:
                for plan, ended in filled:
                    if plan.failure is not None:
                        raise plan.failure
                    if not plan.complete:
                        break
                    plans.pop(0)
                    video = plan.video(metadata, backend, policy, list(decode_notes), time.perf_counter() - started)
                    attach_soundtrack(video, path, label, plan.options, time.monotonic() + limits.decode_seconds)
                    yield video
                    deadline.renew()
                    started = time.perf_counter()
        except TimestampsUnfit:
            metadata = replace(metadata, timestamps_proven=False)
            plans = [_SegmentPlan.of(metadata, policy, plan.options, limits, plan.decodable) for plan in plans]
            for plan in plans:
                plan.notes.append(_UNFIT_NOTE.format(source=metadata.source))
            continue
        if not plans:
            return
        if plans[0].decodable is not None:
            raise _unsteady(label, set(plans[0].positions) - set(plans[0].times))
        decodable = decodable or _decodable(path, label, metadata, limits, deadline)
        replanned = len(plans) if ended else 1  # a decode that ended there reached none of the later segments
        plans = [_SegmentPlan.of(metadata, policy, plan.options, limits,
                                 decodable if number < replanned else plan.decodable)
                 for number, plan in enumerate(plans)]


def _fill_segments(path, metadata, plans, backend, limits, deadline, notes,
                   kernel) -> Iterator[tuple[_SegmentPlan, bool]]:
    """One decode pass over the frames of every plan (in time order), each frame resized into the plans that hold
    it. Yields (plan, whether the decode ended) in order, each once the decode has placed or passed its last frame."""
    holders: dict[int, list[_SegmentPlan]] = {}
    for plan in plans:
        for index in plan.positions:
            holders.setdefault(index, []).append(plan)
    waiting = deque(plans)

    def places(index: int) -> list[tuple[torch.Tensor, list[int]]]:
        return [plan.place(index) for plan in holders[index]]

    for index, seconds in _decode_resized(path, metadata, sorted(holders), places, backend, limits, deadline, notes,
                                          kernel):
        for plan in holders.pop(index):
            plan.times[index] = seconds
        while waiting and waiting[0].last <= index:
            yield waiting.popleft(), False
    while waiting:
        yield waiting.popleft(), True


def _decode_sample(path, metadata, indices, backend, policy, options, limits, deadline, notes):
    """(uint8 frames resized to the sample's size, {index: seconds} of the frames that decoded, metadata). A file
    whose presentation times turn out wrong while decoding is decoded again, counting frames."""
    size = output_size(metadata.height, metadata.width, len(indices), policy, options)
    options = {**options, "resize": resize_kernel(policy, options)}
    frames = torch.empty((len(indices), 3, *size), dtype=torch.uint8)  # filled in place: no second copy
    positions = {}
    for position, index in enumerate(indices):
        positions.setdefault(index, []).append(position)
    try:
        return frames, _decode_into(frames, positions, path, metadata, backend, limits, deadline, notes, options), \
            metadata
    except TimestampsUnfit:
        metadata = replace(metadata, timestamps_proven=False)
        notes.append(_UNFIT_NOTE.format(source=metadata.source))
        return frames, _decode_into(frames, positions, path, metadata, backend, limits, deadline, notes, options), \
            metadata


def _decode_into(frames, positions, path, metadata, backend, limits, deadline, notes, options) -> dict[int, float]:
    """Decode the frames `positions` names into `frames`, resizing each as it comes; {index: seconds} decoded."""
    return dict(_decode_resized(path, metadata, sorted(positions), lambda index: [(frames, positions[index])], backend,
                                limits, deadline, notes, options.get("resize", "exact")))


def _decode_resized(path, metadata, indices, places, backend, limits, deadline, notes,
                    kernel) -> Iterator[tuple[int, float]]:
    """Decode the sorted `indices`, resizing each frame into every (frames, positions) that `places(index)` names;
    yields (index, seconds) in order, each once its frame is in place."""
    # Worker threads convert each wanted frame to RGB and resize it while the decoder goes on: cheap codecs leave
    # the cores to the resize, costly ones to FFmpeg's threads. The exact resize and the copy into place use no
    # torch op (an OpenMP pool spinning against FFmpeg's threads), and the workers leave torch's thread count
    # alone: `torch.set_num_threads` is process-wide, so every thread started later (the model's) would inherit
    # it. A short queue bounds the decoded frames held.
    with ThreadPoolExecutor(RESIZE_WORKERS) as resizer:
        pending = deque()
        for index, seconds, picture in decode_frames(path, metadata, indices, backend, limits, deadline, notes):
            pending.append((index, seconds, resizer.submit(_resize_into, places(index), picture, kernel)))
            if len(pending) > RESIZE_QUEUE:
                yield _placed(*pending.popleft())
        while pending:
            yield _placed(*pending.popleft())


def _placed(index: int, seconds: float, job) -> tuple[int, float]:
    job.result()
    return index, seconds


def choose_frames(metadata: VideoMetadata, policy: SamplingPolicy, options: dict) -> tuple[list[int], float, list[str]]:
    """(frame indices, sample fps, notes on deliberate differences) for a probed video."""
    notes, rate = [], metadata.fps
    if metadata.is_vfr:
        first, last, count, rate = _time_range(metadata, options.get("video_start"), options.get("video_end"))
        notes.append("variable frame rate: frames sampled evenly in presentation time (the reference samples by "
                     "index)")
    else:
        first, last, count = sampling.frame_range(metadata.num_frames, metadata.fps, options.get("video_start"),
                                                  options.get("video_end"))
    fps = options.get("fps", policy.fps)
    if policy.index_rule == "smolvlm":
        duration = metadata.duration if count == metadata.num_frames else count / rate
        picked = sampling.smolvlm_indices(count, rate, duration, fps=fps,
                                          max_frames=options.get("max_frames", policy.max_frames),
                                          skip_secs=policy.skip_secs)
        indices = [first + index for index in picked]
        return indices, sampling.sample_fps(len(indices), count, rate), notes
    if count < policy.frame_factor and options.get("nframes") is None:
        notes.append(f"the clip has {count} frame(s); repeated to {policy.frame_factor} because {policy.name} "
                     "needs frame pairs (the reference raises an error here)")
        return [first] * policy.frame_factor, rate, notes
    rule = INDEX_RULES[policy.index_rule] if isinstance(policy.index_rule, str) else policy.index_rule
    nframes = rule.nframes(count, rate, policy, options)
    if metadata.is_vfr:
        indices = sampling.time_uniform_indices(metadata.frame_times(), first, last, nframes)
    else:
        indices = rule.indices(first, last, nframes)
    return indices, sampling.sample_fps(nframes, count, rate), notes


class QwenVLUtilsRule:
    """qwen-vl-utils 0.0.14: frame counts in multiples of the frame factor, float32 torch linspace."""

    @staticmethod
    def nframes(count: int, rate: float, policy: SamplingPolicy, options: dict) -> int:
        return sampling.smart_nframes(count, rate, fps=options.get("fps") if options.get("nframes") is None else None,
                                      nframes=options.get("nframes"),
                                      min_frames=options.get("min_frames", policy.min_frames),
                                      max_frames=options.get("max_frames"), frame_factor=policy.frame_factor,
                                      default_fps=policy.fps, default_max_frames=policy.max_frames)

    indices = staticmethod(sampling.linspace_indices)


class LinspaceRule:
    """transformers' default `sample_frames`: int(seconds · fps) within the frame bounds, rounded float64 linspace."""

    @staticmethod
    def nframes(count: int, rate: float, policy: SamplingPolicy, options: dict) -> int:
        return sampling.linspace_nframes(count, rate, fps=options.get("fps", policy.fps),
                                         nframes=options.get("nframes"),
                                         min_frames=options.get("min_frames", policy.min_frames),
                                         max_frames=options.get("max_frames", policy.max_frames))

    indices = staticmethod(sampling.rounded_linspace_indices)


INDEX_RULES = {"qwen": QwenVLUtilsRule, "linspace": LinspaceRule}


def _time_range(metadata: VideoMetadata, video_start, video_end) -> tuple[int, int, int, float]:
    """(first, last, count, frames per second of the range) by presentation time, for VFR clips where index/fps is
    not a time: the stream's nominal rate (Matroska's default frame duration, say) need not be their average, and
    the range's own rate is what turns its frame count into seconds."""
    times = metadata.frame_times()
    first = next((i for i, t in enumerate(times) if video_start is None or t >= video_start - 1e-6), len(times))
    last = max((i for i, t in enumerate(times) if video_end is None or t <= video_end + 1e-6), default=-1)
    if video_start is not None or video_end is not None:
        if first >= last:
            raise OptionsError(f"the time range start={video_start} end={video_end} s holds fewer than two frames "
                               f"of a {metadata.duration:.2f} s clip; widen the range")
    span = (times[last + 1] if last + 1 < len(times) else metadata.duration) - times[first]
    return first, last, last - first + 1, (last - first + 1) / span if span > 0 else metadata.fps


def output_size(height: int, width: int, nframes: int, policy: SamplingPolicy, options: dict) -> tuple[int, int]:
    """The (height, width) every frame is resized to; the native size for policies that do not resize."""
    if policy.resize_rule is None:
        return height, width
    if options.get("resized_height") is not None:
        return sampling.smart_resize(options["resized_height"], options["resized_width"], policy.factor)
    rule = RESIZE_RULES[policy.resize_rule] if isinstance(policy.resize_rule, str) else policy.resize_rule
    return rule(height, width, nframes, policy, options)


def _frame_size(height: int, width: int, nframes: int, policy: SamplingPolicy, options: dict) -> tuple[int, int]:
    """qwen-vl-utils: per-frame bounds, the cap shrunk so that every frame fits the total budget."""
    min_pixels = options.get("min_pixels", policy.min_pixels)
    max_pixels = sampling.video_max_pixels(nframes, policy.factor, min_pixels,
                                           options.get("total_pixels", policy.total_pixels),
                                           policy.max_tokens_per_frame, policy.frame_factor,
                                           options.get("max_pixels", policy.max_pixels))
    return sampling.smart_resize(height, width, policy.factor, min_pixels, max_pixels)


def _video_size(height: int, width: int, nframes: int, policy: SamplingPolicy, options: dict) -> tuple[int, int]:
    """transformers' Qwen3-VL video processor: one budget over frames x height x width (min_pixels..max_pixels),
    optionally with the per-frame cap."""
    min_pixels = options.get("min_pixels", policy.min_pixels)
    max_pixels = options.get("max_pixels", policy.max_pixels)
    if options.get("cap_pixels_per_frame", policy.cap_pixels_per_frame):
        max_pixels = sampling.capped_video_pixels(nframes, policy.factor, min_pixels, max_pixels,
                                                  policy.max_tokens_per_frame)
    return sampling.video_smart_resize(nframes, height, width, policy.factor, policy.frame_factor, min_pixels,
                                       max_pixels)


RESIZE_RULES = {"frame": _frame_size, "video": _video_size}


def resize_kernel(policy: SamplingPolicy, options: dict) -> str:
    """The kernel a frame is resized with: the `resize` option, unless the policy's reference resizes uint8 frames
    with torch's uint8 kernel (transformers' video processors), which is then exact and the only one."""
    return "fast" if policy.reference_resize == "uint8" else options.get("resize", "exact")


def _resize_into(places: list[tuple[torch.Tensor, list[int]]], picture, kernel: str) -> None:
    """Convert one decoded frame once and resize it into each of its places (overlapping segments share frames)."""
    image = picture()
    for frames, positions in places:
        frames.numpy()[positions] = resize_frame(image, tuple(frames.shape[2:]), kernel).numpy()


def resize_frame(image: torch.Tensor, size: tuple[int, int], kernel: str = "exact") -> torch.Tensor:
    """Bicubic antialiased resize. "exact": torchvision's tensor resize (and so qwen-vl-utils'): float32, clamped and
    rounded back to uint8, here compiled (`media.resize`: within one level of it, equal on all but about 2 values in
    100 000, about 3x cheaper). "fast": torch's native uint8 kernel; it differs from the float path by more than one
    level on about 1 value in 10 000 of a 720p clip (up to ~10 levels there, more on hard synthetic edges when
    upscaling).
    Same size is the identity."""
    if tuple(image.shape[1:]) == tuple(size):
        return image.contiguous()
    if kernel == "fast":
        return F.interpolate(image[None], size=size, mode="bicubic", align_corners=False, antialias=True)[0]
    return resize_exact(image, size)


def _load_frame_list(frames, policy: SamplingPolicy, options: dict, limits: Limits) -> SampledVideo:
    """A pre-sampled list of frames (paths, URLs or PIL images) taken at `fps` (default: the policy's fps).

    Unlike qwen-vl-utils 0.0.14 (which snaps each frame to multiples of 56 and then resizes again), every frame is
    resized once, straight to the video size a file with these frames would get."""
    if not frames:
        raise OptionsError("the frame list is empty; give at least one frame")
    ignored = [name for name in FRAME_LIST_IGNORED if options.get(name) is not None]
    if ignored:
        raise OptionsError(f"{', '.join(ignored)} do not apply to a list of frames (they are already sampled)")
    images = [torch.from_numpy(np.array(open_rgb_image(frame, limits))).permute(2, 0, 1) for frame in frames]
    fps = float(options.get("fps", policy.fps))
    count = sampling.ceil_by_factor(len(images), policy.frame_factor)
    indices = list(range(len(images))) + [len(images) - 1] * (count - len(images))
    notes = [] if count == len(images) else [f"{len(images)} frames padded to {count} by repeating the last one"]
    height, width = images[0].shape[1:]
    size = output_size(height, width, count, policy, options)
    resized = [resize_frame(image, size, resize_kernel(policy, options)) for image in images]
    metadata = VideoMetadata(num_frames=len(images), fps=fps, duration=len(images) / fps, width=width, height=height,
                             rotation=0, codec="images", source="frame list",
                             frame_pts=tuple(range(len(images))), time_base=1 / Fraction(fps).limit_denominator())
    return SampledVideo(frames=torch.stack([resized[index] for index in indices]), frames_indices=indices,
                        timestamps=[index / fps for index in indices], sample_fps=fps, metadata=metadata,
                        backend="images", policy=policy, notes=notes)

