"""Timestamps in an answer → a timeline: cues to jump to, subtitles, and SRT / VTT / JSON exports (the writers live
in `vlm_app.subtitles`).

Pure functions on text; nothing here knows about Gradio. Recognised forms: `mm:ss`, `hh:mm:ss` (each with optional
fractions), seconds with a unit (`12.5s`, `12 sec`, `3 seconds`), and ranges of two of them joined by `-`, `–`,
`—`, `to` or `and` (`from 00:05 to 00:09`, `[12.0s - 15.5s]`), or by a comma inside brackets (`[00:20, 00:25]`).
"""

from __future__ import annotations

import re

from vlm_app.subtitles import Cue, to_json, to_srt, to_vtt  # noqa: F401 (the timeline's exports)

_CLOCK = r"(?:\d{1,2}:)?\d{1,2}:\d{2}(?:[.,]\d+)?"
_SECONDS = r"\d+(?:\.\d+)?\s*(?:seconds|second|secs|sec|s)\b"
_TIME = rf"(?:{_CLOCK}|{_SECONDS})"
# A comma joins a range only inside brackets: "[00:20, 00:25]", while "at 00:05, 00:10" stays two moments.
_JOIN = rf"-|–|—|to|and|,(?=\s*{_TIME}\s*\])"
_TIMESTAMP = re.compile(rf"(?<![\d:.])(?P<start>{_TIME})(?:\s*(?:{_JOIN})\s*(?P<end>{_TIME}))?")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")
DEFAULT_CUE_SECONDS = 3.0


def parse_time(text: str) -> float:
    """Seconds from `mm:ss`, `hh:mm:ss` (optionally with fractions) or a number with a seconds unit."""
    text = text.strip()
    if ":" not in text:
        return float(re.match(r"\d+(?:\.\d+)?", text).group())
    seconds = 0.0
    for part in text.replace(",", ".").split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def format_clock(seconds: float) -> str:
    """`m:ss` under an hour, `h:mm:ss` above; fractions are dropped (this is for labels)."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def find_cues(answer: str, duration: float | None = None) -> list[Cue]:
    """Every timestamp or range in `answer`, in order of time, with the line it appears on as its text.

    A single moment lasts until the next cue starts (at most `DEFAULT_CUE_SECONDS`); times past `duration` are
    clipped to it, and cues that start after the end of the video are dropped.
    """
    found = []
    for line in answer.splitlines():
        text = _BULLET.sub("", line).strip()
        leading = _TIMESTAMP.match(text.lstrip("[("))
        if leading:  # "00:05 - 00:09: a dog runs" → "a dog runs"; timestamps inside a sentence stay
            text = text.lstrip("[(")[leading.end():].strip(" :,;-–—)]") or text
        for match in _TIMESTAMP.finditer(line):
            start = parse_time(match["start"])
            end = parse_time(match["end"]) if match["end"] else None
            if end is not None and end < start:
                start, end = end, start
            found.append((start, end, text, match.group().strip()))
    found.sort(key=lambda item: item[0])
    cues = []
    for position, (start, end, text, label) in enumerate(found):
        if duration is not None and start >= duration:
            continue
        if end is None:
            later = [item[0] for item in found[position + 1:] if item[0] > start]
            end = min([start + DEFAULT_CUE_SECONDS] + later[:1])
        if duration is not None:
            end = min(end, duration)
        cues.append(Cue(start=start, end=max(end, start), text=text, label=label))
    return cues


def subtitles(cues: list[Cue]) -> list[dict]:
    """Cues in the form `gr.Video(subtitles=...)` takes."""
    return [{"text": cue.text, "timestamp": [cue.start, cue.end]} for cue in cues]
