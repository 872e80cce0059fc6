"""`python -m vlm_app serve --max-memory`: the operator's limit fits every request, no client value raises it, and a
request that cannot fit is an OpenAI error object (through the official `openai` client, over loopback)."""

from __future__ import annotations

import os
import sys

import openai
import pytest

from adapter_fixtures import midway_limit
from server_fixtures import API_KEY
from ui_fixtures import _free_port, running_server

PROMPT = "What happens?"
MAX_TOKENS = 6


def video_message(clip) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"file://{clip}"}},
                                         {"type": "text", "text": PROMPT}]}]


@pytest.fixture(scope="module")
def unconstrained(smol_adapter, memory_clip) -> dict:
    """The record of the request the server gets, with no limit: the same messages and answer budget."""
    from vlm_app.service import Request, execute

    messages = [{"role": "user", "content": [{"type": "video", "video": f"file://{memory_clip}"},
                                             {"type": "text", "text": PROMPT}]}]
    return execute(smol_adapter, Request(messages, generation={"max_new_tokens": MAX_TOKENS}))


@pytest.fixture(scope="module")
def limited_client(tmp_path_factory, tiny_checkpoints, memory_clip, unconstrained):
    from openai import OpenAI

    limit = midway_limit(unconstrained)
    port = _free_port()
    log = tmp_path_factory.mktemp("memory_server") / "server.log"
    command = [sys.executable, "-m", "vlm_app", "serve", "--models", str(tiny_checkpoints["smolvlm2"]),
               "--port", str(port), "--api-key", API_KEY, "--allow-dir", str(memory_clip.parent), "--device", "cpu",
               "--max-memory", str(limit)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with running_server(command, env, log, f"http://127.0.0.1:{port}/health"):
        yield OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0, timeout=60), limit


def test_every_request_is_fitted_under_the_operators_limit(limited_client, tiny_checkpoints, memory_clip,
                                                           unconstrained):
    client, limit = limited_client
    with pytest.raises(openai.BadRequestError) as raised:  # no body field reaches the operator's limit
        client.chat.completions.create(model="smolvlm2", max_tokens=MAX_TOKENS, messages=video_message(memory_clip),
                                       extra_body={"max_memory": 2**40})
    assert raised.value.body["param"] == "max_memory"
    response = client.chat.completions.create(model="smolvlm2", max_tokens=MAX_TOKENS,
                                              messages=video_message(memory_clip))
    shown = response.model_extra["vlm_app"]
    assert response.choices[0].message.content
    assert 0 < len(shown["frames_indices"]) < len(unconstrained["frames_indices"]) == 8
    assert shown["max_memory_bytes"] == limit and shown["memory_estimate_bytes"] <= limit
    assert shown["notes"][0].startswith(f"memory fit: lowered frames from 8 to {len(shown['frames_indices'])}")


def test_a_request_that_cannot_fit_is_an_error_object(limited_client, tiny_checkpoints, memory_clip):
    client, _ = limited_client
    with pytest.raises(openai.BadRequestError) as raised:  # a 4096-token answer's KV cache alone is over the limit
        client.chat.completions.create(model="smolvlm2", max_tokens=4096, messages=video_message(memory_clip))
    body = raised.value.body
    assert raised.value.status_code == 400 and body["code"] == "memory_limit" and body["param"] == "messages"
    assert "does not fit in" in body["message"] and "raise --max-memory" in body["message"]


def test_chapters_run_under_the_operators_limit(limited_client, tiny_checkpoints, memory_clip):
    client, limit = limited_client
    response = client.chat.completions.create(model="smolvlm2", max_tokens=MAX_TOKENS,
                                              messages=video_message(memory_clip),
                                              extra_body={"vlm_app": {"chapters": {"segment_seconds": 4}}})
    shown = response.model_extra["vlm_app"]
    assert [chapter["end"] for chapter in shown["chapters"]] == [4, 8] and shown["error"] is None
    assert shown["max_memory_bytes"] == limit and 0 < shown["memory_estimate_bytes"]
