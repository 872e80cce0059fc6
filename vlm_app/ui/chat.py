"""Chat tab handlers: add a turn (uploads and URLs), stream the answer, stop, regenerate, edit, undo; the
"what it saw" gallery, the stats, and the timeline (clickable timestamps, subtitles, SRT/VTT/JSON files).

The chatbot's value is the conversation: user turns hold their files and text, assistant turns the answers,
error notices carry `metadata.title == ERROR_TITLE` and are never sent back to a model.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import gradio as gr
from PIL import Image

from vlm_app.errors import VlmAppError
from vlm_app.grounding import draw_boxes, parse_grounding
from vlm_app.ui import timeline
from vlm_app.ui.answer import (ERROR_TITLE, answer_stream, history_files, last_user, media_kind, settings_from,
                               settings_from_dict, stats_markdown)


def notice(message: str) -> dict:
    return {"role": "assistant", "content": message, "metadata": {"title": ERROR_TITLE}}


def last_video(history: list[dict]) -> str | None:
    for message in reversed(history):
        videos = [path for path in history_files(message) if media_kind(path) == "video"]
        if message["role"] == "user" and videos:
            return videos[-1]
    return None


def drop_answer(history: list[dict]) -> list[dict]:
    """The history up to and including the last user turn."""
    while history and history[-1]["role"] != "user":
        history = history[:-1]
    return history


class ChatHandlers:
    """Bound to one Backend; every method is an event handler (Gradio injects `request`)."""

    # outputs of `respond`, after the chatbot: gallery, stats, player, cue list, cue state, download files
    EXTRA_OUTPUTS = 6

    def __init__(self, backend):
        self.backend = backend

    def add_turn(self, message: dict | None, urls: str, history: list[dict], request: gr.Request):
        """Put the user's text, uploads and fetched URLs into the conversation; clear the inputs."""
        message = message or {}
        files = list(message.get("files") or [])
        text = (message.get("text") or "").strip()
        history = list(history or [])
        try:
            folder = self.backend.session_dir(request.session_hash)
            files += [self.backend.policy.fetch(url, folder) for url in (urls or "").split() if url.strip()]
        except VlmAppError as error:
            history.append({"role": "user", "content": text or urls})
            return None, urls, history + [notice(str(error))]
        if not files and not text:
            raise gr.Error("Type a question, attach a video or image, or paste a URL first.")
        history.append({"role": "user", "content": [{"path": path} for path in files] + ([text] if text else [])})
        return None, "", history

    def respond(self, request: gr.Request, history: list[dict], model: str, show_subtitles: bool, *settings_values):
        """Stream the answer to the last user turn, then fill the gallery, stats and timeline."""
        skip = [gr.skip()] * self.EXTRA_OUTPUTS
        if not history or history[-1]["role"] != "user":
            yield history, *skip
            return
        settings = settings_from(settings_values)
        cancel = self.backend.begin(request.session_hash)
        shown = list(history) + [{"role": "assistant", "content": ""}]
        for text, run, error in answer_stream(self.backend, history, model, settings, cancel):
            shown[-1] = notice(error) if error else {"role": "assistant", "content": text}
            if run is None:
                yield shown, *skip
        if run is None:
            return
        stats = run.stats()
        folder = self.backend.session_dir(request.session_hash)
        boxed = grounded_image(run.text, history, folder)
        if boxed:
            shown.append({"role": "assistant", "content": {"path": boxed}})
        cues = timeline.find_cues(run.text, duration=run.duration())
        yield (shown, run.seen(), stats_markdown(stats),
               *timeline_outputs(cues, last_video(history), show_subtitles, answer_files(cues, folder)))

    def stop(self, request: gr.Request) -> None:
        """Stop this session's generation inside the model (the stream ends within one token)."""
        self.backend.stop(request.session_hash)

    @staticmethod
    def for_regenerate(history: list[dict]) -> list[dict]:
        return drop_answer(list(history or []))

    @staticmethod
    def for_edit(history: list[dict], edit: gr.EditData) -> list[dict]:
        """Replace the edited user turn's text, keep its files, and drop everything after it."""
        history = list(history[: edit.index + 1])
        edited = dict(history[-1])
        if edited["role"] != "user":
            return drop_answer(history)
        files = [item for item in edited["content"] if item.get("type") == "file"]
        edited["content"] = files + [{"type": "text", "text": str(edit.value)}]
        history[-1] = edited
        return history

    @staticmethod
    def for_undo(history: list[dict], undo: gr.UndoData) -> list[dict]:
        return list(history[: undo.index])

    def api_chat(self, message: dict, history: list[dict] | None, model: str, options: dict | None,
                 request: gr.Request):
        """`/chat` for scripts: one question with files; earlier text turns in `history` as
        [{"role", "content": str}]; `options` as {setting name: value} (see `Settings`). Streams
        (answer so far, details); details hold the stats, the frames' captions and the timeline cues once the
        answer is complete, or {"error": message}."""
        history = history or []
        if not isinstance(history, list) or not all(isinstance(turn, dict) and turn.get("role") in ("user", "assistant")
                                                    and "content" in turn for turn in history):
            error = "history must be a list of {'role': 'user' or 'assistant', 'content': text} turns"
            yield error, {"error": error}
            return
        turns = [{"role": turn["role"], "content": [{"type": "text", "text": str(turn["content"])}]} for turn in history]
        files = [{"type": "file", "file": {"path": path}} for path in (message or {}).get("files") or []]
        turns.append({"role": "user", "content": files + [{"type": "text", "text": (message or {}).get("text") or ""}]})
        try:
            settings = settings_from_dict(options)
        except VlmAppError as error:
            yield str(error), {"error": str(error)}
            return
        cancel = self.backend.begin(request.session_hash)
        for text, run, error in answer_stream(self.backend, turns, model, settings, cancel):
            if error:
                yield error, {"error": error}
            elif run is None:
                yield text, {}
            else:
                cues = timeline.find_cues(run.text, duration=run.duration())
                yield text, {"stats": run.stats(), "frames": [caption for _, caption in run.seen()],
                             "timeline": timeline.subtitles(cues)}

def grounded_image(answer: str, history: list[dict], folder: Path) -> str | None:
    """The last image of the question with the answer's grounding boxes drawn on it (DeepSeek-VL2's
    `<|ref|>…<|det|>[[x1,y1,x2,y2]]` output), saved in `folder`; None when there is nothing to draw."""
    boxes = parse_grounding(answer)
    images = [path for path in history_files(last_user(history)) if media_kind(path) == "image"]
    if not boxes or not images:
        return None
    with Image.open(images[-1]) as image:
        path = folder / f"grounding_{uuid.uuid4().hex[:8]}.png"
        draw_boxes(image, boxes).save(path)
    return str(path)


def timeline_outputs(cues: list[timeline.Cue], video: str | None, show_subtitles: bool, files: list[str]):
    """Player (with subtitles when asked), the cue list, the cues for seeking, and the export `files`."""
    player = gr.Video(value=video, playback_position=0,
                      subtitles=timeline.subtitles(cues) if show_subtitles and cues else None)
    labels = [f"{timeline.format_clock(cue.start)}–{timeline.format_clock(cue.end)} · {cue.text}" for cue in cues]
    return (player, gr.Radio(choices=labels, value=None, visible=bool(labels)), [cue.__dict__ for cue in cues],
            gr.File(value=files or None, visible=bool(files)))


def answer_files(cues: list[timeline.Cue], folder: Path) -> list[str]:
    """The answer's cues as answer.srt, answer.vtt and answer.json in `folder` (none without cues)."""
    if not cues:
        return []
    files = []
    for suffix, render in (("srt", timeline.to_srt), ("vtt", timeline.to_vtt), ("json", timeline.to_json)):
        path = folder / f"answer.{suffix}"
        path.write_text(render(cues), encoding="utf-8")
        files.append(str(path))
    return files


def seek(index: int | None, cues: list[dict]):
    """Jump the player to the clicked cue."""
    if index is None or index >= len(cues):
        return gr.skip()
    return gr.Video(playback_position=float(cues[index]["start"]))


def toggle_subtitles(show: bool, cues: list[dict]):
    return gr.Video(subtitles=timeline.subtitles([timeline.Cue(**cue) for cue in cues]) if show and cues else None)
