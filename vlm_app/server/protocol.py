"""The OpenAI chat-completions wire format: a request body → a `service.Request`, a record → a response or
stream chunks, a failure → OpenAI's error object. Every client value is checked here (type, range, count)
before anything runs; media sources are only named, never opened (the fetch guard in the media pipeline
decides what may be read).

Every field of a request is honoured or refused, never ignored (`FIELDS`, walked by tests/test_server_fields.py):
the fields this server implements (`HONOURED`), those that carry no meaning for generation (`PASSED`: the caller's
bookkeeping), and all others refused with a 400 naming them, unless absent, null or at the value that changes
nothing (`NEUTRAL`: `n: 1`, `top_k: -1`, `tools: []`, ...). Tools are refused: the answer is text (or JSON under
`response_format`), never a tool call.

Media options use vLLM's names, in `mm_processor_kwargs` (every video) and `media_io_kwargs`
({"video": {...}, "image": {...}}); `VLLM_OPTION_NAMES` maps them to ours. Our own request options sit in a
`vlm_app` object, as our answers' extras do: `{"vlm_app": {"chapters": {"segment_seconds": 60, "overlap": 0}}}`
describes the request's one video in chapters (`vlm_app.chapters`).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from numbers import Real
from typing import Any

from vlm_app.chapters import ChapterOptions
from vlm_app.decoding import JSON_OBJECT_SCHEMA, MAX_TOP_LOGPROBS, SchemaError, check_json_schema
from vlm_app.errors import VlmAppError
from vlm_app.media.limits import DEFAULT_LIMITS
from vlm_app.memory import MemoryLimit
from vlm_app.service import Request

MAX_MESSAGES = 64
MAX_CONTENT_PARTS = 64          # per request, over all messages
MAX_MEDIA_ITEMS = 8
MAX_COMPLETION_TOKENS = 4096
MAX_STOP_STRINGS = 4
HONOURED = ("model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
            "top_p", "seed", "stop", "n", "logprobs", "top_logprobs", "frequency_penalty", "presence_penalty",
            "repetition_penalty", "response_format", "mm_processor_kwargs", "media_io_kwargs", "vlm_app")
PASSED = ("user", "metadata", "safety_identifier", "prompt_cache_key", "request_id", "cache_salt")
# a field refused only when it asks for something: these values (and null) ask for nothing
NEUTRAL = {"tools": ([],), "tool_choice": ("none", "auto"), "parallel_tool_calls": (True, False), "functions": ([],),
           "function_call": ("none", "auto"), "logit_bias": ({},), "modalities": (["text"],), "store": (False,),
           "service_tier": ("auto", "default"), "audio": (), "prediction": (), "reasoning_effort": (), "verbosity": (),
           "web_search_options": (),
           # vLLM's extra sampling and template fields
           "best_of": (1,), "use_beam_search": (False,), "top_k": (-1, 0), "min_p": (0,), "length_penalty": (1,),
           "stop_token_ids": ([],), "include_stop_str_in_output": (False,), "ignore_eos": (False,), "min_tokens": (0,),
           "skip_special_tokens": (True,), "spaces_between_special_tokens": (True,), "truncate_prompt_tokens": (),
           "prompt_logprobs": (), "allowed_token_ids": (), "bad_words": ([],), "echo": (False,),
           "add_generation_prompt": (True,), "continue_final_message": (False,), "add_special_tokens": (False,),
           "documents": (), "chat_template": (), "chat_template_kwargs": ({},), "guided_json": (), "guided_regex": (),
           "guided_choice": (), "guided_grammar": (), "guided_decoding_backend": (), "guided_whitespace_pattern": (),
           "structural_tag": (), "structured_outputs": (), "priority": (0,), "logits_processors": (),
           "return_tokens_as_token_ids": (False,), "return_token_ids": (False,), "kv_transfer_params": (),
           "vllm_xargs": (), "thinking_token_budget": ()}
FIELDS = (*HONOURED, *PASSED, *NEUTRAL)
INSTEAD = {"tools": "this server answers in text (or JSON under response_format) and makes no tool calls",
           "tool_choice": "tools are not supported", "functions": "tools are not supported",
           "function_call": "tools are not supported", "guided_json": 'use response_format {"type": "json_schema"}',
           "structured_outputs": 'use response_format {"type": "json_schema"}', "n": "this server returns one choice",
           "best_of": "this server returns one choice", "use_beam_search": "this server samples or decodes greedily"}
STREAM_OPTIONS = {"include_usage": True, "include_obfuscation": True, "continuous_usage_stats": False}  # honoured?
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
# vLLM's (and the HF processors') option names -> ours (load_video / load_image)
VLLM_OPTION_NAMES = {"fps": "fps", "num_frames": "nframes", "max_frames": "max_frames", "min_frames": "min_frames",
                     "max_pixels": "max_pixels", "min_pixels": "min_pixels", "total_pixels": "total_pixels",
                     "video_start": "video_start", "video_end": "video_end"}
IMAGE_OPTION_NAMES = ("max_pixels", "min_pixels")
PART_TYPES = ("text", "image_url", "video_url", "input_audio")
AUDIO_FORMATS = ("wav", "mp3", "m4a", "flac", "ogg")  # of an input_audio part (OpenAI's are wav and mp3)
AUDIO_IN_VIDEO = "use_audio_in_video"  # vLLM's name for a video's own soundtrack (true: on, false: off)
EXTENSION_FIELDS = ("chapters",)  # of the request's `vlm_app` object
CHAPTER_OPTIONS = ("segment_seconds", "overlap")  # of `vlm_app.chapters`
SEGMENT_FIELDS = ("start", "end", "video_start", "video_end", "error", "frames_indices", "timestamps", "sample_fps",
                  "num_tokens", "timings", "finish_reason", "cancelled", "notes")  # each segment's, in answers


class ApiError(VlmAppError):
    """A request the server refuses: the HTTP status, OpenAI's error fields and any response headers
    (`x-should-retry: false` stops the openai clients retrying a 5xx that would fail again)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def body(self) -> dict:
        # a message may quote a client's source with a lone surrogate ("\\udcff"), which UTF-8 cannot encode
        message = self.message.encode("utf-8", "backslashreplace").decode("utf-8")
        return {"error": {"message": message, "type": self.kind, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param, code)


@dataclass
class ChatCall:
    model: str
    request: Request
    stream: bool
    include_usage: bool
    chapters: ChapterOptions | None = None  # the request's video in chapters


def _number(body: dict, name: str, low: float, high: float, integer: bool = False, within: str = "") -> Any:
    value = body.get(name)
    name = within + name
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int if integer else Real):
        raise bad(f"{name} must be {'an integer' if integer else 'a number'}, got {type(value).__name__}", name,
                  "invalid_type")
    if not low <= value <= high:  # NaN too
        raise bad(f"{name} must be between {low:g} and {high:g}, got {value}", name)
    return value


def _media_options(body: dict) -> tuple[dict, dict]:
    """(video options, image options) from `mm_processor_kwargs` and `media_io_kwargs`, in our names."""
    video, image = {}, {}
    sources = [("mm_processor_kwargs", body.get("mm_processor_kwargs"), video)]
    io = body.get("media_io_kwargs")
    if io is not None and not isinstance(io, dict):
        raise bad("media_io_kwargs must be an object like {\"video\": {\"num_frames\": 8}}", "media_io_kwargs",
                  "invalid_type")
    for kind, target in (("video", video), ("image", image)):
        sources.append((f"media_io_kwargs.{kind}", (io or {}).get(kind), target))
    for where, options, target in sources:
        if options is None:
            continue
        if not isinstance(options, dict):
            raise bad(f"{where} must be an object of option names to numbers", where, "invalid_type")
        allowed = (*VLLM_OPTION_NAMES, AUDIO_IN_VIDEO) if target is video else IMAGE_OPTION_NAMES
        for name, value in options.items():
            if name not in allowed:
                raise bad(f"{where}: unknown option {name!r}; known: {', '.join(allowed)}", f"{where}.{name}")
            if name == AUDIO_IN_VIDEO:
                if not isinstance(value, bool):
                    raise bad(f"{where}.{name} must be true or false, got {value!r}", f"{where}.{name}", "invalid_type")
                target["audio"] = "on" if value else "off"
                continue
            if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value <= 1e9:
                raise bad(f"{where}.{name} must be a non-negative number, got {value!r}", f"{where}.{name}",
                          "invalid_type")
            target[VLLM_OPTION_NAMES.get(name, name)] = value
    return video, image


def _part(part: Any, where: str, image_options: dict) -> dict:
    if not isinstance(part, dict) or part.get("type") not in PART_TYPES:
        raise bad(f"{where}: each content part must be an object with type {', '.join(PART_TYPES)}", where,
                  "invalid_type")
    kind = part["type"]
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise bad(f"{where}: a text part needs a string under 'text'", where, "invalid_type")
        return {"type": "text", "text": part["text"]}
    if kind == "input_audio":
        return _audio_part(part.get(kind), where)
    holder = part.get(kind)
    url = holder.get("url") if isinstance(holder, dict) else None
    if not isinstance(url, str) or not url:
        raise bad(f"{where}: a {kind} part needs {{\"{kind}\": {{\"url\": \"https://… | data:… | file://…\"}}}}",
                  where, "invalid_type")
    if not url.startswith(("http://", "https://", "data:", "file://")):
        raise bad(f"{where}: {kind} url must be http(s)://, data: or file:// (under the server's --allow-dir)",
                  where, "invalid_url")
    if kind == "image_url":
        return {"type": "image", "image": url, **image_options}
    return {"type": "video", "video": url}


def _audio_part(audio: Any, where: str) -> dict:
    """OpenAI's `{"input_audio": {"data": "<base64>", "format": "wav"}}` as an audio item (a data: URI, decoded by
    the media pipeline under the server's limits)."""
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str) or not audio["data"] or \
            audio.get("format") not in AUDIO_FORMATS:
        raise bad(f'{where}: an input_audio part needs {{"input_audio": {{"data": "<base64>", "format": '
                  f'{" | ".join(AUDIO_FORMATS)}}}}}', where, "invalid_type")
    return {"type": "audio", "audio": f"data:audio/{audio['format']};base64,{audio['data']}"}


def _messages(body: dict, image_options: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list of {role, content} objects", "messages", "invalid_type")
    if len(messages) > MAX_MESSAGES:
        raise bad(f"{len(messages)} messages, over this server's limit of {MAX_MESSAGES}", "messages")
    parts = 0
    converted = []
    for number, message in enumerate(messages):
        where = f"messages[{number}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad(f"{where} must be an object with a string 'role'", where, "invalid_type")
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list) or not content:
            raise bad(f"{where}.content must be a string or a non-empty list of parts", f"{where}.content",
                      "invalid_type")
        parts += len(content)
        if parts > MAX_CONTENT_PARTS:
            raise bad(f"over {MAX_CONTENT_PARTS} content parts in one request; send fewer", "messages")
        role = "system" if message["role"] == "developer" else message["role"]
        converted.append({"role": role, "content": [_part(part, f"{where}.content[{index}]", image_options)
                                                    for index, part in enumerate(content)]})
    media = sum(item["type"] != "text" for message in converted for item in message["content"])
    if media > MAX_MEDIA_ITEMS:
        raise bad(f"{media} images/videos in one request, over this server's limit of {MAX_MEDIA_ITEMS}", "messages")
    return converted


def _refuse_unsupported(body: dict) -> None:
    """A 400 naming the first field this server would otherwise ignore."""
    for name, value in body.items():
        if name not in FIELDS:
            raise bad(f"unknown field {name!r}: this server does not implement it (see GET /v1/models and the "
                      "README's Serving section for what it supports)", name, "unsupported_field")
        if name in NEUTRAL and value is not None and value not in NEUTRAL[name]:
            reason = INSTEAD.get(name, "this server does not implement it")
            neutral = f"; leave it out{' or send ' + json.dumps(NEUTRAL[name][0]) if NEUTRAL[name] else ''}"
            raise bad(f"{name} is not supported: {reason}{neutral}", name, "unsupported_field")


def _stream_options(body: dict) -> bool:
    """Whether the stream ends with a usage chunk (`include_usage`)."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise bad("stream_options must be an object", "stream_options", "invalid_type")
    for name, value in options.items():
        if name not in STREAM_OPTIONS or (value and not STREAM_OPTIONS[name]):
            raise bad(f"stream_options.{name} is not supported; known: include_usage", f"stream_options.{name}",
                      "unsupported_field")
        if not isinstance(value, bool):
            raise bad(f"stream_options.{name} must be true or false", f"stream_options.{name}", "invalid_type")
    return bool(options.get("include_usage"))


def _json_schema(body: dict) -> dict | None:
    """The schema `response_format` asks the answer to follow (None: free text)."""
    form = body.get("response_format")
    if form is None:
        return None
    if not isinstance(form, dict) or form.get("type") not in RESPONSE_FORMATS:
        raise bad('response_format must be {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", '
                  '"json_schema": {"name": ..., "schema": {...}}}', "response_format", "invalid_type")
    if form["type"] == "text":
        return None
    if form["type"] == "json_object":
        return dict(JSON_OBJECT_SCHEMA)
    spec = form.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise bad('response_format json_schema needs {"json_schema": {"name": ..., "schema": {...}}}',
                  "response_format.json_schema", "invalid_type")
    try:
        check_json_schema(spec["schema"])
    except SchemaError as error:
        raise bad(f"response_format.json_schema.schema: {error}", "response_format.json_schema.schema",
                  "invalid_schema") from None
    return spec["schema"]


def _logprobs(body: dict) -> dict:
    if not isinstance(body.get("logprobs", False), (bool, type(None))):
        raise bad("logprobs must be true or false", "logprobs", "invalid_type")
    top = _number(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, integer=True)
    if not body.get("logprobs"):
        if top:
            raise bad("top_logprobs needs logprobs: true", "top_logprobs")
        return {}
    return {"logprobs": True, "top_logprobs": top or 0}


def _generation(body: dict) -> dict:
    if body.get("n") not in (None, 1):
        raise bad("this server returns one choice; n must be 1", "n")
    budget = _number(body, "max_completion_tokens", 1, MAX_COMPLETION_TOKENS, integer=True)
    if budget is None:
        budget = _number(body, "max_tokens", 1, MAX_COMPLETION_TOKENS, integer=True)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS
                             or not all(isinstance(text, str) and 0 < len(text) <= 256 for text in stop)):
        raise bad(f"stop must be a string or a list of at most {MAX_STOP_STRINGS} non-empty strings", "stop",
                  "invalid_type")
    generation = {"max_new_tokens": budget, "temperature": _number(body, "temperature", 0, 2),
                  "top_p": _number(body, "top_p", 1e-6, 1), "seed": _number(body, "seed", -2**63, 2**63 - 1, True),
                  "stop": stop, "frequency_penalty": _number(body, "frequency_penalty", -2, 2),
                  "presence_penalty": _number(body, "presence_penalty", -2, 2),
                  "repetition_penalty": _number(body, "repetition_penalty", 0.01, 10),
                  "json_schema": _json_schema(body),
                  **_logprobs(body)}
    return {key: value for key, value in generation.items() if value is not None}


def _unknown(given: dict, known, where: str) -> None:
    unknown = [name for name in given if name not in known]
    if unknown:
        raise bad(f"{where}: unknown field {unknown[0]!r}; known: {', '.join(known)}", f"{where}.{unknown[0]}")


def _chapter_options(body: dict, limits) -> ChapterOptions | None:
    """The request's `ChapterOptions` (None: a plain request). A segment is one request, so
    it and its overlap stay within one request's duration cap."""
    extension = body.get("vlm_app")
    if extension is None:
        return None
    if not isinstance(extension, dict):
        raise bad('vlm_app must be an object like {"chapters": {"segment_seconds": 60}}', "vlm_app", "invalid_type")
    _unknown(extension, EXTENSION_FIELDS, "vlm_app")
    options = extension.get("chapters")
    if options is None:
        return None
    if not isinstance(options, dict):
        raise bad('vlm_app.chapters must be an object: {} for the defaults, or {"segment_seconds": S, "overlap": S}',
                  "vlm_app.chapters", "invalid_type")
    _unknown(options, CHAPTER_OPTIONS, "vlm_app.chapters")
    cap = (limits or DEFAULT_LIMITS).max_duration_seconds
    seconds = _number(options, "segment_seconds", 1, cap, within="vlm_app.chapters.")
    overlap = _number(options, "overlap", 0, cap, within="vlm_app.chapters.")
    return ChapterOptions(seconds, overlap or 0.0)


def _check_chapters(messages: list[dict], video_options: dict) -> None:
    """A chapters request is an optional system message (text, for every segment and the summary), then one user
    turn with one video, by URL, over its whole length."""
    system, turns = (messages[:1], messages[1:]) if messages and messages[0]["role"] == "system" else ([], messages)
    if len(turns) != 1 or turns[0]["role"] != "user":
        raise bad("vlm_app.chapters takes one user message (the video and an optional prompt for each part), after "
                  "an optional system message; drop the other messages", "messages")
    if any(item["type"] != "text" for message in system for item in message["content"]):
        raise bad("the system message of a vlm_app.chapters request is text only", "messages")
    kinds = [item["type"] for item in turns[0]["content"]]
    if kinds.count("video") != 1 or "image" in kinds:
        raise bad(f"vlm_app.chapters describes one video; this message has {kinds.count('video')} video(s) and "
                  f"{kinds.count('image')} image(s)", "messages")
    if next(item["video"] for item in turns[0]["content"] if item["type"] == "video").startswith("data:"):
        # every segment's resume key names the source: a data: URI would be copied once per segment
        raise bad("vlm_app.chapters needs the video by URL (http(s):// or file://), not a data: URI", "messages",
                  "invalid_url")
    cut = [name for name in ("video_start", "video_end") if name in video_options]
    if cut:
        raise bad(f"vlm_app.chapters cover the whole video, part by part; drop {', '.join(cut)} from the media "
                  "options, or cut the video first", "vlm_app.chapters")


def _check_chapter_generation(body: dict) -> None:
    """A chapters answer is chapter lines and a summary from many requests: no one JSON document, no one token list."""
    for name in ("logprobs", "response_format"):
        if body.get(name) not in (None, False, {"type": "text"}):
            raise bad(f"{name} is not supported with vlm_app.chapters (its answer comes from one request per part and "
                      "a summary); ask for the chapters without it", name, "unsupported_field")


def parse_chat(body: Any, limits, memory: MemoryLimit = MemoryLimit()) -> ChatCall:
    """The checked call of a /v1/chat/completions body; ApiError (400) on any mistake. The model name is
    returned as given: the caller refuses names not on offer. `memory`: the operator's `MemoryLimit`; no field of
    the body reaches it."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", None, "invalid_type")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model must be a string naming one of GET /v1/models", "model", "invalid_type")
    if not isinstance(body.get("stream", False), bool):
        raise bad("stream must be true or false", "stream", "invalid_type")
    _refuse_unsupported(body)
    include_usage = _stream_options(body)
    chapters = _chapter_options(body, limits)
    video_options, image_options = _media_options(body)
    messages, generation = _messages(body, image_options), _generation(body)
    if chapters is not None:
        _check_chapters(messages, video_options)
        _check_chapter_generation(body)
    try:
        request = Request(messages, video_options, generation, limits, memory=memory)
    except VlmAppError as error:  # the message schema's own checks (roles, order)
        raise bad(str(error), "messages") from None
    return ChatCall(model, request, body.get("stream", False), include_usage, chapters)


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(record: dict) -> dict:
    counts = record["num_tokens"] or {"text": 0, "visual": 0, "total": 0}
    completion = (record["timings"] or {}).get("new_tokens", 0)
    return {"prompt_tokens": counts["total"], "completion_tokens": completion,
            "total_tokens": counts["total"] + completion,
            "prompt_tokens_details": {"text_tokens": counts["text"], "visual_tokens": counts["visual"]}}


def extension(record: dict) -> dict:
    """The `vlm_app` object: what the model was shown and what the answer cost (the estimated peak beside the
    measured one in `timings`), and what the memory fit and the media pipeline changed (`notes`). A chapters
    record adds its chapters, summary, duration, options, each segment's `SEGMENT_FIELDS` and its `error` (a
    failed segment leaves its chapter empty; the rest go on); frames, tokens and timings are over all requests."""
    shown = {"media": record["media"], "frames_indices": record["frames_indices"],
             "timestamps": record["timestamps"], "num_tokens": record["num_tokens"], "timings": record["timings"],
             "sampling": record["sampling"], "memory_estimate_bytes": record["memory_estimate_bytes"],
             "max_memory_bytes": record["max_memory_bytes"], "notes": record["notes"],
             "model_info": {key: record["model_info"][key] for key in ("family", "revision", "device", "dtype")}}
    if "chapters" in record:
        shown.update({name: record[name] for name in ("chapters", "summary", "duration", "chapter_options",
                                                      "cancelled", "error")},
                     segments=[{name: segment[name] for name in SEGMENT_FIELDS} for segment in record["segments"]])
    return shown


def finish_reason(record: dict) -> str:
    return "length" if record["finish_reason"] == "length" else "stop"


def completion(call_id: str, model: str, record: dict) -> dict:
    return {"id": call_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": record["answer"]},
                         "finish_reason": finish_reason(record), "logprobs": logprobs(record.get("logprobs"))}],
            "usage": usage(record), "vlm_app": extension(record)}


def logprobs(entries: list[dict] | None) -> dict | None:
    """A choice's `logprobs`: OpenAI's object of per-token entries (`vlm_app.decoding`), or null when not asked."""
    return None if entries is None else {"content": entries, "refusal": None}


def chunk(call_id: str, model: str, delta: dict, finish: str | None = None, entries: list[dict] | None = None,
          **extra) -> dict:
    return {"id": call_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs(entries)}],
            **extra}
