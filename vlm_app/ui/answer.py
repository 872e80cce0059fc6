"""One model answering one conversation: chat history → a `vlm_app.service` request → streamed text, stats,
frames seen.

Talks only to the request layer (`service.Run`) and what it prepared; nothing here imports Gradio, so the Chat
tab, the Compare tab and the API endpoints all share it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from typing import Any, Iterator

from PIL import Image

from vlm_app.errors import OptionsError, VlmAppError
from vlm_app.service import Request, Run, is_image
from vlm_app.service import stats as service_stats

ERROR_TITLE = "Error"  # assistant messages with this metadata title are notices, not model turns
THUMBNAIL_SIDE = 320
log = logging.getLogger(__name__)


@dataclass
class Settings:
    """What the sidebar controls set. Unset (None) sampling values leave the model's own policy in charge."""

    fps: float | None = None
    max_frames: int | None = None
    max_pixels: int | None = None
    video_start: float | None = None
    video_end: float | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    system_prompt: str = ""
    audio: str = "auto"  # a video's soundtrack, for the models that hear: auto (when it has one), on or off

    MEDIA_KEYS = ("fps", "max_frames", "max_pixels", "video_start", "video_end", "audio")
    AUDIO_CHOICES = ("auto", "on", "off")

    def media_options(self, kind: str) -> dict[str, Any]:
        keys = self.MEDIA_KEYS if kind == "video" else ("max_pixels",)
        options = {key: getattr(self, key) for key in keys if getattr(self, key) not in (None, 0, "")}
        if options.get("audio") == "auto":  # the default of the models that hear; the others take no audio option
            del options["audio"]
        return options

    def generate_options(self) -> dict[str, Any]:
        return {"max_new_tokens": int(self.max_new_tokens), "temperature": float(self.temperature),
                "top_p": float(self.top_p), "seed": None if self.seed in (None, "") else int(self.seed)}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


SETTING_NAMES = tuple(Settings.__dataclass_fields__)
NUMBER_SETTINGS = {"fps": float, "max_frames": int, "max_pixels": int, "video_start": float, "video_end": float,
                   "max_new_tokens": int, "temperature": float, "top_p": float, "seed": int}


def media_kind(path: str) -> str:
    """'video' or 'image', from the file name (uploads keep their suffix), as every front door tells them apart."""
    return "image" if is_image(path) else "video"


def history_files(message: dict) -> list[str]:
    return [item["file"]["path"] for item in message.get("content", []) if item.get("type") == "file"]


def history_text(message: dict) -> str:
    return "\n".join(item["text"] for item in message.get("content", []) if item.get("type") == "text").strip()


def is_notice(message: dict) -> bool:
    return (message.get("metadata") or {}).get("title") == ERROR_TITLE


def to_messages(history: list[dict], settings: Settings) -> list[dict]:
    """Gradio chat history (normalized messages with text and file blocks) → Qwen-style chat messages.

    Media stay in the turn that brought them, so later turns still see them. Error notices are skipped, and
    consecutive user turns (left by a failed or stopped turn) merge into one.
    """
    messages: list[dict] = []
    if settings.system_prompt.strip():
        messages.append({"role": "system", "content": [{"type": "text", "text": settings.system_prompt.strip()}]})
    for message in history:
        if is_notice(message) or message["role"] not in ("user", "assistant"):
            continue
        content = []
        if message["role"] == "user":
            for path in history_files(message):
                kind = media_kind(path)
                content.append({"type": kind, kind: path, **settings.media_options(kind)})
        text = history_text(message)
        if text:
            content.append({"type": "text", "text": text})
        if not content:
            continue
        if messages and messages[-1]["role"] == message["role"] == "user":
            messages[-1]["content"] += content
        else:
            messages.append({"role": message["role"], "content": content})
    return messages


class AnswerRun:
    """Iterate to stream the answer text so far; afterwards `stats()` and `seen()` describe the run.
    A thin view of one `vlm_app.service.Run` (the one request layer).

    Setting `cancel` stops generation inside the model within one token (the adapter's stopping criterion).
    """

    def __init__(self, model_name: str, run: Run):
        self.model_name = model_name
        self.run = run
        self.text = ""

    def __iter__(self) -> Iterator[str]:
        for piece in self.run:
            self.text += piece
            yield self.text
        yield self.text

    @property
    def prepared(self):
        return self.run.prepared

    @property
    def stopped(self) -> bool:
        return self.run.record["cancelled"]

    def duration(self) -> float | None:
        """Length in seconds of the last video the model was shown (the one a timeline refers to)."""
        videos = [item for item in (self.prepared.media if self.prepared else []) if hasattr(item, "metadata")]
        return videos[-1].metadata.duration if videos else None

    def stats(self) -> dict[str, Any]:
        """What the model was shown and what the answer cost (`service.stats`), under the name it was picked by."""
        return {**service_stats(self.run.record), "model": self.model_name}

    def seen(self) -> list[tuple[Image.Image, str]]:
        """The frames and images the model was shown, as (thumbnail, caption) pairs for a gallery."""
        if self.prepared is None:
            return []
        tokens = tokens_per_frame(self.prepared.visual_map)
        shown = []
        for media_index, item in enumerate(self.prepared.media):
            timestamps = list(getattr(item, "timestamps", []) or [])
            for frame_index, frame in enumerate(frames_of(item)):
                when = f" · {timestamps[frame_index]:.2f} s" if frame_index < len(timestamps) else ""
                count = tokens.get((media_index, frame_index if timestamps else -1), 0)
                caption = f"#{media_index + 1} frame {frame_index}{when} · {count} tokens"
                shown.append((thumbnail(frame), caption))
        return shown


def frames_of(item) -> list:
    """The uint8 (C, H, W) frames of a sampled video, or the one image of a sampled image."""
    frames = getattr(item, "frames", None)
    if frames is None:
        image = getattr(item, "image", item)
        return [image]
    return list(frames)


def tokens_per_frame(visual_map) -> dict[tuple[int, int], int]:
    """Visual tokens per (media index, frame index); frame index is -1 for images."""
    counts: dict[tuple[int, int], int] = {}
    for media, frame in zip(visual_map.media_index.tolist(), visual_map.frame_index.tolist()):
        counts[(media, frame)] = counts.get((media, frame), 0) + 1
    return counts


def thumbnail(frame) -> Image.Image:
    image = frame if isinstance(frame, Image.Image) else Image.fromarray(frame.permute(1, 2, 0).cpu().numpy())
    image = image.convert("RGB")
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return image



def settings_from(values) -> Settings:
    """Settings from the control values, in `SETTING_NAMES` order (blank numbers mean unset)."""
    return settings_from_dict(dict(zip(SETTING_NAMES, values)))


def options_object(options) -> dict:
    """A copy of the API's `options`, which must be a {name: value} object (or nothing)."""
    if not isinstance(options, (dict, type(None))):
        raise OptionsError("options must be an object of {name: value}")
    return dict(options or {})


def settings_from_dict(options: dict | None) -> Settings:
    """Settings from a {name: value} dict (the API's `options`); unknown names are a user error."""
    raw = options_object(options)
    unknown = sorted(set(raw) - set(SETTING_NAMES))
    if unknown:
        raise OptionsError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(SETTING_NAMES)}")
    for key, kind in NUMBER_SETTINGS.items():
        if raw.get(key) not in (None, ""):
            try:
                raw[key] = kind(raw[key])
            except (TypeError, ValueError, OverflowError):
                raise OptionsError(f"option {key} must be a number, got {raw[key]!r}") from None
    raw["system_prompt"] = raw.get("system_prompt") or ""
    if not isinstance(raw["system_prompt"], str):
        raise OptionsError("option system_prompt must be text")
    raw["audio"] = raw.get("audio") or "auto"
    if raw["audio"] not in Settings.AUDIO_CHOICES:
        raise OptionsError(f"option audio must be one of {', '.join(Settings.AUDIO_CHOICES)}, got {raw['audio']!r}")
    return Settings(**raw)


def last_user(history: list[dict]) -> dict:
    return next((message for message in reversed(history) if message["role"] == "user"), {"content": []})


def ui_request(history: list[dict], settings: Settings, backend) -> Request:
    """The service request for a chat history: its files checked against the app's policy, read under its limits,
    under the app's memory limit."""
    policy = backend.policy
    for path in (path for message in history if message["role"] == "user" for path in history_files(message)):
        policy.check_file(path, media_kind(path))  # every turn's: the client sends the whole history
    return Request(to_messages(history, settings), generation=settings.generate_options(), limits=policy.limits,
                   memory=backend.memory)


def answer_stream(backend, history: list[dict], model: str, settings: Settings, cancel: threading.Event,
                  run: Run | None = None) -> Iterator[tuple[str, AnswerRun | None, str | None]]:
    """Answer the conversation with one model (or go on with `run`, one model of a comparison): yields (text so
    far, None, None) while streaming, then (final text, run, None); or ("", None, message) when the turn failed.
    Failures never escape: a user mistake comes back as its message, a bug as a short notice (with the
    traceback in the server log)."""
    try:
        if run is None:
            run = Run(lambda: backend.adapter(model), ui_request(history, settings, backend), cancel)
        run = AnswerRun(model, run)
        for text in run:
            yield text, None, None
    except VlmAppError as error:
        yield "", None, str(error)
        return
    except Exception as error:  # a bug must not take the app down; show it and keep serving
        log.exception("answer from %s failed", model)
        yield "", None, f"internal error in {model} ({type(error).__name__}: {error}); the app keeps running"
        return
    yield run.text, run, None


def stats_markdown(stats: dict[str, Any]) -> str:
    """The stats record as a compact two-column table, then its notes (what the memory fit and the media pipeline
    changed) as a list."""
    labels = {"lora": "LoRA adapter", "frames": "frames shown", "visual_tokens": "visual tokens",
              "text_tokens": "text tokens", "heard_s": "sound heard (s)", "preprocess_s": "preprocessing (s)", "prefill_s": "time to first token (s)",
              "tokens_per_s": "tokens/s", "new_tokens": "new tokens", "memory_estimate_bytes": "estimated peak (MiB)",
              "peak_memory_bytes": "peak memory (MiB)", "cancelled": "stopped"}
    shown = {**stats, **{key: round(stats[key] / 2**20, 1) for key in ("memory_estimate_bytes", "peak_memory_bytes")
                         if stats.get(key) is not None}}
    rows = [f"| {label} | {round(shown[key], 4) if isinstance(shown[key], float) else shown[key]} |"
            for key, label in labels.items() if shown.get(key) is not None]
    notes = [f"- {note}" for note in stats.get("notes") or []]
    return "\n".join(["| | |", "|---|---|", *rows, *([""] + notes if notes else [])]) if rows else ""
