"""The one request layer: a `Request` (messages, media options, generation options, limits) → a record, or a
stream of text pieces and then the record. The CLI, the Python API, the Ray engine, the web app and the HTTP
server all call it; none builds records or stats on its own.

    request = Request(conversation("What happens?", video="clip.mp4"), media={"fps": 1},
                      generation={"max_new_tokens": 64, "stop": ["\\n\\n"]})
    record = execute(adapter, request)                  # or: run = Run(adapter, request); for piece in run: ...

The record (see `build_record`) has one stats schema: `timings` is the adapter's `Timings.as_dict()`
(preprocess_s, prefill_s = time to first token, decode_s, new_tokens, tokens_per_s, peak_memory_bytes).
User mistakes (`VlmAppError`) become the record's `error`; bugs propagate. Running out of memory (GPU or RAM)
anywhere in prepare or generation is not a bug: `MemoryGuard` turns it into `OutOfMemory`, after releasing what
the failed step held, so the record gets the error and the next request runs normally.
"""

from __future__ import annotations

import math
import os
import re
import sys
import threading
import traceback
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

from vlm_app.decoding import MAX_TOP_LOGPROBS, answer_logprobs
from vlm_app.errors import LimitError, OptionsError, OutOfMemory, VlmAppError
from vlm_app.grounding import parse_grounding
from vlm_app.memory import Fit, MemoryEstimate, MemoryLimit, RequestShape, format_bytes, resolve_limit
from vlm_app.messages import conversation, media_items, normalize

GENERATION_KEYS = ("max_new_tokens", "do_sample", "temperature", "top_p", "seed", "stop", "repetition_penalty",
                   "frequency_penalty", "presence_penalty", "logprobs", "top_logprobs", "json_schema")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}  # a GIF goes as a video: most move
AUDIO_SUFFIXES = {".wav", ".mp3", ".m4a", ".flac", ".ogg", ".opus"}  # sound alone: an audio item
DEFAULT_MAX_NEW_TOKENS = 256
TEMPLATE_TOKENS = 64  # at least the chat template's own tokens around the prompt (the pre-flight errs high)
# what allocation failures say, lower-cased: torch's CUDA/MPS allocators, cuBLAS, cuDNN, the CPU allocator
OUT_OF_MEMORY_MARKERS = ("out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed",
                         "can't allocate memory", "not enough memory")
OUT_OF_MEMORY_ADVICE = ("To fit: fewer frames or pixels per frame (--max-frames/--nframes, --max-pixels), "
                        "--max-memory, a smaller model, or --chapters for a long video.")


@dataclass
class Request:
    """One question to one model.

    messages:   the conversation (the `vlm_app.messages` schema; per-item options win over `media`)
    media:      video sampling options for every video (load_video's names: fps, nframes, max_pixels, ...)
    generation: max_new_tokens, temperature, top_p, seed, do_sample, stop (a string or a list of strings),
                repetition_penalty (transformers' multiplicative one, prompt included), frequency_penalty and
                presence_penalty (OpenAI's additive ones, -2 to 2), logprobs (true: the record's `logprobs`, per
                answer token) with top_logprobs (0-20 alternatives each), json_schema (the answer is JSON valid
                under it; {"type": "object"}: any JSON object) - see `vlm_app.decoding`
    limits:     the media pipeline's `Limits` (None: the defaults, local files and addresses allowed)
    source:     what the record names as its input (default: the first media item's source)
    memory:     its `memory.MemoryLimit` (default: "auto", videos lowered to fit)
    """

    messages: list[dict]
    media: dict = field(default_factory=dict)
    generation: dict = field(default_factory=dict)
    limits: Any = None
    source: str | None = None
    memory: MemoryLimit = field(default_factory=MemoryLimit)

    def __post_init__(self):
        self.messages = normalize(self.messages)
        check_generation(self.generation)

    @property
    def stop(self) -> list[str]:
        stop = self.generation.get("stop") or []
        return [stop] if isinstance(stop, str) else [text for text in stop if text]

    @property
    def max_new_tokens(self) -> int:
        return int(self.generation.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)

    def generate_options(self) -> dict:
        """The keywords for `adapter.stream` (stop strings are applied here, not by the model)."""
        options = {key: value for key, value in self.generation.items() if key != "stop" and value is not None}
        return {**options, "max_new_tokens": self.max_new_tokens}

    def about(self, source: Any) -> "Request":
        """The same question about another video, image or sound file (a folder run asks it of each video)."""
        kind = "audio" if is_audio(source) else "image" if is_image(source) else "video"

        def item_about(item: dict) -> dict:
            if item["type"] not in ("video", "image", "audio"):
                return item
            options = {key: value for key, value in item.items() if key not in ("type", item["type"])}
            return {"type": kind, kind: source, **(options if item["type"] == kind else {})}

        messages = [{**message, "content": [item_about(item) for item in message["content"]]}
                    for message in self.messages]
        return replace(self, messages=messages, source=None)

    def label(self) -> str | None:
        if self.source is not None:
            return self.source
        items = media_items(self.messages)
        return str(items[0][items[0]["type"]]) if items else None

    def prompt(self) -> str:
        """The text of the last user turn."""
        items = self.messages[-1]["content"]
        return "\n".join(item["text"] for item in items if item["type"] == "text")

    def system(self) -> str | None:
        """The text of the system prompt (the first message, when it is one)."""
        first = self.messages[0] if self.messages else None
        if first is None or first["role"] != "system":
            return None
        return "\n".join(item["text"] for item in first["content"] if item["type"] == "text")


def check_generation(generation: dict) -> None:
    """Refuse generation options a model would misread or silently ignore (every front door passes here)."""
    unknown = sorted(set(generation) - set(GENERATION_KEYS))
    if unknown:
        raise OptionsError(f"unknown generation option(s) {', '.join(unknown)}; known: {', '.join(GENERATION_KEYS)}")
    for key, value in generation.items():
        valid, wanted = GENERATION_CHECKS[key]
        if value is not None and not valid(value):
            raise OptionsError(f"{key} must be {wanted}, got {value!r}")
    if generation.get("json_schema") is not None:
        from vlm_app.decoding import SchemaError, check_json_schema

        try:
            check_json_schema(generation["json_schema"])
        except SchemaError as error:
            raise OptionsError(f"json_schema: {error}") from None


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


GENERATION_CHECKS = {  # (valid, what a valid value is)
    "max_new_tokens": (lambda value: _whole(value) and value >= 1, "a whole number of at least 1"),
    "temperature": (lambda value: _real(value) and 0 <= value < math.inf, "a number of at least 0 (0: greedy)"),
    "top_p": (lambda value: _real(value) and 0 < value <= 1, "a number above 0 and at most 1"),
    "seed": (lambda value: _whole(value) and -2**63 <= value < 2**63, "a whole number within 64 bits"),
    "do_sample": (lambda value: isinstance(value, bool), "true or false"),
    "stop": (lambda value: isinstance(value, str) or isinstance(value, (list, tuple))
             and all(isinstance(text, str) for text in value), "a string or a list of strings"),
    "repetition_penalty": (lambda value: _real(value) and 0 < value <= 10, "a number above 0 and at most 10 (1: none)"),
    "frequency_penalty": (lambda value: _real(value) and -2 <= value <= 2, "a number from -2 to 2"),
    "presence_penalty": (lambda value: _real(value) and -2 <= value <= 2, "a number from -2 to 2"),
    "logprobs": (lambda value: isinstance(value, bool), "true or false"),
    "top_logprobs": (lambda value: _whole(value) and 0 <= value <= MAX_TOP_LOGPROBS,
                     f"a whole number from 0 to {MAX_TOP_LOGPROBS}"),
    "json_schema": (lambda value: isinstance(value, dict), 'a JSON schema object ({"type": "object"}: any object)'),
}


def is_image(source: Any) -> bool:
    """Whether a source names a still image (by its file extension) rather than a video."""
    from PIL import Image

    if isinstance(source, (str, os.PathLike)):
        return Path(urlparse(os.fspath(source)).path).suffix.lower() in IMAGE_SUFFIXES
    return isinstance(source, Image.Image)


def is_audio(source: Any) -> bool:
    """Whether a source names a sound file (by its extension): an audio item, for the models that hear."""
    return isinstance(source, (str, os.PathLike)) and \
        Path(urlparse(os.fspath(source)).path).suffix.lower() in AUDIO_SUFFIXES


def one_turn(prompt: str, source: Any, media: dict | None = None, generation: dict | None = None,
             limits=None, label: str | None = None, memory: MemoryLimit = MemoryLimit()) -> Request:
    """The request asking `prompt` about one image, video or sound file (an already sampled video passes through)."""
    if is_audio(source):
        messages = normalize([{"role": "user", "content": [{"type": "audio", "audio": source},
                                                           {"type": "text", "text": prompt}]}])
    else:
        messages = conversation(prompt, image=source) if is_image(source) else conversation(prompt, video=source)
    return Request(messages, dict(media or {}), dict(generation or {}), limits,
                   str(label if label is not None else source), memory)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation failure: Python's MemoryError, torch's OutOfMemoryError, or a RuntimeError
    of an allocator (CUDA, MPS, cuBLAS, cuDNN, CPU) saying so. Anything else is a bug and stays one."""
    if isinstance(error, MemoryError):
        return True
    torch = sys.modules.get("torch")  # before torch is imported, no torch error can exist
    if torch is not None and isinstance(error, torch.cuda.OutOfMemoryError):  # = torch.OutOfMemoryError (2.5+)
        return True
    return isinstance(error, RuntimeError) and any(marker in str(error).lower() for marker in OUT_OF_MEMORY_MARKERS)


def out_of_memory_message(stage: str, device: Any, error: BaseException) -> str:
    """Where memory ran out (the GPU torch names, else `device`; RAM for host allocations), in which stage, how
    much was asked for when the error says, and what to shrink."""
    text = " ".join(str(error).split())
    gpu = re.search(r"GPU (\d+) has", text)
    if isinstance(error, MemoryError) or "cpuallocator" in text.lower():
        where = "in RAM"
    elif gpu:
        where = f"on cuda:{gpu.group(1)}"
    else:
        where = "in RAM" if str(device).startswith("cpu") else f"on {device}"
    asked = re.search(r"(?:tried|unable) to allocate ([\d.]+ ?\w+)", text, re.IGNORECASE)
    failed = f": allocating {asked.group(1)} failed" if asked else ""
    return f"out of memory {where} while {stage}{failed}. {OUT_OF_MEMORY_ADVICE}"


class MemoryGuard:
    """`with MemoryGuard(stage, device):` an out-of-memory error inside (see `is_out_of_memory`) becomes
    `OutOfMemory` naming the stage and the device. First the memory of the failed step is let go: the locals of
    every finished frame of its traceback (activations, KV cache, decoded frames), what `drop` releases (the
    caller's own references), then `runtime.release_memory` (gc and the accelerator caches). Set `stage` inside
    the block as the work moves on. Every other error passes untouched."""

    def __init__(self, stage: str, device: Any, drop: Callable[[], None] | None = None):
        self.stage, self.device, self.drop = stage, device, drop

    def __enter__(self) -> "MemoryGuard":
        return self

    def __exit__(self, kind, error, trace) -> bool:
        if error is None or not is_out_of_memory(error):
            return False
        from vlm_app.runtime import release_memory

        message = out_of_memory_message(self.stage, self.device, error)
        traceback.clear_frames(trace)  # the frame still running (the `with`'s own) keeps its locals
        if self.drop is not None:
            self.drop()
        release_memory()
        raise OutOfMemory(message) from error


@dataclass(frozen=True)
class ModelMemory:
    """What the memory fit needs of a loaded model: the limit in bytes (None: no limit), its weights, the bytes of
    one activation element, its device."""

    limit: int | None
    weights_bytes: int
    element_bytes: int
    device: str


def model_memory(adapter, max_memory) -> ModelMemory:
    """The loaded model's figures, with `max_memory` ("auto" included) resolved on its device now."""
    from vlm_app.runtime import model_bytes

    weights, device = model_bytes(adapter), str(adapter.device)
    return ModelMemory(resolve_limit(max_memory, device, weights), weights, adapter.model.dtype.itemsize, device)


def memory_fit(adapter, request: Request, memory: ModelMemory) -> Fit | None:
    """The pre-flight of `request` under `memory.limit`, for the model `adapter` describes, with the weights, the
    element bytes and the device of `memory`: videos are fitted as they are probed, on top of the prompt's text and
    the answer budget. None without a limit, or with `fit=False`. The request layer passes its loaded model's
    figures; the Ray decode stage, which has no model, those its replicas measured (`distributed.MemoryBoard`)."""
    if memory.limit is None or not request.memory.fit:
        return None
    text = sum(len(adapter.tokenizer(item["text"]).input_ids) for message in request.messages
               for item in message["content"] if item["type"] == "text")
    estimate_of = partial(adapter.memory_estimate, weights_bytes=memory.weights_bytes,
                          element_bytes=memory.element_bytes, device=memory.device)
    return Fit(estimate_of, adapter.video_shape, adapter.fit_rules, memory.limit,
               RequestShape(text_tokens=text + TEMPLATE_TOKENS, max_new_tokens=request.max_new_tokens))


class Run:
    """One request on one adapter. `prepare()` samples the media and builds the inputs (raising `VlmAppError` on
    a user mistake); iterating yields the answer's text pieces (stop strings cut the answer and stop the model);
    `record` is the finished record. Setting `cancel` stops generation within one token."""

    def __init__(self, adapter, request: Request, cancel: threading.Event | None = None):
        self.adapter = adapter  # or a function that loads it, called by `prepare` (load failures are the run's)
        self.request = request
        self.cancel = cancel or threading.Event()
        self.prepared = None
        self.generation = None
        self.answer = ""
        self.stopped_by_text = False
        self.error: VlmAppError | None = None
        self.memory_estimate: MemoryEstimate | None = None
        self.limit: int | None = None  # the request's memory limit in bytes, once resolved
        self.notes: list[str] = []  # what the request layer changed, and why (the memory fit)
        self.stream = None  # the adapter's `Stream`, once generating (or a batch's row: `vlm_app.batching` sets it)
        self._logprobs_given, self._logprobs_bytes = 0, 0

    def prepare(self):
        if callable(self.adapter):
            self.adapter = self.adapter()
        if self.prepared is None:
            _check_answer_budget(self.adapter, self.request.max_new_tokens)
            fit = self._memory_fit()
            with MemoryGuard("preparing the inputs (decoding the media, the processor)", self.adapter.device):
                self.prepared = self.adapter.prepare(self.request.messages,
                                                     max_new_tokens=self.request.max_new_tokens,
                                                     limits=self.request.limits,
                                                     fit=fit.fit_video if fit is not None else None,
                                                     **self.request.media)
            self.notes += fit.notes if fit is not None else []
            shape = self.adapter.prepared_shape(self.prepared, self.request.max_new_tokens)
            self.memory_estimate = self.adapter.memory_estimate(shape)
            self._note_excess(fit)
        return self.prepared

    def _memory_fit(self) -> Fit | None:
        memory = model_memory(self.adapter, self.request.memory.max_memory)
        self.limit = memory.limit
        return memory_fit(self.adapter, self.request, memory)

    def _note_excess(self, fit: Fit | None) -> None:
        total = self.memory_estimate.total
        if self.limit is not None and total > self.limit:
            kept = "--no-fit kept the reference budget" if fit is None else "images and text are not lowered"
            self.notes.append(f"memory: the estimated peak, {format_bytes(total)}, is over the "
                              f"{format_bytes(self.limit)} limit ({kept}); it may run out of memory")

    def __iter__(self) -> Iterator[str]:
        self.prepare()
        counts = self.prepared.num_tokens
        prompt = f"{counts.total}-token prompt, {counts.visual} visual"
        with MemoryGuard(f"reading the prompt (prefill; {prompt})", self.adapter.device, self._drop_inputs) as guard:
            stream = self.stream = self.stream or self.adapter.stream(self.prepared, cancel=self.cancel,
                                                                      **self.request.generate_options())
            try:
                for piece in self._until_stop(stream):
                    guard.stage = f"generating the answer ({prompt})"
                    yield piece
            finally:
                stream.close()
        self.generation = stream.generation

    def _drop_inputs(self) -> None:
        """Let go of the model inputs (on the model's device) after a failure; what was shown stays for the record."""
        self.prepared.inputs.clear()

    def _until_stop(self, pieces: Iterator[str]) -> Iterator[str]:
        """Pass text on, holding back a tail that could be the start of a stop string; at a stop string, end
        the answer before it and stop the model."""
        stops = self.request.stop
        hold = max(map(len, stops), default=1) - 1
        text, sent = "", 0
        for piece in pieces:
            text += piece
            found = [index for index in (text.find(stop, max(0, sent - hold)) for stop in stops) if index >= 0]
            if found:
                end = min(found)
                self.answer, self.stopped_by_text = text[:end], True
                self.cancel.set()
                if end > sent:
                    yield text[sent:end]
                return
            if len(text) - hold > sent:
                yield text[sent:len(text) - hold]
                sent = len(text) - hold
        self.answer = text
        if len(text) > sent:
            yield text[sent:]

    def logprobs_upto(self, text: str) -> list[dict] | None:
        """The log-probabilities (`vlm_app.decoding`) of the tokens that make up `text`, the answer so far, beyond
        those given by earlier calls (a streamed answer's pieces); None when the request did not ask for them."""
        entries = self.stream.decoding.logprobs if self.stream is not None else None
        if entries is None:
            return None
        first, size = self._logprobs_given, len(text.encode())
        while self._logprobs_given < len(entries) and self._logprobs_bytes < size:
            self._logprobs_bytes += len(entries[self._logprobs_given]["bytes"])
            self._logprobs_given += 1
        return entries[first:self._logprobs_given]

    def finish_reason(self) -> str | None:
        """'stop' (end of answer or a stop string), 'length' (the token budget), 'cancelled', or None."""
        if self.generation is None:
            return None
        if self.stopped_by_text:
            return "stop"
        if self.generation.cancelled:
            return "cancelled"
        return "length" if self.generation.timings.new_tokens >= self.request.max_new_tokens else "stop"

    @property
    def record(self) -> dict:
        return build_record(self.adapter, self.request, self, str(self.error) if self.error is not None else None)

    def execute(self, on_text: Callable[[str], None] | None = None) -> dict:
        """Run to the end and return the record; a user mistake becomes the record's `error`."""
        try:
            for piece in self:
                if on_text is not None:
                    on_text(piece)
        except VlmAppError as error:
            if callable(self.adapter):  # the model did not load: there is nothing to record
                raise
            self.error = error
        return self.record


def execute(adapter, request: Request, on_text: Callable[[str], None] | None = None,
            cancel: threading.Event | None = None) -> dict:
    """The record of `request` on `adapter` (text pieces to `on_text` as they come)."""
    return Run(adapter, request, cancel).execute(on_text)


def compare(models: list[str], request: Request, adapter_for: Callable[[str], Any],
            new_cancel: Callable[[], threading.Event] = threading.Event) -> Iterator[tuple[str, Run | None]]:
    """The same request on each model in turn, one model in memory at a time when `adapter_for` loads afresh.
    Yields (model, Run) for the caller to iterate or execute (the run loads its model when it starts; its cancel
    flag comes from `new_cancel`). A run cancelled by its flag (Stop) ends the comparison: the models not yet run
    come as (model, None)."""
    from vlm_app.runtime import release_memory

    stopped = False
    for model in models:
        if stopped:
            yield model, None
            continue
        run = Run(lambda model=model: adapter_for(model), request, new_cancel())
        yield model, run
        stopped = run.generation is not None and run.record["cancelled"]
        run.adapter = None  # the caller is done with this model: free it before the next one loads
        release_memory()


def shown_media(prepared) -> list[dict]:
    """What each image or video item was shown as: frames and timestamps for videos (and whether the model heard
    their soundtrack: its seconds and tokens), the size for images, seconds and tokens for audio."""
    from vlm_app.media import SampledVideo
    from vlm_app.media.audio import Soundtrack

    shown = []
    for item in prepared.media if prepared is not None else []:
        if isinstance(item, SampledVideo):
            shown.append({"type": "video", "frames_indices": list(item.frames_indices),
                          "timestamps": [round(t, 6) for t in item.timestamps], "sample_fps": item.sample_fps,
                          "audio": item.soundtrack.summary() if item.soundtrack is not None else {"used": False},
                          "notes": list(item.notes)})
        elif isinstance(item, Soundtrack):
            shown.append({"type": "audio", **item.summary()})
        else:
            shown.append({"type": "image", "size": list(getattr(item, "image", item).size)})
    return shown


def build_record(adapter, request: Request, run: Run | None = None, error: str | None = None) -> dict:
    """The JSON-ready record of one request (also for failures: then `error` is set and the rest may be
    empty). Top-level frames and timestamps are those of the first video; `media` lists every item.
    `boxes`: the answer's grounding boxes (DeepSeek-VL2), on the model's 0-999 grid. `logprobs`: when asked, one
    entry per generated token in OpenAI's shape (token, logprob, bytes, top_logprobs).
    `memory_estimate_bytes`: the pre-flight's peak for what was prepared (beside `timings.peak_memory_bytes`,
    measured); `memory_estimate` breaks it down. `notes`: what the request layer and the media pipeline changed."""
    prepared = run.prepared if run is not None else None
    media = shown_media(prepared)
    video = next((item for item in media if item["type"] == "video"), {})
    generation = run.generation if run is not None else None
    estimate = run.memory_estimate if run is not None else None
    answered = generation is not None
    policy = request.media.get("policy") or adapter.policy
    answer, reasoning = adapter.split_reasoning(run.answer) if answered else (None, None)
    return {
        "source": request.label(),
        "model": adapter.info.model_id,
        "answer": answer,
        "reasoning": reasoning,
        "boxes": [box.as_dict() for box in parse_grounding(answer)] if answered else [],
        "logprobs": answer_logprobs(generation.logprobs, run.answer) if answered else None,
        "error": error,
        "prompt": request.prompt(),
        "frames_indices": video.get("frames_indices", []),
        "timestamps": video.get("timestamps", []),
        "sample_fps": video.get("sample_fps"),
        "media": media,
        "num_visual_tokens": prepared.num_tokens.visual if prepared is not None else 0,
        "num_tokens": prepared.num_tokens.as_dict() if prepared is not None else None,
        "timings": generation.timings.as_dict() if generation is not None else None,
        "cancelled": generation.cancelled and not run.stopped_by_text if answered else False,
        "finish_reason": run.finish_reason() if answered else None,
        "model_info": adapter.info.as_dict(),
        "sampling": {"policy": policy, **adapter.sampling_defaults(policy), **request.media},
        "generation": {key: request.generation.get(key) for key in GENERATION_KEYS},
        "memory_estimate_bytes": estimate.total if estimate is not None else None,
        "memory_estimate": estimate.as_dict() if estimate is not None else None,
        "max_memory_bytes": run.limit if run is not None else None,
        "notes": (run.notes if run is not None else []) + [note for item in media for note in item.get("notes", [])],
    }


def _check_answer_budget(adapter, max_new_tokens: int) -> None:
    """Before the memory pre-flight, which would otherwise report a budget past the context as memory it needs
    (the prompt and the answer together are checked once the prompt is built, `Adapter.check_context`)."""
    if max_new_tokens >= adapter.context_tokens:
        raise LimitError(f"an answer of {max_new_tokens} tokens leaves no room in the model's {adapter.context_tokens}-"
                         "token context for the prompt; lower max_new_tokens (--max-new-tokens)")


def stats(record: dict) -> dict:
    """The record's costs as one flat dict (the web app's and the server's stats): what was shown (and heard: the
    seconds of sound a model that hears got, None when none), then
    `timings` under its own names, the estimated peak beside the measured one, and the record's notes (what the
    memory fit and the media pipeline changed). A chapters record's frames are those of all its segments."""
    counts = record["num_tokens"] or {}
    frames = (len(record["frames_indices"]) if "chapters" in record else
              sum(len(item["frames_indices"]) if item["type"] == "video" else int(item["type"] == "image")
                  for item in record["media"]))
    sounds = [item.get("audio", item) for item in record["media"] if item["type"] in ("video", "audio")]
    heard = [sound["seconds"] for sound in sounds if sound.get("used")]
    from vlm_app.lora import lora_label

    return {"model": record["model"], "family": record["model_info"]["family"],
            "lora": lora_label(record["model_info"].get("lora_adapter")), "frames": frames,
            "visual_tokens": counts.get("visual", 0), "text_tokens": counts.get("text", 0),
            "heard_s": round(sum(heard), 3) if heard else None,
            **(record["timings"] or {}), "memory_estimate_bytes": record["memory_estimate_bytes"],
            "cancelled": record["cancelled"], "notes": list(record["notes"])}
