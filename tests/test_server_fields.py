"""Every chat-completions request field is honoured or refused, never silently ignored: the parameters of the OpenAI
API reference (Create chat completion) and vLLM's extra sampling and template fields, each sent with a value that
asks for something, against `serve` over HTTP. A refusal is a 400 whose `param` names the field."""

from __future__ import annotations

import httpx
import pytest

from server_fixtures import API_KEY

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
# the OpenAI API reference's request body, each with a value that asks for something
OPENAI_FIELDS = {
    "audio": {"voice": "alloy", "format": "wav"}, "frequency_penalty": 0.5, "function_call": {"name": "f"},
    "functions": [{"name": "f", "parameters": {"type": "object"}}], "logit_bias": {"50": 5}, "logprobs": True,
    "max_completion_tokens": 2, "max_tokens": 2, "metadata": {"run": "7"}, "modalities": ["text", "audio"], "n": 2,
    "parallel_tool_calls": True, "prediction": {"type": "content", "content": "x"}, "presence_penalty": 0.5,
    "prompt_cache_key": "k", "reasoning_effort": "low", "response_format": {"type": "json_object"},
    "safety_identifier": "user-1", "seed": 3, "service_tier": "flex", "stop": ["\n\n"], "store": True,
    "stream": True, "stream_options": {"include_usage": True}, "temperature": 0.7,
    "tool_choice": "required", "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    "top_logprobs": 3, "top_p": 0.9, "user": "user-1", "verbosity": "low",
    "web_search_options": {"search_context_size": "low"},
}
# vLLM's extra sampling, structured-output and template fields
VLLM_FIELDS = {
    "best_of": 2, "use_beam_search": True, "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2, "length_penalty": 0.5,
    "stop_token_ids": [5], "include_stop_str_in_output": True, "ignore_eos": True, "min_tokens": 2,
    "skip_special_tokens": False, "spaces_between_special_tokens": False, "truncate_prompt_tokens": 8,
    "prompt_logprobs": 1, "allowed_token_ids": [1, 2], "bad_words": ["x"], "echo": True,
    "add_generation_prompt": False, "continue_final_message": True, "add_special_tokens": True,
    "documents": [{"title": "t", "text": "x"}], "chat_template": "{{ messages }}", "chat_template_kwargs": {"x": 1},
    "guided_json": SCHEMA, "guided_regex": "a+", "guided_choice": ["a"], "guided_grammar": "root ::= 'a'",
    "guided_decoding_backend": "xgrammar", "guided_whitespace_pattern": " ", "structural_tag": "{}",
    "structured_outputs": {"json": SCHEMA}, "priority": 1, "request_id": "r-1", "logits_processors": ["x"],
    "return_tokens_as_token_ids": True, "return_token_ids": True, "cache_salt": "salt", "kv_transfer_params": {},
    "vllm_xargs": {"x": 1}, "mm_processor_kwargs": {"num_frames": 2}, "media_io_kwargs": {"video": {"num_frames": 2}},
    "thinking_token_budget": 8,
}
# what this server does with each: honoured (and tested for its effect elsewhere) or passed (no effect on the answer)
ACCEPTED = {"frequency_penalty", "logprobs", "max_completion_tokens", "max_tokens", "metadata", "presence_penalty",
            "prompt_cache_key", "response_format", "safety_identifier", "seed", "stop", "stream", "stream_options",
            "temperature", "top_logprobs", "top_p", "user", "repetition_penalty", "mm_processor_kwargs",
            "media_io_kwargs", "request_id", "cache_salt",
            "parallel_tool_calls"}  # asks nothing without tools, which are refused


def post(api_server, body: dict) -> httpx.Response:
    return httpx.post(f"{api_server.url}/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {API_KEY}"})


def request(api_server, name: str, value) -> dict:
    body = {"model": api_server.models[0], "messages": [{"role": "user", "content": "Say something."}],
            "max_tokens": 40, name: value}
    if name == "top_logprobs":
        body["logprobs"] = True
    return body


@pytest.mark.parametrize("name, value", [*OPENAI_FIELDS.items(), *VLLM_FIELDS.items()],
                         ids=[*OPENAI_FIELDS, *VLLM_FIELDS])
def test_every_field_is_honoured_or_refused_by_name(api_server, name, value):
    response = post(api_server, request(api_server, name, value))
    if name in ACCEPTED:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400, f"{name} was not refused: {response.text[:300]}"
        error = response.json()["error"]
        assert error["param"].split(".")[0] == name and name in error["message"]


def test_a_field_no_reference_has_is_refused_by_name(api_server):
    response = post(api_server, request(api_server, "temprature", 0.5))
    assert response.status_code == 400 and response.json()["error"]["param"] == "temprature"


@pytest.mark.parametrize("name, value", [("tools", []), ("tool_choice", "none"), ("n", 1), ("top_k", -1),
                                         ("store", False), ("logit_bias", {}), ("best_of", 1)])
def test_a_refused_field_at_the_value_that_asks_nothing_passes(api_server, name, value):
    assert post(api_server, request(api_server, name, value)).status_code == 200


@pytest.mark.parametrize("name, value, param", [
    ("response_format", {"type": "xml"}, "response_format"),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objec"}}},
     "response_format.json_schema.schema"),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {"type": "string"}}}},
     "response_format.json_schema.schema"),
    ("top_logprobs", 21, "top_logprobs"), ("frequency_penalty", 2.5, "frequency_penalty"),
    ("presence_penalty", "high", "presence_penalty"), ("repetition_penalty", 0, "repetition_penalty"),
    ("logprobs", "yes", "logprobs"),
    ("stream_options", {"continuous_usage_stats": True}, "stream_options.continuous_usage_stats")])
def test_bad_values_of_honoured_fields_are_400s(api_server, name, value, param):
    response = post(api_server, request(api_server, name, value))
    assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


def test_top_logprobs_without_logprobs_is_refused(api_server):
    body = {**request(api_server, "top_logprobs", 2), "logprobs": False}
    response = post(api_server, body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "top_logprobs"


@pytest.mark.parametrize("name, value", [("logprobs", True), ("response_format", {"type": "json_object"})])
def test_chapters_refuse_what_one_answer_would_carry(api_server, name, value):
    video = {"type": "video_url", "video_url": {"url": (api_server.allowed / "clip.mp4").as_uri()}}
    body = {"model": api_server.models[0], "messages": [{"role": "user", "content": [video]}], "max_tokens": 2,
            "vlm_app": {"chapters": {}}, name: value}
    response = post(api_server, body)
    assert response.status_code == 400 and response.json()["error"]["param"] == name, response.text
