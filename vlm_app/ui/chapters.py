"""Chapters in the web app: the conversation's last video described part by part (`vlm_app.chapters`), each
chapter shown as it is finished, then the summary; the timeline lists the chapters, seeks to them and exports them.

The run goes through the app's one GPU queue, its upload policy (the chapters duration cap,
`--max-chapters-duration`), its memory limit and its Stop button (the segment being described stops within a token,
later ones are left out). Segment length and overlap come from the client, so they are bounded here.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from pathlib import Path
from typing import Iterator

import gradio as gr

from vlm_app.chapters import (DEFAULT_PROMPT, EXPORTS, MIN_SEGMENT_SECONDS, ChapterOptions, chapter_cues,
                              describe_chapters, segment_line, split_video, write_chapters)
from vlm_app.errors import OptionsError, VlmAppError
from vlm_app.media.limits import DEFAULT_LIMITS
from vlm_app.messages import conversation
from vlm_app.service import Request, stats as service_stats
from vlm_app.subtitles import clock
from vlm_app.ui import timeline
from vlm_app.ui.answer import (Settings, history_text, last_user, media_kind, options_object, settings_from,
                               settings_from_dict, stats_markdown)
from vlm_app.ui.chat import ChatHandlers, last_video, notice, timeline_outputs

SHORTEST_SEGMENT_S, LONGEST_SEGMENT_S = 1.0, 3600.0
log = logging.getLogger(__name__)


def chapter_bounds(seconds, overlap, duration: float,
                   max_segments: int = DEFAULT_LIMITS.max_chapters_segments) -> tuple[float | None, float]:
    """The client's segment length (blank: the model's own) and overlap as seconds, within this app's bounds for a
    video of `duration` seconds (at most `max_segments`, checked before any model loads); OptionsError otherwise."""
    seconds, overlap = _seconds("segment length", seconds), _seconds("overlap", overlap) or 0.0
    if seconds is not None and not SHORTEST_SEGMENT_S <= seconds <= LONGEST_SEGMENT_S:
        raise OptionsError(f"the segment length must be {SHORTEST_SEGMENT_S:g} to {LONGEST_SEGMENT_S:g} s, "
                           f"got {seconds:g}")
    widest = seconds if seconds is not None else MIN_SEGMENT_SECONDS  # the model's own length is at least that
    if not 0 <= overlap <= widest:
        raise OptionsError(f"the overlap must be 0 to {widest:g} s (the segment length), got {overlap:g}")
    if seconds is not None and (count := len(split_video(duration, seconds))) > max_segments:
        raise OptionsError(f"a segment length of {seconds:g} s makes {count} segments of this {duration:.0f} s video, "
                           f"over this app's {max_segments}; choose at least {math.ceil(duration / max_segments)} s")
    return seconds, overlap


def _seconds(name: str, value) -> float | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise OptionsError(f"the {name} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(number):
        raise OptionsError(f"the {name} must be a finite number of seconds, got {value!r}")
    return number


def chapter_stream(backend, video: str | None, model: str, prompt: str, settings: Settings, seconds, overlap,
                   cancel: threading.Event) -> Iterator[tuple[str, dict | None, str | None]]:
    """Describe `video` in chapters with `model`: yields (text so far, None, None) as the run starts and as each
    segment finishes, then (final text, record, None); or ("", None, message) when it could not run. The run
    works in a thread of its own (its segments arrive through `on_segment`); when the caller stops listening,
    it is cancelled and waited for, so the GPU queue never has two jobs."""
    try:
        if video is None:
            raise OptionsError("attach a video first: chapters describe the conversation's last video")
        duration = backend.policy.check_file(video, "video", chapters=True)
        seconds, overlap = chapter_bounds(seconds, overlap, duration, backend.policy.limits.max_chapters_segments)
    except VlmAppError as error:
        yield "", None, str(error)
        return
    updates: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            messages = conversation(prompt, video=video, system=settings.system_prompt.strip() or None)
            request = Request(messages, settings.media_options("video"), settings.generate_options(),
                              backend.policy.limits, memory=backend.memory)
            record = describe_chapters(backend.adapter(model), request, ChapterOptions(seconds, overlap),
                                       on_segment=lambda segment: updates.put(("segment", segment)), cancel=cancel)
            updates.put(("record", record))
        except VlmAppError as error:
            updates.put(("error", str(error)))
        except Exception as error:  # a bug must not take the app down; show it and keep serving
            log.exception("chapters from %s failed", model)
            updates.put(("error", f"internal error in {model} ({type(error).__name__}: {error}); "
                                  "the app keeps running"))

    name, lines = Path(video).name, []
    worker = threading.Thread(target=work, name="chapters", daemon=True)
    worker.start()
    try:
        yield progress_text(name, lines, "loading the model, describing the first part…"), None, None
        while True:
            kind, value = updates.get()
            if kind == "segment":
                lines.append(segment_line(value))
                done = (f"described up to {clock(value['end'])} of {clock(duration)}" if value["end"] < duration
                        else "every part described; writing the summary…")
                yield progress_text(name, lines, done), None, None
            elif kind == "error":
                yield "", None, value
                return
            else:
                yield final_text(name, lines, value), value, None
                return
    finally:
        if worker.is_alive():
            cancel.set()
            worker.join()


def progress_text(name: str, lines: list[str], state: str) -> str:
    return "\n\n".join([f"**Chapters of {name}**", *lines, f"_{state}_"])


def final_text(name: str, lines: list[str], record: dict) -> str:
    """The described chapters, then the summary (or how far a stopped run got)."""
    total = len(record["segments"])
    if record["cancelled"]:
        return progress_text(name, lines, f"stopped after {len(lines)} of {total} segments")
    ending = [f"**Summary:** {record['summary']}"] if record["summary"] else []
    return "\n\n".join([f"**Chapters of {name}** ({total} segments)", *lines, *ending])


def chapter_stats(record: dict, model: str) -> dict:
    """`service.stats` of a chapters record, under the name the model was picked by."""
    return {**service_stats(record), "model": model}


def chapter_files(record: dict, folder: Path) -> list[str]:
    """The chapters as chapters.json, chapters.srt and chapters.vtt in `folder` (none without chapters)."""
    if not record["chapters"]:
        return []
    paths = [folder / f"chapters{suffix}" for suffix in EXPORTS]
    for path in paths:
        write_chapters(record, path)
    return [str(path) for path in paths]


def chapter_details(record: dict, model: str) -> dict:
    """What `/chapters` returns at the end: the chapters, the summary, the stats and the timeline's subtitles."""
    return {"chapters": record["chapters"], "summary": record["summary"], "duration": record["duration"],
            "cancelled": record["cancelled"], "error": record["error"], "stats": chapter_stats(record, model),
            "timeline": timeline.subtitles(chapter_cues(record))}


class ChapterHandlers:
    """Bound to one Backend; every method is an event handler (Gradio injects `request`)."""

    def __init__(self, backend):
        self.backend = backend
        self.chat = ChatHandlers(backend)

    def add_turn(self, message: dict | None, urls: str, history: list[dict], request: gr.Request):
        """Like a chat turn, its text the question asked of every part (the default one when the box is empty)."""
        message = message or {}
        text = (message.get("text") or "").strip() or DEFAULT_PROMPT
        return self.chat.add_turn({**message, "text": text}, urls, history, request)

    def run(self, request: gr.Request, history: list[dict], model: str, show_subtitles: bool, seconds, overlap,
            *settings_values):
        """Describe the conversation's last video in chapters, streaming them into the chat; then the stats and
        the timeline (the chapters to seek to, as subtitles, and as SRT/VTT/JSON files)."""
        skip = [gr.skip()] * ChatHandlers.EXTRA_OUTPUTS
        if not history or history[-1]["role"] != "user":
            yield history, *skip
            return
        shown = list(history) + [{"role": "assistant", "content": ""}]
        try:
            settings = settings_from(settings_values)
        except VlmAppError as error:
            shown[-1] = notice(str(error))
            yield shown, *skip
            return
        video, prompt = last_video(history), history_text(last_user(history)) or DEFAULT_PROMPT
        cancel = self.backend.begin(request.session_hash)
        for text, record, error in chapter_stream(self.backend, video, model, prompt, settings, seconds, overlap,
                                                  cancel):
            shown[-1] = notice(error) if error else {"role": "assistant", "content": text}
            if record is None:
                yield shown, *skip
        if error:
            return
        if record["error"]:
            shown.append(notice(record["error"]))
        folder = self.backend.session_dir(request.session_hash)
        yield (shown, [], stats_markdown(chapter_stats(record, model)),
               *timeline_outputs(chapter_cues(record), video, show_subtitles, chapter_files(record, folder)))

    def api_chapters(self, message: dict, model: str, options: dict | None, request: gr.Request):
        """`/chapters` for scripts: the one video of `message` in chapters, its text the question asked of every
        part; `options` as {segment_seconds, overlap, setting name: value} (see `Settings`). Streams (text so far,
        details); details hold the chapters, summary, duration, stats and timeline once done, or {"error": message}."""
        message = message or {}
        files = message.get("files") or []
        try:
            options = options_object(options)
            seconds, overlap = options.pop("segment_seconds", None), options.pop("overlap", None)
            settings = settings_from_dict(options)
            if len(files) != 1 or media_kind(files[0]) != "video":
                raise OptionsError("chapters take exactly one video file")
        except VlmAppError as error:
            yield str(error), {"error": str(error)}
            return
        prompt = (message.get("text") or "").strip() or DEFAULT_PROMPT
        cancel = self.backend.begin(request.session_hash)
        for text, record, error in chapter_stream(self.backend, files[0], model, prompt, settings, seconds, overlap,
                                                  cancel):
            if error:
                yield error, {"error": error}
            else:
                yield text, {} if record is None else chapter_details(record, model)
