"""The adapter interface every model family implements, and its result types.

Data flow: messages -> `prepare` (media pipeline + processor) -> `Prepared` -> `forward` / `generate` / `stream`.
A family implements only loading hooks (`load_model`, `load_processor`, `load_config`, when the Auto classes do not
fit) and `build_inputs` (its processor call); prepare, forward, generate and stream live here, once. Nothing here
knows about Gradio or the CLI.

Streaming: `adapter.stream(prepared, cancel=event, ...)` returns a `Stream`. Iterating it yields text pieces as
they are decoded; when iteration ends (or after `stream.close()`), `stream.generation` holds the finished
`Generation` (text, token ids, timings, cancelled). Setting `cancel` (or closing the stream) stops the model
within one token: a stopping criterion checks the event after every decoding step.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

import torch

from vlm_app import memory
from vlm_app.decoding import Decoding
from vlm_app.errors import LimitError, OptionsError
from vlm_app.media.options import without_policy
from vlm_app.media.policies import SamplingPolicy, get_policy
from vlm_app.memory import FitRules, MemoryEstimate, ModelDims, RequestShape
from vlm_app.messages import for_template, media_items, media_options, normalize, refuse_placeholders
from vlm_app.runtime import ModelInfo, load_adapter, model_bytes, reading_checkpoint


@dataclass
class TokenCounts:
    text: int
    visual: int

    @property
    def total(self) -> int:
        return self.text + self.visual

    def as_dict(self) -> dict[str, int]:
        return {"text": self.text, "visual": self.visual, "total": self.total}


@dataclass
class VisualMap:
    """One row per visual token of the prompt, in sequence order. All tensors have shape (num_visual_tokens,).

    positions:   index of the token in `input_ids[0]`
    media_index: which image/video of the conversation (0-based, in message order)
    frame_index: index into that item's sampled frames (the first frame of a temporal pair for Qwen); -1 for images
    tile_index:  tile/view of an image or frame (0 = global view or the only view)
    timestamp:   seconds into the source video of `frame_index`; NaN for images
    """

    positions: torch.Tensor
    media_index: torch.Tensor
    frame_index: torch.Tensor
    tile_index: torch.Tensor
    timestamp: torch.Tensor

    COLUMNS: ClassVar[tuple[str, ...]] = ("positions", "media_index", "frame_index", "tile_index", "timestamp")

    def __len__(self) -> int:
        return int(self.positions.numel())

    def rows(self) -> list[dict[str, Any]]:
        """The map as JSON-ready rows, one per visual token."""
        columns = {name: getattr(self, name).tolist() for name in self.COLUMNS}
        return [dict(zip(columns, values)) for values in zip(*columns.values())]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.COLUMNS}

    @classmethod
    def from_spans(cls, input_ids: torch.Tensor, spans: list[dict[str, Any]]) -> "VisualMap":
        """Build the map from per-media spans, in message order. Each span is a dict with
        `token_id`, `media_index`, `frame_index`, `tile_index`, `timestamp` (lists, one entry per visual token).
        The tokens of each span are the next unused occurrences of its token id in `input_ids[0]`."""
        ids = input_ids[0]
        next_use: dict[int, int] = {}
        rows = {name: [] for name in cls.COLUMNS}
        for span in spans:
            occurrences = (ids == span["token_id"]).nonzero().flatten()
            start = next_use.get(span["token_id"], 0)
            count = len(span["frame_index"])
            if start + count > len(occurrences):
                raise ValueError(f"prompt has fewer visual tokens than media item {span['media_index']} needs")
            next_use[span["token_id"]] = start + count
            rows["positions"] += occurrences[start:start + count].tolist()
            for name in ("media_index", "frame_index", "tile_index", "timestamp"):
                value = span[name]
                rows[name] += value if isinstance(value, list) else [value] * count
        order = sorted(range(len(rows["positions"])), key=rows["positions"].__getitem__)
        dtypes = {"timestamp": torch.float64}
        return cls(**{name: torch.tensor([values[i] for i in order], dtype=dtypes.get(name, torch.long))
                      for name, values in rows.items()})


@dataclass
class Prepared:
    """Everything a model call needs, plus what the model was shown.

    inputs:     the dict the model's forward/generate takes (input_ids (1, L), attention_mask (1, L), pixel tensors,
                grids), already on the model's device
    visual_map: which token came from which media item / frame / timestamp
    num_tokens: text and visual token counts of the prompt
    media:      the SampledVideo / SampledImage objects actually shown, in message order
    prompt:     the prompt text after the chat template (before the processor expands visual placeholders)
    timings:    seconds spent: {"media_s": decoding+sampling, "processor_s": ..., "preprocess_s": both}
    """

    inputs: dict[str, torch.Tensor]
    visual_map: VisualMap
    num_tokens: TokenCounts
    media: list[Any]
    prompt: str = ""
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class ForwardOutput:
    """logits (1, L, V); hidden_states: num_layers + 1 tensors (1, L, D), embeddings first; attentions on request."""

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    attentions: tuple[torch.Tensor, ...] | None
    visual_positions: torch.Tensor

    def visual_hidden(self, layer: int = -1) -> torch.Tensor:
        """Hidden states of the visual tokens at `layer`: (num_visual_tokens, D)."""
        if self.hidden_states is None:
            raise ValueError("forward was called without output_hidden_states=True")
        return self.hidden_states[layer][0, self.visual_positions.to(self.hidden_states[layer].device)]


@dataclass
class Timings:
    """Seconds unless named otherwise. peak_memory_bytes is the CUDA allocator peak of the call on GPU, the
    process's peak RSS during the call on CPU (Linux; since process start elsewhere)."""

    preprocess_s: float = 0.0
    prefill_s: float = 0.0           # time to first token
    decode_s: float = 0.0            # first token -> last token
    new_tokens: int = 0
    peak_memory_bytes: int = 0

    @property
    def tokens_per_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.decode_s > 0 and self.new_tokens > 1 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"preprocess_s": self.preprocess_s, "prefill_s": self.prefill_s, "decode_s": self.decode_s,
                "new_tokens": self.new_tokens, "tokens_per_s": self.tokens_per_s,
                "peak_memory_bytes": self.peak_memory_bytes}


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    timings: Timings
    cancelled: bool = False
    logprobs: list[dict] | None = None  # per answer token, in OpenAI's shape, when asked (`vlm_app.decoding`)


class _TokenRecorder:
    """A `generate` streamer (duck-typed BaseStreamer) that timestamps every new token, hands it to `on_token`
    (before anyone can see it) and optionally queues it."""

    def __init__(self, pieces: queue.Queue | None = None, on_token: Callable[[int], None] | None = None):
        self.token_ids: list[int] = []
        self.token_times: list[float] = []
        self._pieces = pieces
        self._on_token = on_token
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate first pushes the prompt
            self._prompt_seen = True
            return
        self.token_times.append(time.perf_counter())
        new = value.flatten().tolist()
        for token in new if self._on_token is not None else ():
            self._on_token(token)
        self.token_ids += new
        if self._pieces is not None:
            self._pieces.put(new)

    def end(self) -> None:
        if self._pieces is not None:
            self._pieces.put(None)


class _CancelOnEvent:
    """Stopping criterion: stop every sequence as soon as the event is set (checked after each token)."""

    def __init__(self, event: threading.Event):
        self.event = event
        self.fired = False  # whether it stopped generation (a stream sets the event again when it closes)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        self.fired = self.fired or self.event.is_set()
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)


class Stream:
    """Text pieces of one generation running in a background thread; `.generation` once finished."""

    def __init__(self, adapter: "Adapter", prepared: Prepared, cancel: threading.Event | None, options: dict):
        self.cancel = cancel or threading.Event()
        self.generation: Generation | None = None
        self.error: BaseException | None = None
        self._adapter = adapter
        self.decoding = Decoding.pop_from(options, adapter)  # `.logprobs` grows as tokens come
        self._pieces: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(prepared, options), daemon=True)
        self._thread.start()

    def _run(self, prepared: Prepared, options: dict) -> None:
        try:
            self.generation = self._adapter._generate(prepared, options, self.cancel, self._pieces, self.decoding)
        except BaseException as error:  # surfaced to the consumer in __iter__
            self.error = error
            self._pieces.put(None)

    def __iter__(self) -> Iterator[str]:
        ids: list[int] = []
        shown = ""
        try:
            while (new := self._pieces.get()) is not None:
                ids += new
                text = self._adapter.decode(ids)
                if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
                    continue
                if len(text) > len(shown):
                    yield text[len(shown):]
                    shown = text
        finally:
            self.close()
        if self.error is not None:
            raise self.error
        final = self.generation.text if self.generation else shown
        if len(final) > len(shown) and final.startswith(shown):
            yield final[len(shown):]

    def close(self) -> None:
        """Stop generating (if still running) and wait for the worker to finish."""
        self.cancel.set()
        self._thread.join()

    @property
    def timings(self) -> Timings | None:
        return self.generation.timings if self.generation else None


class Adapter:
    """One model family behind one small interface; a family's module holds everything specific to it.

    A subclass declares what the family claims (`family`, `model_types`, `short_names`, `hub_pattern`), its sampling
    `policies` (name -> factory; `policy` is the default), its tiny-checkpoint recipes (`tiny`, name -> "module:function") and
    real sizes (`real_sizes`, `real_size`), may override `load_model` / `load_processor` / `load_config`, and
    implements `build_inputs`, `visual_tokens`, `frame_labels` and the memory hooks. Construct with
    `Adapter.load(...)` or `vlm_app.load(...)`.
    """

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    short_names: ClassVar[dict[str, str]] = {}
    hub_pattern: ClassVar[str] = ""
    policies: ClassVar[dict[str, Callable[[], SamplingPolicy]]] = {}
    policy: ClassVar[str] = ""
    tiny: ClassVar[dict[str, str]] = {}
    real_sizes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model, processor, info: ModelInfo | None, config=None):
        self.model = model
        self.processor = processor
        self.info = info
        self.config = config if config is not None else model.config

    # ---- loading -------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, model_id_or_path: str, device: str = "auto", dtype: str = "auto", attn: str = "auto",
             **options) -> "Adapter":
        """Load through the runtime (device/dtype/attention choice, offline checks, quantization, LoRA)."""
        return load_adapter(model_id_or_path, device=device, dtype=dtype, attn=attn, adapter_class=cls, **options)

    @classmethod
    def load_model(cls, path: str, **from_pretrained_kwargs):
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_pretrained(path, **from_pretrained_kwargs)

    @classmethod
    def load_processor(cls, path: str):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path)

    @classmethod
    def load_config(cls, path: str):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(path)

    @classmethod
    def without_weights(cls, path: str) -> "Adapter":
        """The checkpoint's processor and config but no model: enough for `load_media`, which then samples exactly
        as the loaded adapter would (the Ray engine's decode workers)."""
        with reading_checkpoint(path, path):
            return cls(None, cls.load_processor(path), None, config=cls.load_config(path))

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def decode(self, token_ids: list[int]) -> str:
        """The answer text of generated ids, special tokens dropped."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def audio_positions(self, prepared: Prepared) -> torch.Tensor:
        """Where the prompt's audio tokens are (indices into `input_ids[0]`); none for a model that does not hear."""
        return torch.zeros(0, dtype=torch.long)

    @classmethod
    def sound_tokens(cls, seconds: float) -> int | None:
        """Tokens the family's models spend on `seconds` of sound, at their published settings (`inspect`); None
        for a family none of whose models hear."""
        return None

    def split_reasoning(self, text: str) -> tuple[str, str | None]:
        """(answer, reasoning) of a generated text; families whose models think aloud override this."""
        return text, None

    @property
    def num_layers(self) -> int:
        return getattr(self.config, "text_config", self.config).num_hidden_layers

    @property
    def context_tokens(self) -> int:
        """The longest prompt plus answer the language model takes."""
        return getattr(self.config, "text_config", self.config).max_position_embeddings

    # ---- inputs --------------------------------------------------------------------------------------------
    def prepare(self, messages: list[dict], max_new_tokens: int | None = None, limits=None, fit=None,
                **sampling_overrides) -> Prepared:
        """The model inputs for `messages`: their media sampled with the family's policy (`load_media`), then the
        family's processing (`build_inputs`), each timed. `max_new_tokens` is the answer budget the caller will
        generate with: a family whose prompt must leave room for the answer (DeepSeek-VL2 fits prompt and answer
        in 4096 tokens) sizes its frame count by it; the others ignore it. None: the family's default budget.
        `limits`: the media pipeline's `Limits` (None: its defaults); the server passes its fetch guard here.
        `fit`: each video's last word on its options once probed (`load_video(fit=...)`; the memory fit)."""
        messages = normalize(messages)
        started = time.perf_counter()
        media = self.load_media(messages, sampling_overrides, max_new_tokens, limits, fit)
        media_done = time.perf_counter()
        inputs, visual_map, prompt = self.build_inputs(messages, media, max_new_tokens)
        done = time.perf_counter()
        length = inputs["input_ids"].shape[1]
        self.check_context(length, max_new_tokens or 0)
        return Prepared(inputs=self._to_device(inputs), visual_map=visual_map,
                        num_tokens=TokenCounts(text=length - len(visual_map), visual=len(visual_map)),
                        media=media, prompt=prompt,
                        timings={"media_s": media_done - started, "processor_s": done - media_done,
                                 "preprocess_s": done - started})

    def check_context(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """LimitError when the prompt and the answer budget overflow the context: the model would run past the
        positions it knows, and a prompt that long (a client's megabytes of text) takes the CPU for minutes."""
        if prompt_tokens + max_new_tokens > self.context_tokens:
            raise LimitError(f"the prompt takes {prompt_tokens} tokens and the answer {max_new_tokens}, over the "
                             f"{self.context_tokens}-token context; use a shorter text, fewer frames (nframes/fps), "
                             "fewer or smaller images, or a smaller max_new_tokens")

    def build_inputs(self, messages: list[dict], media: list,
                     max_new_tokens: int | None) -> tuple[dict, VisualMap, str]:
        """The family's part of `prepare`: (model inputs, visual-token map, prompt text) for normalised messages
        and their sampled media, in order."""
        raise NotImplementedError

    def sampling_policy(self, options: dict | None = None) -> SamplingPolicy:
        """The policy a video with these load_video `options` is sampled with: its `policy` option (one of this
        family's) or the family's default."""
        name = (options or {}).get("policy") or self.policy
        if name not in self.policies:
            raise OptionsError(f"{self.family} samples video with the {' or '.join(self.policies)} policy, not "
                               f"{name!r}")
        return get_policy(self.policies[name]())

    def sampling_defaults(self, policy: str) -> dict:
        """Video options this checkpoint sets on top of the family's `policy` (e.g. its processor's frame cap)."""
        return {}

    def image_defaults(self) -> dict:
        """Image options this checkpoint sets on top of the family policy (e.g. its processor's pixel bounds)."""
        return {}

    def video_options(self, messages: list[dict], overrides: dict, item_options: dict | None = None,
                      max_new_tokens: int | None = None) -> dict:
        """The `load_video` options a video of `messages` is sampled with. Precedence: the item's own options > the
        call's `overrides` > checkpoint defaults > policy. `max_new_tokens`: the answer budget, as in `prepare` (a
        family whose frame count depends on it overrides this method). A caller that samples videos itself (a
        chapters run) asks here, so its frames are those `prepare` would take."""
        asked = {**overrides, **(item_options or {})}
        defaults = {key: value for key, value in self.sampling_defaults(asked.get("policy") or self.policy).items()
                    if not (key == "fps" and "nframes" in asked)}  # a frame count replaces the default rate
        return self.heard({**defaults, **asked})

    @property
    def hears(self) -> bool:
        """Whether this checkpoint takes audio: then a video's `audio` option may give it the video's soundtrack."""
        return False

    def heard(self, options: dict) -> dict:
        """Video options without the soundtrack ones for a model that does not hear ("auto" means: if it hears)."""
        if self.hears:
            return options
        if options.get("audio") == "on":
            raise OptionsError(f"this {self.family} checkpoint does not take audio; use --audio auto or off")
        return {key: value for key, value in options.items() if key not in ("audio", "max_audio_seconds")}

    def load_media(self, messages: list[dict], sampling_overrides: dict, max_new_tokens: int | None = None,
                   limits=None, fit=None) -> list:
        """Sample every image/video item with this family's policy (`video_options`); already sampled items pass
        through unchanged."""
        from vlm_app.media import SampledImage, SampledVideo, load_image
        from vlm_app.media.audio import Soundtrack
        from vlm_app.media.video import FRAME_LIST_IGNORED

        shown = []
        for item in media_items(messages):
            source = item[item["type"]]
            if isinstance(source, (SampledVideo, SampledImage)):
                shown.append(source)
            elif item["type"] == "video":
                options = self.video_options(messages, sampling_overrides, media_options(item), max_new_tokens)
                if isinstance(source, (list, tuple)):  # already sampled: the model's own frame caps do not apply
                    asked = {**sampling_overrides, **media_options(item)}
                    options = {key: value for key, value in options.items()
                               if key in asked or key not in FRAME_LIST_IGNORED}
                shown.append(self._load_video(source, options, limits, fit))
            elif item["type"] == "audio":
                shown.append(source if isinstance(source, Soundtrack) else self.load_audio(source, limits))
            else:
                shown.append(load_image(source, policy=self.sampling_policy(), limits=limits,
                                        **{**self.image_defaults(), **media_options(item)}))
        return shown

    def load_audio(self, source, limits):
        """An audio item (a file, URL or data: URI): a family whose models hear loads it (`media.audio`)."""
        raise OptionsError(f"this {self.family} checkpoint does not take audio; send video, images and text")

    def _load_video(self, source, options: dict, limits, fit):
        """`load_video` with the options' policy; the memory fit still sees which policy it sizes."""
        from vlm_app.media import load_video

        policy, name = self.sampling_policy(options), options.pop("policy", None)
        if fit is not None and name is not None:
            asked = fit
            fit = lambda metadata, fitted: without_policy(asked(metadata, {**fitted, "policy": name}))  # noqa: E731
        return load_video(source, policy=policy, limits=limits, fit=fit, **options)

    # ---- memory --------------------------------------------------------------------------------------------
    def memory_dims(self) -> ModelDims:
        """The sizes of this checkpoint's language model and vision encoder that its memory use follows."""
        raise NotImplementedError

    def video_shape(self, metadata, options: dict) -> tuple[RequestShape, int, int]:
        """What a probed video sampled with `options` will cost, before it is decoded: (its shape, frames,
        pixels per frame as resized here; 0 where the processor sizes frames)."""
        raise NotImplementedError

    def encoder_batch(self, inputs: dict) -> tuple[int, int]:
        """(sequences, patches per sequence) the vision encoder gets for these model inputs (widest call)."""
        raise NotImplementedError

    def fit_rules(self, options: dict) -> FitRules:
        """How far the memory fit may lower a video with these options (the family's own rules)."""
        return FitRules(min_frames=1)

    def prepared_shape(self, prepared: Prepared, max_new_tokens: int) -> RequestShape:
        """The exact shape of a prepared request: its tokens, its encoder batch, its media tensors."""
        from vlm_app.media import SampledVideo

        sequences, length = self.encoder_batch(prepared.inputs)
        pixels = sum(value.nbytes for value in prepared.inputs.values() if isinstance(value, torch.Tensor)
                     and value.is_floating_point())
        media = pixels + sum(item.frames.nbytes for item in prepared.media if isinstance(item, SampledVideo))
        return RequestShape(text_tokens=prepared.num_tokens.text, visual_tokens=prepared.num_tokens.visual,
                            encoder_sequences=sequences, encoder_sequence=length, media_bytes=media,
                            max_new_tokens=max_new_tokens, pixel_bytes=pixels,
                            encoder_masked=self.encoder_masked(prepared.inputs))

    def encoder_masked(self, inputs: dict) -> bool:
        """Whether the vision encoder gets padded sequences (and so builds an attention mask for them)."""
        return False

    def memory_estimate(self, shape: RequestShape, weights_bytes: int | None = None, element_bytes: int | None = None,
                        device: str | None = None) -> MemoryEstimate:
        """The peak of a request of this shape on this model's device (`vlm_app.memory.estimate`). Without weights
        (`without_weights`) the caller gives the loaded model's weight bytes, activation element bytes and device."""
        return memory.estimate(self.memory_dims(), shape, model_bytes(self) if weights_bytes is None else weights_bytes,
                               self.model.dtype.itemsize if element_bytes is None else element_bytes,
                               str(self.device) if device is None else device)

    def collate(self, inputs_list: list[dict]) -> dict:
        """Several requests' model inputs (each of batch size 1) as one left-padded batch, the way the family's
        processor batches (built with `vlm_app.batching.collate_rows`; `vlm_app.batching` generates with it)."""
        raise NotImplementedError

    def _to_device(self, inputs) -> dict[str, torch.Tensor]:
        return {key: value.to(self.device) if isinstance(value, torch.Tensor) else value
                for key, value in dict(inputs).items()}

    # ---- model calls ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, prepared: Prepared, output_hidden_states: bool = True,
                output_attentions: bool = False) -> ForwardOutput:
        """One forward pass over the prompt. Attention weights need eager attention, so the model switches to it
        for this call only."""
        previous = self.model.config._attn_implementation
        if output_attentions and previous != "eager":
            self.model.set_attn_implementation("eager")
        try:
            out = self.model(**prepared.inputs, output_hidden_states=output_hidden_states,
                             output_attentions=output_attentions, return_dict=True)
        finally:
            if self.model.config._attn_implementation != previous:
                self.model.set_attn_implementation(previous)
        return ForwardOutput(logits=out.logits, hidden_states=out.hidden_states if output_hidden_states else None,
                             attentions=out.attentions if output_attentions else None,
                             visual_positions=prepared.visual_map.positions)

    def generate(self, prepared: Prepared, max_new_tokens: int = 256, do_sample: bool | None = None,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 cancel: threading.Event | None = None, **generate_kwargs) -> Generation:
        """Generate a reply. Greedy unless `do_sample` (or a temperature > 0) asks for sampling."""
        options = self._generate_options(max_new_tokens, do_sample, temperature, top_p, seed, generate_kwargs)
        return self._generate(prepared, options, cancel, None)

    def stream(self, prepared: Prepared, cancel: threading.Event | None = None, max_new_tokens: int = 256,
               do_sample: bool | None = None, temperature: float = 0.0, top_p: float = 1.0,
               seed: int | None = None, **generate_kwargs) -> Stream:
        """Like `generate`, but returns a `Stream` of text pieces; `cancel.set()` stops it within one token."""
        options = self._generate_options(max_new_tokens, do_sample, temperature, top_p, seed, generate_kwargs)
        return Stream(self, prepared, cancel, options)

    @staticmethod
    def _generate_options(max_new_tokens, do_sample, temperature, top_p, seed, extra) -> dict:
        sample = temperature > 0 if do_sample is None else do_sample
        options = {"max_new_tokens": max_new_tokens, "do_sample": sample, **extra}
        if sample:
            options.update(temperature=temperature or 1.0, top_p=top_p)
        options["_seed"] = seed
        return options

    @torch.inference_mode()
    def _generate(self, prepared: Prepared, options: dict, cancel: threading.Event | None,
                  pieces: queue.Queue | None, decoding: Decoding | None = None) -> Generation:
        options = dict(options)
        seed = options.pop("_seed", None)
        if seed is not None:
            torch.manual_seed(seed)
        decoding = decoding or Decoding.pop_from(options, self)  # penalties, logprobs, JSON schema: logits processors
        recorder = _TokenRecorder(pieces, decoding.on_token)
        stopper = _CancelOnEvent(cancel or threading.Event())
        options["stopping_criteria"] = [stopper]
        options["logits_processor"] = decoding.processors
        memory.reset_peak(str(self.device))
        start = time.perf_counter()
        self.model.generate(**prepared.inputs, streamer=recorder, **options)
        times = recorder.token_times
        timings = Timings(preprocess_s=prepared.timings.get("preprocess_s", 0.0),
                          prefill_s=(times[0] - start) if times else time.perf_counter() - start,
                          decode_s=(times[-1] - times[0]) if times else 0.0,
                          new_tokens=len(recorder.token_ids), peak_memory_bytes=memory.peak_bytes(str(self.device)))
        text = self.decode(recorder.token_ids)
        return Generation(text=text, token_ids=recorder.token_ids, timings=timings,
                          cancelled=stopper.fired, logprobs=decoding.logprobs)


class PatchGridAdapter(Adapter):
    """The families whose processor is built on Qwen2-VL's image and video processors (Qwen2.5-VL, Qwen3-VL): our
    frames and images go to it once, with each video's metadata (`video_metadata`), and its patch grids say which
    token came from which frame. `display_name` names the family in errors."""

    display_name: ClassVar[str] = ""

    def video_metadata(self, video):
        """transformers' VideoMetadata the processor times this SampledVideo by."""
        raise NotImplementedError

    def build_inputs(self, messages: list[dict], media: list, max_new_tokens: int | None = None):
        from vlm_app.media import SampledVideo

        videos = [item for item in media if isinstance(item, SampledVideo)]
        images = [item.image for item in media if not isinstance(item, SampledVideo)]
        refuse_placeholders(messages, (self.processor.image_token, self.processor.video_token), self.display_name)
        prompt = self.processor.apply_chat_template(for_template(messages), tokenize=False,
                                                    add_generation_prompt=True)
        inputs = self.processor(
            text=[prompt], images=images or None, videos=[video.frames for video in videos] or None,
            video_metadata=[self.video_metadata(video) for video in videos] or None,
            do_resize=False, do_sample_frames=False, cap_pixels_per_frame=False, return_tensors="pt")
        return dict(inputs), self._visual_map(inputs, media), prompt

    def _visual_map(self, inputs, media: list) -> VisualMap:
        """Per media item, its tokens in order: a video's are (temporal group of two frames, merged row, merged
        col) in row-major order, so token k belongs to group k // (tokens per group); an image is one view."""
        from vlm_app.media import SampledVideo

        merge = self.processor.video_processor.merge_size ** 2
        video_grids = iter(inputs.get("video_grid_thw", []))
        image_grids = iter(inputs.get("image_grid_thw", []))
        spans = []
        for media_index, item in enumerate(media):
            if isinstance(item, SampledVideo):
                t, h, w = (int(v) for v in next(video_grids))
                per_group = h * w // merge
                frames = [min(2 * (k // per_group), len(item.timestamps) - 1) for k in range(t * per_group)]
                spans.append({"token_id": self.config.video_token_id, "media_index": media_index,
                              "frame_index": frames, "tile_index": 0,
                              "timestamp": [item.timestamps[f] for f in frames]})
            else:
                t, h, w = (int(v) for v in next(image_grids))
                count = t * h * w // merge
                spans.append({"token_id": self.config.image_token_id, "media_index": media_index,
                              "frame_index": [-1] * count, "tile_index": 0, "timestamp": math.nan})
        return VisualMap.from_spans(inputs["input_ids"], spans)


def timed_video_metadata(video):
    """transformers' VideoMetadata for a processor that writes each frame's time as frames_indices[i] / fps: the
    source fps and the indices in the whole file for a constant-rate file (the reference's own labels); for a
    variable-rate one, fps 1 and the frames' presentation times (index / fps is no time there)."""
    from transformers.video_utils import VideoMetadata

    source = video.metadata
    if source.is_vfr:
        return VideoMetadata(total_num_frames=source.num_frames, fps=1.0, duration=source.duration,
                             width=source.width, height=source.height, frames_indices=list(video.timestamps))
    return VideoMetadata(total_num_frames=source.num_frames, fps=source.fps, duration=source.duration,
                         width=source.width, height=source.height, frames_indices=list(video.frames_indices))
