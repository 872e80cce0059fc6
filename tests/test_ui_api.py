"""The web app's named endpoints, through gradio_client against `python -m vlm_app ui` on tiny checkpoints."""

from __future__ import annotations

import re
import threading
import time

import pytest
from gradio_client import handle_file

from ui_fixtures import UI_LONG_CLIP_S, UI_MAX_DURATION_S, UI_MAX_UPLOAD_MB

STATS_KEYS = {"model", "family", "frames", "visual_tokens", "text_tokens", "preprocess_s", "prefill_s", "decode_s",
              "tokens_per_s", "new_tokens", "peak_memory_bytes", "cancelled"}


def ask(text, *files):
    return {"text": text, "files": [handle_file(str(path)) for path in files]}


def test_endpoints_are_named_and_stable(ui_client):
    endpoints = ui_client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/chat", "/chapters", "/compare", "/stop"} <= set(endpoints)
    assert [p["parameter_name"] for p in endpoints["/chat"]["parameters"]] == ["message", "history", "model",
                                                                              "options"]
    assert [p["parameter_name"] for p in endpoints["/chapters"]["parameters"]] == ["message", "model", "options"]


def test_chat_streams_partials_then_final_answer(ui_client, ui_server, ui_clip):
    model = ui_server.models[0]
    job = ui_client.submit(ask("Describe the video.", ui_clip), [], model, {"max_new_tokens": 24, "fps": 2},
                           api_name="/chat")
    answer, details = job.result(timeout=120)
    partials = [text for text, _ in job.outputs()]
    assert len(partials) >= 3, partials
    assert all(len(a) <= len(b) for a, b in zip(partials, partials[1:]))  # the answer only grows
    assert answer == partials[-1] and answer.strip()
    stats = details["stats"]
    assert STATS_KEYS <= set(stats) and stats["model"] == model
    assert stats["frames"] == len(details["frames"]) > 0 and stats["visual_tokens"] > 0
    assert 0 < stats["new_tokens"] <= 24 and stats["cancelled"] is False
    assert details["frames"][0].startswith("#1 frame 0 · 0.00 s")


def test_chat_remembers_earlier_turns(ui_client, ui_server, ui_clip):
    """The history is part of the prompt: a longer history gives more text tokens for the same question."""
    model = ui_server.models[0]
    options = {"max_new_tokens": 4}
    _, first = ui_client.predict(ask("And the colours?", ui_clip), [], model, options, api_name="/chat")
    history = [{"role": "user", "content": "What moves?"}, {"role": "assistant", "content": "A red square."}]
    _, second = ui_client.predict(ask("And the colours?", ui_clip), history, model, options, api_name="/chat")
    assert second["stats"]["text_tokens"] > first["stats"]["text_tokens"]


def test_chapters_describe_a_video_too_long_for_one_answer_part_by_part(ui_client, ui_server, ui_long_clip):
    model = ui_server.models[0]
    answer, _ = ui_client.predict(ask("Describe.", ui_long_clip), [], model, {}, api_name="/chat")
    assert "describe it in chapters (the Chapters button under the chat, or /chapters" in answer
    job = ui_client.submit(ask("What happens?", ui_long_clip), model,
                           {"segment_seconds": 4, "overlap": 1, "max_new_tokens": 3}, api_name="/chapters")
    text, details = job.result(timeout=120)
    lines = [len(re.findall(r"^\[\d\d:\d\d:\d\d - ", partial, re.M)) for partial, _ in job.outputs()]
    assert lines == sorted(lines) and {1, 2, 3} <= set(lines)  # each chapter arrives as its segment finishes
    assert details["error"] is None and details["cancelled"] is False and details["duration"] == UI_LONG_CLIP_S
    assert [(chapter["start"], chapter["end"]) for chapter in details["chapters"]] == [(0, 4), (4, 8), (8, 10)]
    assert details["summary"] and details["summary"] in text
    assert [cue["timestamp"] for cue in details["timeline"]] == [[0, 4], [4, 8], [8, 10]]
    assert details["stats"]["model"] == model and details["stats"]["frames"] > 0


def test_stop_ends_a_chapters_run(ui_client, ui_server, ui_long_clip):
    job = ui_client.submit(ask("Describe.", ui_long_clip), ui_server.models[0],
                           {"segment_seconds": 4, "max_new_tokens": 512}, api_name="/chapters")
    deadline = time.monotonic() + 60
    while not any("[00:00:00 - " in text for text, _ in job.outputs()) and time.monotonic() < deadline:
        time.sleep(0.05)
    ui_client.predict(api_name="/stop")
    _, details = job.result(timeout=60)
    assert details["cancelled"] is True and details["summary"] is None
    assert details["chapters"][-1]["text"] == ""  # the last segment was never described


def test_compare_returns_one_answer_and_stats_per_model(ui_client, ui_server, ui_clip):
    records = ui_client.predict(ask("What happens?", ui_clip), ui_server.models, {"max_new_tokens": 12},
                                api_name="/compare")
    assert [record["model"] for record in records] == ui_server.models
    for record in records:
        assert "error" not in record, record
        assert record["answer"].strip()
        assert STATS_KEYS <= set(record["stats"]) and record["stats"]["frames"] > 0


def test_compare_needs_two_models(ui_client, ui_server, ui_clip):
    with pytest.raises(Exception, match="Choose 2 or 3 models"):
        ui_client.predict(ask("What happens?", ui_clip), ui_server.models[:1], {}, api_name="/compare")


def test_over_size_upload_is_refused_with_the_limit(ui_client, ui_server, tmp_path):
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * int((UI_MAX_UPLOAD_MB + 1) * 2**20))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        ui_client.predict(ask("Describe.", big), [], ui_server.models[0], {}, api_name="/chat")


def test_over_duration_video_returns_the_limit_message(ui_client, ui_server, ui_long_clip):
    answer, details = ui_client.predict(ask("Describe.", ui_long_clip), [], ui_server.models[0], {},
                                        api_name="/chat")
    assert f"over this app's limit of {UI_MAX_DURATION_S:g} s" in answer
    assert details == {"error": answer}


def test_bad_option_is_reported_not_raised(ui_client, ui_server, ui_clip):
    answer, details = ui_client.predict(ask("Describe.", ui_clip), [], ui_server.models[0], {"fsp": 2},
                                        api_name="/chat")
    assert "unknown option(s) fsp" in answer and "error" in details


def test_stop_ends_generation_inside_the_model(ui_client, ui_server, ui_clip):
    """A long greedy answer, stopped by /stop from the same client session, ends early and says so."""
    job = ui_client.submit(ask("Describe.", ui_clip), [], ui_server.models[0], {"max_new_tokens": 2048},
                           api_name="/chat")
    deadline = time.monotonic() + 60
    while len(job.outputs()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    ui_client.predict(api_name="/stop")
    _, details = job.result(timeout=60)
    assert details["stats"]["cancelled"] is True
    assert details["stats"]["new_tokens"] < 2048


def test_app_keeps_serving_after_a_failed_turn(ui_client, ui_server, ui_clip, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    answer, details = ui_client.predict(ask("Describe.", broken), [], ui_server.models[0], {}, api_name="/chat")
    assert "error" in details and "broken.mp4" in answer
    answer, details = ui_client.predict(ask("Describe.", ui_clip), [], ui_server.models[0], {"max_new_tokens": 4},
                                        api_name="/chat")
    assert "stats" in details


def test_one_model_job_at_a_time(ui_server, ui_clip):
    """Two clients submitting at once: the second answer starts only after the first has finished."""
    from gradio_client import Client

    clients = [Client(ui_server.url, verbose=False) for _ in range(2)]
    spans = []

    def run(client):
        start = time.monotonic()
        job = client.submit(ask("Describe.", ui_clip), [], ui_server.models[0], {"max_new_tokens": 64},
                            api_name="/chat")
        while not job.outputs():
            time.sleep(0.01)
        first_output = time.monotonic()
        job.result(timeout=120)
        spans.append((first_output, time.monotonic(), start))

    threads = [threading.Thread(target=run, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    (first_start, first_end, _), (second_start, _, _) = sorted(spans)
    assert second_start >= first_end - 0.05
