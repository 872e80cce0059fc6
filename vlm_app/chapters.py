"""Hour-long videos as chapters: the video split into consecutive segments, each described by its own request
through `vlm_app.service`, merged into chapters that cover it from 0 to its duration, and a summary.

    record = describe_chapters(adapter, one_turn(DEFAULT_PROMPT, "talk.mp4"))  # record["chapters"], ["summary"]

Segments. A segment is [start, end) of the video; neighbours meet without gaps. `overlap` seconds widen each
segment's sampled window past its end (never past the video's), so neighbours share that much video; its chapter
keeps [start, end). The default length (`segment_seconds`) is what one request of the family shows at its own rate,
max frames / fps: Qwen2.5-VL 768 / 2 = 384 s, SmolVLM2 64 / 1 = 64 s, DeepSeek-VL2 about 8 / 1 = 8 s; then kept
within 60..240 s: shorter would give a chapter every few seconds (DeepSeek-VL2 spreads its 8 frames over a minute
instead), longer only a dozen chapters an hour and requests of tens of thousands of tokens (Qwen2.5-VL takes 480
frames of 4 minutes). The video is cut at multiples of the length; a last piece shorter than half of one joins the
segment before it.

Times. Each segment's prompt names its absolute range ("This part of the video runs from 00:12:00 to 00:16:00 of
01:02:10."), and the frames keep their absolute times: SmolVLM2's "Frame from MM:SS" and DeepSeek-VL2's "Frame at"
labels are times in the whole video. Qwen2.5-VL's mRoPE counts time from the first frame of the video it is given
(the model takes no offset), so there the prompt alone carries the segment's place in the video.

Decoding: one probe and one decode pass for the whole video (`media.video.load_video_segments`), run one segment
ahead of the model in a thread: while the model describes a segment, the next one is decoded, so the model's time
hides behind the decoder's and at most two segments' frames are in memory; a request only ever holds its own.

Summary: one more request, text only, over the chapter texts. When they do not fit the model's context next to
the answer budget, each is cut to an equal share of the room; when a share would fall under `MIN_PART_TOKENS`,
groups of chapters are summarised first and the summary is made from those.
"""

from __future__ import annotations

import bisect
import json
import math
import queue
import sys
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from vlm_app.errors import LimitError, OptionsError, VlmAppError
from vlm_app.media.limits import DEFAULT_LIMITS
from vlm_app.media.options import is_number, without_policy
from vlm_app.messages import conversation, media_items
from vlm_app.memory import MemoryLimit
from vlm_app.service import (DEFAULT_MAX_NEW_TOKENS, Request, build_record, execute, is_image, memory_fit,
                             model_memory)
from vlm_app.subtitles import Cue, clock, to_srt, to_vtt

DEFAULT_PROMPT = "Describe what happens in this part of the video."
MIN_SEGMENT_SECONDS, MAX_SEGMENT_SECONDS = 60.0, 240.0
SEGMENT_PROMPT = "This part of the video runs from {start} to {end} of {duration}. {prompt}"
SUMMARY_PROMPT = ("Below are descriptions of the consecutive parts of a video that lasts {duration}, each after its "
                  "time range. Summarize the whole video in a few sentences.\n\n{parts}")
MIN_PART_TOKENS = 16  # of text per chapter in a summary request, its time range aside
TEMPLATE_TOKENS = 64  # room left for the chat template around the summary prompt
SEGMENT_FIELDS = ("answer", "error", "prompt", "frames_indices", "timestamps", "sample_fps", "num_visual_tokens",
                  "num_tokens", "timings", "finish_reason", "cancelled", "memory_estimate_bytes", "memory_estimate",
                  "max_memory_bytes", "notes")
EXPORTS = (".json", ".srt", ".vtt")
CANCELLED = "cancelled before this segment was described"
EPSILON = 1e-6  # seconds: a frame at a window's bound is in it (as load_video counts it)


@dataclass(frozen=True)
class Segment:
    """A chapter [start, end) and the window sampled for it (the chapter and its overlap), seconds."""

    start: float
    end: float
    video_start: float
    video_end: float


def segment_seconds(adapter, options: dict) -> float:
    """The default segment length for `adapter` when its videos get the load_video `options` (those of
    `Adapter.video_options`): the family's frames per request at its rate, within 60..240 s (see the module's
    docstring); for a model that hears the soundtrack, short enough that every segment's sound fits what it hears
    at once (a short last piece joins the segment before it: up to 1.5 segments). A memory limit lowers each
    segment's frames or pixels within that length (`_Plan`)."""
    policy = adapter.sampling_policy(options)
    fps = options.get("fps") or policy.fps
    frames = options.get("nframes") or options.get("max_frames") or policy.max_frames
    seconds = min(max(frames / fps, MIN_SEGMENT_SECONDS), MAX_SEGMENT_SECONDS)
    if options.get("audio", "off") != "off" and options.get("max_audio_seconds"):
        seconds = min(seconds, options["max_audio_seconds"] / 1.5)
    return seconds


def default_segment_seconds(adapter, prompt: str, sampling: dict, generation: dict, system: str | None = None) -> float:
    """`segment_seconds` for the options a segment's request would have (those of a zero segment)."""
    sizing = segment_messages(prompt, Segment(0, 0, 0, 0), 0, "", system)
    return segment_seconds(adapter, adapter.video_options(sizing, sampling,
                                                          max_new_tokens=generation.get("max_new_tokens")))


def split_video(duration: float, seconds: float, overlap: float = 0.0) -> list[Segment]:
    """Consecutive segments of `seconds` covering [0, duration) (a short last piece joins the one before), each
    sampled `overlap` seconds past its end."""
    if not seconds > 0 or overlap < 0:
        raise OptionsError(f"the segment length must be positive and the overlap >= 0, got {seconds} and {overlap}")
    count = max(1, math.floor(duration / seconds + 0.5))  # a last piece under half a segment joins the one before
    bounds = [index * seconds for index in range(count)] + [duration]
    return [Segment(start, end, start, min(end + overlap, duration)) for start, end in zip(bounds, bounds[1:])]


def on_screen(segment: Segment, times: list[float], notes: dict) -> Segment:
    """`segment`, its window widened when fewer than two frames fall in it (a timelapse, a screencast that writes a
    frame at each change): from the frame on screen at its start to the next frame, what a viewer sees meanwhile.
    `times`: every frame's time as a range counts it (`VideoMetadata.range_times`); `notes` gets the segment's note."""
    first = bisect.bisect_left(times, segment.video_start - EPSILON)
    if bisect.bisect_right(times, segment.video_end + EPSILON) - first >= 2 or len(times) < 2:
        return segment
    showing = min(max(bisect.bisect_right(times, segment.video_start + EPSILON) - 1, 0), len(times) - 2)
    widened = replace(segment, video_start=min(segment.video_start, times[showing]),
                      video_end=max(segment.video_end, times[showing + 1]))
    notes[widened] = [f"fewer than two frames fall in {clock(segment.video_start)}-{clock(segment.video_end)} (the "
                      f"video's frames are further apart): sampled from {clock(widened.video_start)} to "
                      f"{clock(widened.video_end)}, the frame on screen at its start and the next"]
    return widened


def segment_messages(prompt: str, segment: Segment, duration: float, video, system: str | None = None) -> list[dict]:
    """The request of one segment: the system prompt if any, its video and the prompt naming its absolute range.
    The clocks are fixed-width, so every segment's prompt takes as many tokens (a zero segment sizes them all)."""
    text = SEGMENT_PROMPT.format(start=clock(segment.video_start), end=clock(segment.video_end),
                                 duration=clock(duration), prompt=prompt)
    return conversation(text, video=video, system=system)


def segment_key(source, segment: Segment, adapter, prompt: str, sampling: dict, generation: dict,
                system: str | None = None) -> str:
    """What makes a finished segment reusable by a resumed run: the video, the bounds, the model and every option
    (a system prompt only when there is one, so runs without one keep their keys)."""
    return json.dumps({"source": str(source), **asdict(segment), "model": adapter.info.model_id,
                       "revision": adapter.info.revision, "prompt": prompt, "sampling": sampling,
                       "generation": generation, **({"system": system} if system else {})}, sort_keys=True)


class _Cancel(threading.Event):
    """One segment's cancel flag (its run sets it when a stop string ends the answer or the stream closes), also up
    while the whole run's is: the run's flag is the caller's alone."""

    def __init__(self, run: threading.Event):
        super().__init__()
        self.run = run

    def is_set(self) -> bool:
        return super().is_set() or self.run.is_set()


class _DecodedAhead:
    """The segments of a decode pass, decoded in a thread one segment ahead of their consumer: the next segment is
    decoded while the model describes this one, and only once this one has been taken (so at most two are held).
    The decode's errors reach the consumer in order; leaving the block stops the decode after its segment."""

    def __init__(self, videos):
        self._videos = videos
        self._handoff: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._decode, name="vlm_app-chapters-decode", daemon=True)

    def __enter__(self) -> "_DecodedAhead":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        while self._thread.is_alive():  # release a decode waiting for its segment to be taken
            try:
                self._handoff.get(timeout=0.05)
                self._handoff.task_done()
            except queue.Empty:
                pass

    def __iter__(self) -> "_DecodedAhead":
        return self

    def __next__(self):
        video, error = self._handoff.get()  # (a method, not a generator: no frame of ours keeps a video alive)
        self._handoff.task_done()
        if error is not None:
            raise error
        if video is None:
            raise StopIteration
        return video

    def _decode(self) -> None:
        try:
            for video in self._videos:
                self._handoff.put((video, None))
                del video
                self._handoff.join()
                if self._stop.is_set():
                    return
            self._handoff.put((None, None))
        except BaseException as error:  # handed on to the consumer, which raises it
            self._handoff.put((None, error))
        finally:
            self._videos.close()


class _Plan:
    """The segments of one run, made once the probe knows the duration: the load_video options of those still to
    describe (`done` holds the finished ones of an earlier run, by `segment_key`), each fitted to the memory limit
    as its request would be (`notes` say what was widened or lowered)."""

    def __init__(self, adapter, source, prompt, system, sampling, generation, seconds, overlap, limits, memory, done,
                 on_plan):
        self.adapter, self.source, self.prompt, self.system = adapter, source, prompt, system
        self.sampling, self.generation, self.seconds, self.overlap = sampling, generation, seconds, overlap
        self.limits, self.memory, self.done, self.on_plan = limits, memory, done, on_plan
        self.duration, self.segments, self.todo, self.notes = None, [], [], {}
        self.model_memory = None  # the model's figures and the run's limit, once the video is probed
        self.ready = False  # every segment planned: the video was read and its segments fit the memory limit

    def key(self, segment: Segment) -> str:
        return segment_key(self.source, segment, self.adapter, self.prompt, self.sampling, self.generation,
                           self.system)

    def media(self, segment: Segment) -> dict:
        return {**self.sampling, "video_start": segment.video_start, "video_end": segment.video_end}

    def request(self, segment: Segment, video) -> Request:
        """The segment's request, under the limit resolved once for the run (the one its frames were fitted to)."""
        messages = segment_messages(self.prompt, segment, self.duration, video, self.system)
        return Request(messages, self.media(segment), self.generation, self.limits, str(self.source),
                       MemoryLimit(self.model_memory.limit, self.memory.fit))

    def __call__(self, metadata) -> list[dict]:
        self.duration = metadata.duration
        times = metadata.range_times()
        self.segments = [on_screen(segment, times, self.notes)
                         for segment in split_video(metadata.duration, self.seconds, self.overlap)]
        cap = (self.limits or DEFAULT_LIMITS).max_chapters_segments
        if len(self.segments) > cap:
            raise LimitError(f"{metadata.source} in {self.seconds:g} s segments makes {len(self.segments)} requests, "
                             f"over the limit of {cap}; use longer segments (at least "
                             f"{math.ceil(metadata.duration / cap)} s) or raise Limits.max_chapters_segments")
        self.todo = [segment for segment in self.segments if self.key(segment) not in self.done]
        self.model_memory = model_memory(self.adapter, self.memory.max_memory)
        options = [self._options(segment, metadata) for segment in self.todo]
        self.ready = True
        self.on_plan(len(self.segments), len(self.segments) - len(self.todo))
        return options

    def _options(self, segment: Segment, metadata) -> dict:
        """What the segment's request would sample (`Adapter.video_options`), lowered to its memory limit."""
        request = self.request(segment, str(self.source))
        options = self.adapter.video_options(request.messages, request.media, max_new_tokens=request.max_new_tokens)
        fit = memory_fit(self.adapter, request, self.model_memory)
        if fit is None:
            return without_policy(options)
        fitted = fit.fit_video(metadata, options)
        self.notes[segment] = self.notes.get(segment, []) + fit.notes
        return without_policy(fitted)


@dataclass(frozen=True)
class ChapterOptions:
    """How a chapters run splits its video: `seconds` per segment (None: `segment_seconds`), `overlap` seconds each
    segment's window reaches into the next."""

    seconds: float | None = None
    overlap: float = 0.0


def describe_chapters(adapter, request: Request, options: ChapterOptions = ChapterOptions(), *,
                      done: dict[str, dict] | None = None, on_segment: Callable[[dict], None] | None = None,
                      progress: bool = False, cancel: threading.Event | None = None,
                      on_plan: Callable[[float, list[Segment]], None] | None = None,
                      raise_unreadable: bool = False) -> dict:
    """The chapters record of the one video of `request`: the usual record fields (`answer` is the summary) plus
    `duration`, `chapters` ([{start, end, text}] in order, from 0 to the duration without gaps), `summary`,
    `segments` (each segment's bounds, prompt, frames, timestamps, tokens, timings, error, and `media_s`: the seconds
    the shared decode pass spent on it, the probe in the first) and `chapter_options`.

    Each segment is the request's question (its prompt, system prompt, sampling `media`, `generation` and `limits`)
    about one time range; its `memory` limit holds for every segment (once the probe has planned the
    segments, each one's pixels, then frames, are lowered to the limit as its own request would lower them, and its
    notes say so; the segment decoded ahead is not in the estimate). `done`: finished segment records of an earlier
    run by `segment_key` (not described again); `on_segment`: called with each newly finished segment record (a
    resumable run writes it down at once); `progress`: a bar of segments on stderr; `cancel`: once set, the segment
    being described stops within a token and no later segment is decoded (they and the summary are left out; the
    record says `cancelled`); `on_plan`: called (from the decode thread) with the duration and the segments once the
    probe has read the video, before any segment is described; `raise_unreadable`: a video that cannot be read at
    all (not fetched or opened, not probed, over a limit, not even its least sample within the memory limit) raises
    its error instead of becoming the record's (a front door answering one request). A failed segment leaves its
    chapter's text empty and sets the record's `error`; the rest goes on."""
    items = media_items(request.messages)
    source = items[0][items[0]["type"]] if len(items) == 1 else None
    prompt, system = request.prompt() or DEFAULT_PROMPT, request.system()
    sampling, generation, limits = request.media, request.generation, request.limits
    seconds, overlap = options.seconds, options.overlap
    from tqdm import tqdm

    from vlm_app.media.video import load_video_segments

    sampling, generation, done = dict(sampling), dict(generation), done or {}
    cancel = cancel or threading.Event()
    _check_request(source, sampling, seconds, overlap)
    if seconds is None:
        seconds = default_segment_seconds(adapter, prompt, sampling, generation, system)
    bar = None

    def planned(total: int, reused: int) -> None:  # the bar starts once the probe has told how many segments
        nonlocal bar
        bar = tqdm(total=total, initial=reused, desc=str(source).rsplit("/", 1)[-1], unit="segment",
                   disable=not progress, file=sys.stderr, leave=False)
        if on_plan is not None:
            on_plan(plan.duration, plan.segments)

    plan = _Plan(adapter, source, prompt, system, sampling, generation, seconds, overlap, limits, request.memory, done,
                 planned)
    described, media_error = {}, None
    try:
        with _DecodedAhead(load_video_segments(source, adapter.sampling_policy(sampling), plan, limits=limits)) as videos:
            for video in videos:
                segment = plan.todo[len(described)]  # (no enumerate: its reused tuple would keep the last video alive)
                described[segment] = _describe_segment(adapter, plan, segment, video, cancel)
                del video  # before the next is taken: no segment's frames outlive its turn
                if on_segment is not None:
                    on_segment(described[segment])
                bar.update()
                if cancel.is_set():
                    break
    except VlmAppError as error:  # the media failed: this segment and every later one
        if raise_unreadable and not plan.ready:
            raise
        media_error = error
    finally:
        if bar is not None:
            bar.close()
    missing = str(media_error) if media_error is not None else CANCELLED
    segments = [done.get(plan.key(segment)) or described.get(segment)
                or _segment_record({"error": missing}, segment, plan.key(segment))
                for segment in plan.segments]
    return _chapters_record(adapter, source, prompt, sampling, generation, limits, plan, segments, media_error,
                            seconds, overlap, cancel.is_set())


def _describe_segment(adapter, plan: _Plan, segment: Segment, video, cancel: threading.Event) -> dict:
    record = execute(adapter, plan.request(segment, video), cancel=_Cancel(cancel))
    notes = plan.notes.get(segment, []) + (record["notes"] or [])
    return {**_segment_record(record, segment, plan.key(segment)), "notes": notes, "media_s": video.decode_seconds}


def _check_request(source, sampling: dict, seconds: float | None, overlap: float) -> None:
    if source is None or is_image(source) or isinstance(source, (list, tuple)):
        raise OptionsError("chapters split a video in time; give a video file or URL, not an image or frame list")
    given = [name for name in ("video_start", "video_end") if sampling.get(name) is not None]
    if given:
        raise OptionsError(f"chapters cover the whole video, segment by segment; drop {', '.join(given)} "
                           "(--start/--end), or cut the video first")
    if seconds is not None and not (is_number(seconds) and seconds >= 1):
        raise OptionsError(f"the segment length must be at least 1 second, got {seconds!r}")
    if not (is_number(overlap) and overlap >= 0):
        raise OptionsError(f"the overlap must be a number of seconds >= 0, got {overlap!r}")


def _segment_record(record: dict, segment: Segment, key: str) -> dict:
    heard = next((item["audio"] for item in record.get("media") or [] if "audio" in item), None)
    return {**asdict(segment), "key": key, **{name: record.get(name) for name in SEGMENT_FIELDS}, "audio": heard}


def _chapters_record(adapter, source, prompt, sampling, generation, limits, plan, segments, media_error, seconds,
                     overlap, cancelled) -> dict:
    chapters = [{"start": item["start"], "end": item["end"], "text": (item["answer"] or "").strip()}
                for item in segments]
    parts = [(chapter["start"], chapter["end"], chapter["text"]) for chapter, item in zip(chapters, segments)
             if item["error"] is None]
    summary, summary_records, summary_error = None, [], None
    if parts and not cancelled:
        try:
            summary = summarize(adapter, parts, plan.duration, generation, summary_records, plan.system)
        except VlmAppError as error:
            summary_error = error
    summary_error = summary_error or next((record["error"] for record in summary_records if record["error"]), None)
    request = Request(conversation(prompt, video=str(source), system=plan.system), sampling, generation, limits,
                      str(source))
    record = build_record(adapter, request, error=None if cancelled else _error(segments, media_error, summary_error))
    shown = sorted({(index, time) for item in segments for index, time in zip(item["frames_indices"] or [],
                                                                               item["timestamps"] or [])})
    requests = segments + summary_records
    counted = [item for item in requests if item["num_tokens"]]
    widest = max(requests, key=lambda item: item.get("memory_estimate_bytes") or 0, default={})  # the run's peak
    record.update(
        answer=summary, summary=summary, chapters=chapters, segments=segments, duration=plan.duration,
        frames_indices=[index for index, _ in shown], timestamps=[time for _, time in shown],
        num_visual_tokens=sum(item["num_visual_tokens"] for item in counted),
        num_tokens={name: sum(item["num_tokens"][name] for item in counted) for name in ("text", "visual", "total")},
        timings=_total_timings([item["timings"] for item in requests if item["timings"]]),
        memory_estimate_bytes=widest.get("memory_estimate_bytes"), memory_estimate=widest.get("memory_estimate"),
        max_memory_bytes=next((item["max_memory_bytes"] for item in requests if item.get("max_memory_bytes")), None),
        notes=list(dict.fromkeys(note for item in requests for note in item.get("notes") or [])),
        finish_reason=summary_records[-1]["finish_reason"] if summary_records else None,
        cancelled=cancelled, chapter_options={"segment_seconds": seconds, "overlap": overlap})
    return record


def _error(segments: list[dict], media_error, summary_error) -> str | None:
    failed = [item for item in segments if item["error"] is not None]
    if not failed and media_error is not None:  # the probe failed: there are no segments
        return str(media_error)
    if failed:
        first = failed[0]
        return (f"{len(failed)} of {len(segments)} segments failed; the first, {clock(first['start'])} to "
                f"{clock(first['end'])}: {first['error']}")
    return f"the summary failed: {summary_error}" if summary_error is not None else None


def _total_timings(timings: list[dict]) -> dict | None:
    """The run's costs: sums over its requests, the highest peak memory; tokens/s over all decoding."""
    if not timings:
        return None
    total = {name: sum(item[name] for item in timings) for name in ("preprocess_s", "prefill_s", "decode_s",
                                                                    "new_tokens")}
    steps = sum(max(item["new_tokens"] - 1, 0) for item in timings)
    return {**total, "tokens_per_s": steps / total["decode_s"] if total["decode_s"] > 0 else 0.0,
            "peak_memory_bytes": max(item["peak_memory_bytes"] for item in timings)}


def summarize(adapter, parts: list[tuple[float, float, str]], duration: float, generation: dict,
              records: list[dict], system: str | None = None) -> str:
    """A summary of (start, end, text) parts by text-only requests (their records appended to `records`), under the
    system prompt if any, fitted to the model's context as the module's docstring says."""
    tokenizer = adapter.tokenizer

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    answer_tokens = int(generation.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
    room = (adapter.context_tokens - answer_tokens - TEMPLATE_TOKENS - count(system or "")
            - count(SUMMARY_PROMPT.format(duration=clock(duration), parts="")))
    label_tokens = count(_part(0, 0, "")) + 1
    if room < 2 * (label_tokens + MIN_PART_TOKENS):
        raise LimitError(f"no summary fits the {adapter.context_tokens}-token context next to a {answer_tokens}-token "
                         "answer; lower max_new_tokens")
    share = room // len(parts) - label_tokens
    if share >= MIN_PART_TOKENS or len(parts) == 1:
        lines = [_part(start, end, _cut(tokenizer, text, share)) for start, end, text in parts]
        prompt = SUMMARY_PROMPT.format(duration=clock(duration), parts="\n".join(lines))
        records.append(execute(adapter, Request(conversation(prompt, system=system), generation=generation,
                                                source="summary")))
        return (records[-1]["answer"] or "").strip()
    size = max(room // (label_tokens + MIN_PART_TOKENS), 2)
    groups = [parts[first:first + size] for first in range(0, len(parts), size)]
    summaries = [(group[0][0], group[-1][1], summarize(adapter, group, duration, generation, records, system))
                 for group in groups]
    return summarize(adapter, summaries, duration, generation, records, system)


def _part(start: float, end: float, text: str) -> str:
    return f"[{clock(start)} - {clock(end)}] {text}"


def _cut(tokenizer, text: str, tokens: int) -> str:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return text if len(ids) <= tokens else tokenizer.decode(ids[:max(tokens, 1)]).rstrip() + "…"


def chapter_cues(record: dict) -> list[Cue]:
    """The chapters as subtitle cues."""
    return [Cue(chapter["start"], chapter["end"], _shown(chapter["text"], segment["error"]), clock(chapter["start"]))
            for chapter, segment in zip(record["chapters"], record["segments"])]


def segment_line(segment: dict) -> str:
    """A finished segment as a line for a terminal: its chapter's range and text."""
    return _part(segment["start"], segment["end"], _shown((segment["answer"] or "").strip(), segment["error"]))


def _shown(text: str, error: str | None) -> str:
    """A chapter's text, or what stands for it when the segment failed or the model said nothing."""
    return text or (f"(not described: {error})" if error else "(no description)")


def check_exports(paths: list[str]) -> None:
    """Fail before any work on an export path whose suffix says no known format."""
    unknown = [path for path in paths if not str(path).lower().endswith(EXPORTS)]
    if unknown:
        raise OptionsError(f"cannot tell the format of {unknown[0]}; chapter exports end in {', '.join(EXPORTS)}")
    folder = next((path for path in paths if Path(path).is_dir()), None)
    if folder is not None:
        raise OptionsError(f"the chapters export {folder} is a folder; give a file name such as "
                           f"{Path(folder, 'chapters.srt')}")


def write_chapters(record: dict, path) -> None:
    """The chapters to `path`: .json ({source, duration, summary, chapters}), .srt or .vtt, by its suffix."""
    path = Path(path)
    check_exports([str(path)])
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps({name: record[name] for name in ("source", "model", "duration", "summary", "chapters")},
                          indent=2, ensure_ascii=False)
    else:
        text = (to_srt if suffix == ".srt" else to_vtt)(chapter_cues(record))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as error:  # after the run: its record is already in --out, when there is one
        raise OptionsError(f"cannot write the chapters to {path}: {error.strerror}") from None
