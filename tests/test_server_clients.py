"""Real clients against `serve` on loopback: the official `openai` package (served names, log-probabilities, JSON mode
and JSON schema, refusals, the usage chunk) and LangChain's OpenAI chat model, one round trip. The web app's model
picker shows the names `serve` serves."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from server_fixtures import API_KEY, SERVED_SMOL

MESSAGES = [{"role": "user", "content": "Name what you see."}]
EVENTS = {"type": "object", "additionalProperties": False, "required": ["objects", "events"],
          "properties": {"objects": {"type": "array", "items": {"type": "string"}},
                         "events": {"type": "array", "items": {"type": "object", "required": ["what", "time"],
                                                               "properties": {"what": {"type": "string"},
                                                                              "time": {"type": "number"}}}}}}


def test_models_are_listed_and_answered_under_their_served_names(client, api_server):
    listed = [model.id for model in client.models.list()]
    assert listed == [SERVED_SMOL, "qwen2_5_vl"]  # named on the command line; a folder by its folder's name
    assert not any(source in listed for source in api_server.sources)
    for name in listed:
        assert client.chat.completions.create(model=name, messages=MESSAGES, max_tokens=1).model == name
    with pytest.raises(openai.NotFoundError):  # the folder it loads is no name of it
        client.chat.completions.create(model=api_server.sources[0], messages=MESSAGES, max_tokens=1)


def test_logprobs_in_openai_shape_streamed_and_not(client, api_server):
    options = {"model": SERVED_SMOL, "messages": MESSAGES, "max_tokens": 6, "logprobs": True, "top_logprobs": 2}
    response = client.chat.completions.create(**options)
    entries = response.choices[0].logprobs.content
    assert 1 <= len(entries) <= response.usage.completion_tokens  # special tokens (the end) are not the answer's
    answer = bytes(sum((entry.bytes for entry in entries), [])).decode(errors="replace")
    assert answer == response.choices[0].message.content
    for entry in entries:
        assert entry.logprob <= 0 and bytes(entry.bytes).decode(errors="replace") == entry.token
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].logprob >= entry.logprob - 1e-6
    streamed = [entry for chunk in client.chat.completions.create(**options, stream=True)
                if chunk.choices and chunk.choices[0].logprobs for entry in chunk.choices[0].logprobs.content]
    assert [(entry.token, round(entry.logprob, 4)) for entry in streamed] == [
        (entry.token, round(entry.logprob, 4)) for entry in entries]  # greedy: the same tokens, the same numbers
    plain = client.chat.completions.create(model=SERVED_SMOL, messages=MESSAGES, max_tokens=2)
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize("model", [SERVED_SMOL, "qwen2_5_vl"])
def test_json_mode_and_json_schema_parse_and_validate(client, model):
    for seed in range(2):
        mode = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=80, temperature=1.0,
                                              seed=seed, response_format={"type": "json_object"})
        assert isinstance(json.loads(mode.choices[0].message.content), dict)
        schema = {"type": "json_schema", "json_schema": {"name": "events", "schema": EVENTS, "strict": True}}
        pieces = [chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=100, temperature=1.0, seed=seed, response_format=schema,
            stream=True) if chunk.choices]
        jsonschema.validate(json.loads("".join(pieces)), EVENTS)


@pytest.mark.parametrize("options, param", [
    ({"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"), ({"n": 2}, "n"), ({"logit_bias": {"12": 3}}, "logit_bias"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nothing"}}}},
     "response_format.json_schema.schema"),
    ({"extra_body": {"top_k": 3}}, "top_k"), ({"extra_body": {"guided_json": EVENTS}}, "guided_json")])
def test_refusals_are_400s_naming_the_field(client, options, param):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=SERVED_SMOL, messages=MESSAGES, max_tokens=2, **options)
    assert refused.value.status_code == 400 and refused.value.body["param"] == param


def test_include_usage_sends_the_usage_chunk_last(client, api_server):
    chunks = list(client.chat.completions.create(model=SERVED_SMOL, messages=MESSAGES, max_tokens=4, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert all(chunk.usage is None for chunk in chunks[:-1])
    unasked = list(client.chat.completions.create(model=SERVED_SMOL, messages=MESSAGES, max_tokens=4, stream=True))
    assert all(chunk.usage is None for chunk in unasked) and unasked[-1].choices[0].finish_reason
    answer = client.chat.completions.create(model=SERVED_SMOL, messages=MESSAGES, max_tokens=4)
    assert chunks[-1].usage.total_tokens == answer.usage.total_tokens


def test_langchain_openai_round_trip(api_server):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=api_server.url, api_key=API_KEY, model=SERVED_SMOL, max_tokens=4, temperature=0,
                      max_retries=0, timeout=60)
    reply = chat.invoke("Name what you see.")
    assert isinstance(reply.content, str) and reply.response_metadata["model_name"] == SERVED_SMOL
    assert reply.usage_metadata["output_tokens"] >= 1
    assert "".join(piece.content for piece in chat.stream("Name what you see.")) == reply.content  # greedy


def test_web_app_picker_shows_the_served_names(tiny_checkpoints, tmp_path):
    from vlm_app.ui.app import create_app

    sources = [str(tiny_checkpoints["smolvlm2"]), str(tiny_checkpoints["qwen2_5_vl"])]
    _, backend = create_app([f"{SERVED_SMOL}={sources[0]}", sources[1]], votes_path=str(tmp_path / "votes.jsonl"),
                            device="cpu")
    assert [label for label, _ in backend.choices()] == [SERVED_SMOL, "qwen2_5_vl"]
    assert [row[0] for row in backend.models_table()] == [SERVED_SMOL, "qwen2_5_vl"]
