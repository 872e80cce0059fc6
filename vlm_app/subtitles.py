"""Timed texts as subtitles: SRT, WebVTT and JSON writers for cues (the web app's timeline, a chapters run).

Pure functions on text. A cue's text keeps its lines but loses blank ones and any `-->`, which would end or break
the cue in both formats.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Cue:
    """One moment or range of a video with its text. `label` is the time as written or shown."""

    start: float
    end: float
    text: str
    label: str


def clock(seconds: float) -> str:
    """`HH:MM:SS`, always that wide (fractions dropped)."""
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _subtitle_time(seconds: float, decimal: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def _cue_text(text: str) -> str:
    return "\n".join(line for line in text.replace("-->", "->").splitlines() if line.strip())


def to_srt(cues: list[Cue]) -> str:
    blocks = [f"{number}\n{_subtitle_time(cue.start, ',')} --> {_subtitle_time(cue.end, ',')}\n{_cue_text(cue.text)}\n"
              for number, cue in enumerate(cues, start=1)]
    return "\n".join(blocks)


def to_vtt(cues: list[Cue]) -> str:
    blocks = [f"{_subtitle_time(cue.start, '.')} --> {_subtitle_time(cue.end, '.')}\n{_cue_text(cue.text)}\n"
              for cue in cues]
    return "\n".join(["WEBVTT\n"] + blocks)


def to_json(cues: list[Cue]) -> str:
    return json.dumps([asdict(cue) for cue in cues], indent=2, ensure_ascii=False)
