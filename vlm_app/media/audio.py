"""Sound for the models that hear. A video's own soundtrack: the sampled range decoded with PyAV and resampled to 16 kHz mono float32, the form
speech encoders take. Knows no model: a family that hears asks for it with the `audio` option of its videos
("auto": when the file has a track; "on"; "off", the default) and caps its length with `max_audio_seconds`.

A file with no audio track, or a track that does not decode, gets a note and no soundtrack, not a failure. A range
longer than the cap is an error with "on" and a note with "auto" (nothing is decoded then). An audio item (a file of
its own, `load_audio`) is decoded whole, as long as its model hears at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from vlm_app.errors import DecodeError, LimitError

SAMPLING_RATE = 16_000
AUDIO_MODES = ("auto", "on", "off")
SEEK_MARGIN_SECONDS = 1.0  # seek this far before the range: audio packets are cut where the seek lands


class NoSoundtrack(DecodeError):
    """The file has no audio track, or none that decodes."""


@dataclass
class Soundtrack:
    """Mono samples at `sampling_rate` from `start` seconds into the source. `tokens`: what the model that heard it
    spent on it, set by its family (None until then)."""

    samples: np.ndarray
    sampling_rate: int
    start: float
    tokens: int | None = None

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sampling_rate

    def summary(self) -> dict:
        return {"used": True, "seconds": round(self.seconds, 3), "start": round(self.start, 3), "tokens": self.tokens}


def read_soundtrack(path: str, label: str, start: float = 0.0, end: float | None = None,
                    deadline: float | None = None, max_seconds: float | None = None) -> Soundtrack:
    """The first audio track of `path` from `start` to `end` seconds (None: its end), 16 kHz mono float32;
    decoding stops with a LimitError once it is past `max_seconds` of sound."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise NoSoundtrack(f"{label} has no audio track")
            stream = container.streams.audio[0]
            if start > SEEK_MARGIN_SECONDS:
                container.seek(int((start - SEEK_MARGIN_SECONDS) * av.time_base), backward=True)
            samples, first = _decoded(container, stream, end, label, deadline, max_seconds)
    except av.error.FFmpegError as error:
        raise NoSoundtrack(f"the audio track of {label} does not decode ({error})") from None
    if first is None:
        raise NoSoundtrack(f"the audio track of {label} has no samples from {start:g} s")
    skip = max(0, round((start - first) * SAMPLING_RATE)) if start > 0 else 0  # from 0: all, as a whole decode
    stop = None if end is None else max(skip, round((end - first) * SAMPLING_RATE))
    return Soundtrack(samples=np.ascontiguousarray(samples[skip:stop]), sampling_rate=SAMPLING_RATE,
                      start=first + skip / SAMPLING_RATE)


def _decoded(container, stream, end, label, deadline, max_seconds) -> tuple[np.ndarray, float | None]:
    """(samples from the first decoded frame on, until `end`; that frame's time in seconds)."""
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLING_RATE)
    chunks, first = [], None
    for frame in container.decode(stream):
        if deadline is not None and time.monotonic() > deadline:
            raise LimitError(f"decoding the audio of {label} took too long; give a shorter range")
        if frame.time is not None and first is None:
            first = float(frame.time)
        if end is not None and frame.time is not None and frame.time >= end:
            break
        if max_seconds is not None and frame.time is not None and frame.time - first > max_seconds + 1:
            raise _too_long(label, max_seconds)
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
    chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), first


def load_audio(source, limits=None, max_seconds: float | None = None) -> Soundtrack:
    """An audio file, URL or data: URI (`.wav`, `.mp3`, `.m4a`, or a video's track) whole, 16 kHz mono, through the
    media pipeline's source guard; longer than `max_seconds` is a LimitError (found while decoding)."""
    from vlm_app.media.limits import DEFAULT_LIMITS
    from vlm_app.media.sources import local_file

    limits = limits or DEFAULT_LIMITS
    with local_file(source, limits) as (path, label):
        sound = read_soundtrack(path, label, deadline=time.monotonic() + limits.decode_seconds,
                                max_seconds=max_seconds)
    if max_seconds is not None and sound.seconds > max_seconds + 1e-6:
        raise _too_long(label, max_seconds)
    return sound


def _too_long(label: str, max_seconds: float) -> LimitError:
    return LimitError(f"{label} lasts over the {max_seconds:g} s of audio the model hears at once; cut it shorter")


def attach_soundtrack(video, path: str, label: str, options: dict, deadline: float | None = None) -> None:
    """Give a SampledVideo the soundtrack of its range when its `audio` option asks, or a note why not."""
    mode = options.get("audio") or "off"
    if mode == "off":
        return
    start = float(options.get("video_start") or 0.0)
    asked_end = options.get("video_end")
    end = video.metadata.duration if asked_end is None else min(float(asked_end), video.metadata.duration)
    cap = options.get("max_audio_seconds")
    if cap is not None and end - start > cap + 1e-6:
        message = (f"the soundtrack of {label} from {start:g} s to {end:g} s lasts {end - start:.1f} s, over the "
                   f"{cap:g} s the model hears at once")
        if mode == "on":
            raise LimitError(f"{message}; give a shorter range (--start/--end, or --chapters with --segment-seconds "
                             f"{cap * 2 / 3:g}: a short last piece joins the segment before it), or --audio off")
        video.notes.append(f"{message}: the video was described without its sound (--audio on makes this an error)")
        return
    try:
        video.soundtrack = read_soundtrack(path, label, start, None if asked_end is None else end, deadline)
    except NoSoundtrack as error:
        video.notes.append(f"no sound used: {error}")
