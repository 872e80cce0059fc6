"""Chapters in the web app, in-process: the Chapters handler on the tiny SmolVLM2 streams the chapters of a video
too long for one answer into the chat, fills the timeline (seek, subtitles, SRT/VTT/JSON), honours Stop, the
app's duration caps and memory limit, and refuses hostile segment lengths and overlaps with a clear message."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from vlm_app.chapters import CANCELLED, DEFAULT_PROMPT
from vlm_app.errors import OptionsError
from vlm_app.memory import MemoryLimit
from vlm_app.ui.answer import ERROR_TITLE, SETTING_NAMES
from vlm_app.ui.backend import Backend
from vlm_app.media.limits import DEFAULT_LIMITS
from vlm_app.ui.chapters import ChapterHandlers, chapter_bounds
from vlm_app.ui.chat import ChatHandlers, seek
from vlm_app.ui.limits import UploadPolicy

SETTINGS = [None, None, None, None, None, 3, 0.0, 1.0, 0, "", "auto"]  # the sidebar: 3 new tokens per request
RANGES = [(0.0, 4.0), (4.0, 8.0), (8.0, 10.0)]  # the 10 s clip in 4 s segments (the last 2 s piece stays its own)


def user(*files, text=""):
    content = [{"type": "file", "file": {"path": str(path)}} for path in files]
    return {"role": "user", "content": content + ([{"type": "text", "text": text}] if text else [])}


def request(session="chapters"):
    return SimpleNamespace(session_hash=session)


def settings(max_new_tokens=3, start=None):
    values = list(SETTINGS)
    values[3], values[5] = start, max_new_tokens
    return values


@pytest.fixture(scope="module")
def backend(tiny_checkpoints, ui_clip, ui_long_clip, tmp_path_factory):
    """The tiny SmolVLM2 on offer; one answer takes 6 s of video, chapters a minute (the long clip lasts 10 s)."""
    assert ui_long_clip.parent == ui_clip.parent
    policy = UploadPolicy(max_file_mb=1, max_duration_s=6, max_chapters_duration_s=60, upload_dir=str(ui_clip.parent))
    backend = Backend([str(tiny_checkpoints["smolvlm2"])], policy,
                      str(tmp_path_factory.mktemp("ui_chapters") / "votes.jsonl"), device="cpu")
    yield backend
    backend.close()


def chapters_run(backend, history, seconds=4, overlap=1, values=None, session="chapters"):
    """Every update of the Chapters handler, each with the conversation as it was then (the handler goes on
    changing its list, as Gradio has sent each update before asking for the next)."""
    run = ChapterHandlers(backend).run(request(session), history, backend.models[0], True, seconds, overlap,
                                       *(values or settings()))
    return [(list(shown), *rest) for shown, *rest in run]


def times(text: str) -> list[tuple[str, str]]:
    return re.findall(r"(\d\d:\d\d:\d\d[,.]\d{3}) --> (\d\d:\d\d:\d\d[,.]\d{3})", text)


def test_chapters_stream_in_order_and_fill_the_timeline(backend, ui_long_clip, gradio_temp_dir):
    outputs = chapters_run(backend, [user(ui_long_clip, text="What happens?")])
    texts = [shown[-1]["content"] for shown, *_ in outputs]
    assert "describing the first part" in texts[0]
    # one more chapter line as each segment finishes, in the order of the video, before the summary
    progress = [re.findall(r"^\[(\d\d:\d\d:\d\d) - (\d\d:\d\d:\d\d)\]", text, re.M) for text in texts]
    assert [len(found) for found in progress] == [0, 1, 2, 3, 3]
    assert progress[-1] == [("00:00:00", "00:00:04"), ("00:00:04", "00:00:08"), ("00:00:08", "00:00:10")]
    assert "writing the summary" in texts[-2] and "**Summary:**" in texts[-1] and "(3 segments)" in texts[-1]
    assert all(value == gr.skip() for output in outputs[:-1] for value in output[1:])  # the timeline waits

    shown, gallery, stats, player, cues, cue_state, files = outputs[-1]
    assert shown[-1]["role"] == "assistant" and "metadata" not in shown[-1]
    assert gallery == [] and int(re.search(r"\| frames shown \| (\d+) \|", stats).group(1)) > 0
    assert "| stopped | False |" in stats
    assert [(cue["start"], cue["end"]) for cue in cue_state] == RANGES
    assert [label for label, _ in cues.choices] == [f"{start}–{end} · {cue['text']}" for (start, end), cue in
                                                    zip([("00:00", "00:04"), ("00:04", "00:08"), ("00:08", "00:10")],
                                                        cue_state)]
    assert seek(1, cue_state).playback_position == 4.0 and seek(2, cue_state).playback_position == 8.0
    assert player.value["path"].endswith("long.mp4") and player.subtitles is not None
    exported = {Path(item["path"]).suffix[1:]: Path(item["path"]).read_text(encoding="utf-8") for item in files.value}
    assert sorted(exported) == ["json", "srt", "vtt"]
    assert times(exported["srt"]) == [("00:00:00,000", "00:00:04,000"), ("00:00:04,000", "00:00:08,000"),
                                      ("00:00:08,000", "00:00:10,000")]
    assert times(exported["vtt"]) == [(start.replace(",", "."), end.replace(",", "."))
                                      for start, end in times(exported["srt"])]
    record = json.loads(exported["json"])
    assert record["duration"] == 10.0 and record["summary"] and record["summary"] in shown[-1]["content"]
    assert [(chapter["start"], chapter["end"]) for chapter in record["chapters"]] == RANGES


def test_the_system_prompt_reaches_every_segment(backend, ui_long_clip, gradio_temp_dir):
    def text_tokens(values) -> int:
        stats = chapters_run(backend, [user(ui_long_clip)], values=values)[-1][2]
        return int(re.search(r"\| text tokens \| (\d+) \|", stats).group(1))

    told = settings()
    told[SETTING_NAMES.index("system_prompt")] = "Answer in five words."
    assert text_tokens(told) > text_tokens(settings())


def test_the_chapters_button_adds_the_turn_with_the_default_question(backend, ui_long_clip):
    handlers = ChapterHandlers(backend)
    box, urls, history = handlers.add_turn({"text": "  ", "files": [str(ui_long_clip)]}, "", [], request())
    assert box is None and urls == ""
    assert history == [{"role": "user", "content": [{"path": str(ui_long_clip)}, DEFAULT_PROMPT]}]
    _, _, history = handlers.add_turn({"text": "Who speaks?", "files": []}, "", history, request())
    assert history[-1]["content"] == ["Who speaks?"]


def test_stop_ends_the_run_after_the_segment_being_described(backend, ui_long_clip, gradio_temp_dir):
    """Stop pressed as the first chapter arrives: the segment then being described stops within a token (random
    weights never end an answer early), no later one is described and there is no summary."""
    budget, outputs = 512, []
    for shown, *rest in ChapterHandlers(backend).run(request("stop"), [user(ui_long_clip)], backend.models[0], True,
                                                     4, 0, *settings(max_new_tokens=budget)):
        outputs.append((list(shown), *rest))
        if len(outputs) == 2:  # the first chapter
            assert "[00:00:00 - 00:00:04]" in shown[-1]["content"]
            ChatHandlers(backend).stop(request("stop"))
    shown, _, stats, _, _, cue_state, _ = outputs[-1]
    text = shown[-1]["content"]
    described = len(re.findall(r"^\[\d\d:\d\d:\d\d - ", text, re.M))
    assert described in (1, 2) and f"stopped after {described} of 3 segments" in text and "Summary" not in text
    assert "| stopped | True |" in stats
    assert budget <= int(re.search(r"\| new tokens \| (\d+) \|", stats).group(1)) < 2 * budget
    assert len(cue_state) == 3 and cue_state[2]["text"] == f"(not described: {CANCELLED})"


@pytest.mark.parametrize("seconds, overlap, words", [
    (-4, 0, "the segment length must be 1 to 3600 s, got -4"),
    (0, 0, "the segment length must be 1 to 3600 s, got 0"),
    (1e12, 0, "the segment length must be 1 to 3600 s"),
    (math.nan, 0, "the segment length must be a finite number of seconds, got nan"),
    (math.inf, 0, "must be a finite number"),
    ("four", 0, "the segment length must be a number of seconds, got 'four'"),
    ([4], 0, "the segment length must be a number of seconds"),
    (True, 0, "the segment length must be a number of seconds"),
    (4, -1, "the overlap must be 0 to 4 s (the segment length), got -1"),
    (4, 5, "the overlap must be 0 to 4 s"),
    (4, "NaN", "the overlap must be a finite number"),
    (None, 1e9, "the overlap must be 0 to 60 s"),
])
def test_hostile_segment_values_get_a_clear_refusal(backend, ui_long_clip, seconds, overlap, words):
    outputs = chapters_run(backend, [user(ui_long_clip)], seconds, overlap)
    shown = outputs[-1][0]
    assert len(outputs) == 1 and shown[-1]["metadata"]["title"] == ERROR_TITLE
    assert words in shown[-1]["content"]


def test_segment_counts_are_bounded():
    assert chapter_bounds("90", "2.5", 3600) == (90.0, 2.5) and chapter_bounds(None, None, 3600) == (None, 0.0)
    most = DEFAULT_LIMITS.max_chapters_segments
    least = math.ceil(24 * 3600 / most)
    assert chapter_bounds(least, 0, 24 * 3600)[0] == least
    with pytest.raises(OptionsError, match=f"makes 86400 segments .* over this app's {most}; choose at "
                                           f"least {least} s"):
        chapter_bounds(1, 0, 24 * 3600)


def test_too_long_for_one_answer_points_to_chapters_and_chapters_have_their_own_cap(backend, ui_long_clip,
                                                                                    tmp_path):
    shown = list(ChatHandlers(backend).respond(request(), [user(ui_long_clip, text="Hi")], backend.models[0], True,
                                               *settings()))[-1][0]
    assert "over this app's limit of 6 s for one answer; describe it in chapters (the Chapters button" \
        in shown[-1]["content"]
    capped = Backend(backend.models, UploadPolicy(max_duration_s=6, max_chapters_duration_s=8,
                                                  upload_dir=str(ui_long_clip.parent)),
                     str(tmp_path / "votes.jsonl"), device="cpu")
    try:
        shown = chapters_run(capped, [user(ui_long_clip)])[-1][0]
        assert "over this app's limit of 8 s for chapters" in shown[-1]["content"]
        assert "--max-chapters-duration" in shown[-1]["content"]
        shown = list(ChatHandlers(capped).respond(request(), [user(ui_long_clip, text="Hi")], capped.models[0],
                                                  True, *settings()))[-1][0]
        assert "over this app's limit of 6 s" in shown[-1]["content"] and "chapters" not in shown[-1]["content"]
    finally:
        capped.close()


def test_chapters_need_a_readable_video_and_the_whole_of_it(backend, ui_long_clip, tmp_path):
    outside = tmp_path / "x.mp4"
    outside.write_bytes(b"x")
    cases = [([user(text="Describe.")], settings(), "attach a video first"),
             ([user(outside)], settings(), "outside the folders"),
             ([user(ui_long_clip)], settings(start=2), "chapters cover the whole video")]
    for history, values, words in cases:
        shown = chapters_run(backend, history, values=values)[-1][0]
        assert shown[-1]["metadata"]["title"] == ERROR_TITLE and words in shown[-1]["content"], words


def test_the_operators_memory_limit_reaches_every_segment(backend, ui_long_clip, tmp_path, gradio_temp_dir):
    """Each segment is fitted to the operator's limit when it is planned; one that not even a frame fits fails
    with the numbers (no client option changes it)."""
    limited = Backend(backend.models, backend.policy, str(tmp_path / "votes.jsonl"), device="cpu",
                      memory=MemoryLimit(2**20))
    try:
        shown, *_ = chapters_run(limited, [user(ui_long_clip)])[-1]
        assert "3 of 3 segments failed" in shown[-1]["content"]
        assert "does not fit in 1 MiB: even 1 frame(s) need about" in shown[-1]["content"]
    finally:
        limited.close()

