"""Gemma 4 (`model_type` gemma4: E2B, E4B, 26B-A4B, 31B; gemma4_unified: 12B): one processor (`Gemma4Processor`),
video through the image tower one frame at a time, each frame preceded by its time as `MM:SS`.

The `gemma4` policy reproduces transformers' `Gemma4VideoProcessor`, and our frames go to the processor once
(`do_sample_frames=False`, `do_resize=False`), never sampled or resized a second time:
- frames: the checkpoint's `num_frames` (32) or `fps` (int(seconds · fps) frames), at `arange(n) * total // n`
  over the sampled range (`GemmaSpacedRule`);
- size: aspect kept at the largest size under `max_soft_tokens` × 9 patches of 16 px, sides multiples of 48 (small
  frames are upscaled; `patch_budget_size`). Our name for the budget is `max_pixels` = max_soft_tokens × 9 × 16²
  (70 tokens: 161 280 pixels), so the memory fit and a request can lower or raise it;
- labels: `MM:SS` from each frame's index / source fps (whole seconds, minutes past 59 kept, as the processor
  writes them), the indices in the whole file, so `video_start` and chapters segments carry the whole video's time.
  A variable-frame-rate clip's frames are labelled by their presentation times.

Deliberate differences (README): a clip shorter than the frame count is sampled whole (the reference raises); `fps`
works on its own (the reference merges its default `num_frames` in and refuses the pair); the VFR, AVI and
damaged-file rules of every family.

The models that hear (an `audio_config`: E2B, E4B) also get the video's own soundtrack when the request's audio
mode says so (`auto`: when the file has one; `on`; `off`, the model card's video-only call): the sampled range,
16 kHz mono (`vlm_app.media.audio`), placed right after the video as the chat template orders an audio item, and
turned into features by the checkpoint's `Gemma4AudioFeatureExtractor`. The processor caps one audio at
`audio_seq_length` tokens of `audio_ms_per_token` (750 x 40 ms = 30 s).
"""

from __future__ import annotations

import math

import torch

from vlm_app.adapters.base import Adapter, VisualMap, timed_video_metadata
from vlm_app.errors import OptionsError
from vlm_app.media.audio import SAMPLING_RATE as SOUND_RATE
from vlm_app.media.audio import Soundtrack, load_audio
from vlm_app.media.policies import SamplingPolicy
from vlm_app.memory import FitRules, ModelDims, RequestShape, TextDims, VisionDims
from vlm_app.messages import for_template, refuse_placeholders

PATCH = 16
POOLING = 3
SIDE = PATCH * POOLING  # frame sides are multiples of 48: one token is a 48 x 48 square
SOFT_TOKENS = (70, 140, 280, 560, 1120)  # the budgets the processor (and the model's training) knows
DEFAULT_SOFT_TOKENS = 70
DEFAULT_FRAMES = 32
NO_METADATA_FPS = 24.0  # the processor's rate for frames without metadata (a frame list)
FRAME_TEXT_TOKENS = 5  # "MM:SS" and the begin/end-of-image tokens around each frame
HUB_AUDIO_MS_PER_TOKEN, HUB_AUDIO_SEQ_LENGTH = 40, 750  # processor_config.json of E2B/E4B
AUDIO_FEATURE_BYTES = 128 * 4 + 1  # one 10 ms frame of float32 mel features and its mask


def budget_pixels(soft_tokens: int) -> int:
    """The pixel budget of `soft_tokens` tokens a frame: max_soft_tokens × pooling² patches of 16²."""
    return soft_tokens * POOLING**2 * PATCH**2


class GemmaSpacedRule:
    """transformers' `default_sample_indices_fn` as Gemma 4 calls it: `nframes`, else int(seconds · fps) with `fps`,
    else the checkpoint's `num_frames` (the policy's `max_frames`); an explicit `max_frames` (or the memory fit's)
    caps any count; a clip with fewer frames is taken whole. Indices `arange(n) * total // n`."""

    @staticmethod
    def nframes(count: int, rate: float, policy: SamplingPolicy, options: dict) -> int:
        if options.get("nframes") is not None:
            wanted = int(options["nframes"])
        elif options.get("fps") is not None:
            wanted = int(count / rate * options["fps"])
        else:
            wanted = int(options.get("max_frames", policy.max_frames))
        if options.get("max_frames") is not None:
            wanted = min(wanted, int(options["max_frames"]))
        return max(1, min(wanted, count))

    @staticmethod
    def indices(first: int, last: int, nframes: int) -> list[int]:
        count = last - first + 1
        return [first + position * count // nframes for position in range(nframes)]


def patch_budget_size(height: int, width: int, nframes: int, policy: SamplingPolicy,
                      options: dict) -> tuple[int, int]:
    """`get_aspect_ratio_preserving_size`: the largest size of the frame's aspect under the pixel budget, sides
    floored to multiples of 48; a side that floors to 0 becomes 48 and the other its aspect's multiple."""
    from transformers.models.gemma4.video_processing_gemma4 import get_aspect_ratio_preserving_size

    max_patches = int(options.get("max_pixels", policy.max_pixels)) // PATCH**2
    if max_patches < POOLING**2:
        raise OptionsError(f"max_pixels {options.get('max_pixels')} is under one Gemma 4 token ({SIDE}x{SIDE} "
                           "pixels); raise it")
    try:
        return get_aspect_ratio_preserving_size(height, width, PATCH, max_patches, POOLING)
    except ValueError as error:
        raise OptionsError(f"a {width}x{height} frame does not fit {max_patches} patches of {PATCH} px: {error}") \
            from None


# The real sizes (`bench model`): google/gemma-4-E2B-it's config.json, architecture fields only, as a third-party test
# transcribes it (find_string id 64225531835; the hub file is not stored here): checked against the model card's
# 5.1B parameters with embeddings (tests/test_adapters_bench_model.py).
E2B_LAYER_TYPES = (["sliding_attention"] * 4 + ["full_attention"]) * 7
REAL_SIZES = {
    "e2b": dict(text=dict(hidden_size=1536, intermediate_size=6144, num_hidden_layers=35, num_attention_heads=8,
                          num_key_value_heads=1, head_dim=256, global_head_dim=512, sliding_window=512,
                          vocab_size=262144, vocab_size_per_layer_input=262144, hidden_size_per_layer_input=256,
                          num_kv_shared_layers=20, use_double_wide_mlp=True, max_position_embeddings=131072,
                          final_logit_softcapping=30.0, layer_types=E2B_LAYER_TYPES, tie_word_embeddings=True),
                vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=16, num_attention_heads=12,
                            num_key_value_heads=12, head_dim=64, patch_size=16, pooling_kernel_size=3,
                            position_embedding_size=10240, use_clipped_linears=True),
                audio=dict(hidden_size=1024, num_hidden_layers=12, num_attention_heads=8,
                           subsampling_conv_channels=[128, 32], conv_kernel_size=5, attention_chunk_size=12,
                           attention_context_left=13, attention_context_right=0, output_proj_dims=1536,
                           residual_weight=0.5, use_clipped_linears=True)),
}


def gemma4_policy() -> SamplingPolicy:
    """transformers' Gemma4VideoProcessor with the hub files' settings (32 frames, 70 tokens a frame); a
    checkpoint's own num_frames and max_soft_tokens come on top (`Gemma4Adapter.sampling_policy`)."""
    return SamplingPolicy(name="gemma4", index_rule=GemmaSpacedRule, fps=NO_METADATA_FPS, min_frames=1,
                          max_frames=DEFAULT_FRAMES, resize_rule=patch_budget_size,
                          max_pixels=budget_pixels(DEFAULT_SOFT_TOKENS), reference_resize="uint8")


def with_soundtracks(conversation: list[dict], media: list) -> list[dict]:
    """The template's conversation with an audio item right after each video that brings its soundtrack (where the
    chat template places a video's audio, and where transformers' `load_audio_from_video` puts it)."""
    shown = iter(media)
    result = []
    for message in conversation:
        content = []
        for item in message["content"]:
            content.append(item)
            if item["type"] != "text" and getattr(next(shown), "soundtrack", None) is not None:
                content.append({"type": "audio"})
        result.append({**message, "content": content})
    return result


def token_runs(ids, token_id: int) -> list[int]:
    """The lengths of the runs of `token_id` in `ids`, in order (one run per audio)."""
    runs, length = [], 0
    for value in [*ids.tolist(), None]:
        if value == token_id:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    return runs


def by_tower(attention: str) -> dict[str, str]:
    """`attn_implementation` per sub-model: `attention` for the language model and vision tower, eager for audio."""
    return {"": attention, "text_config": attention, "vision_config": attention, "audio_config": "eager"}


class Gemma4Adapter(Adapter):
    family = "gemma4"
    model_types = ("gemma4", "gemma4_unified")
    short_names = {"gemma4-e2b": "google/gemma-4-E2B-it", "gemma4-e4b": "google/gemma-4-E4B-it",
                   "gemma4-12b": "google/gemma-4-12B-it", "gemma4-26b-a4b": "google/gemma-4-26B-A4B-it",
                   "gemma4-31b": "google/gemma-4-31B-it"}
    hub_pattern = r"gemma-?4"
    policies = {"gemma4": gemma4_policy}
    policy = "gemma4"
    tiny = {"gemma4": "vlm_app.testing.gemma4:build_tiny_gemma4",
            "gemma4_no_audio": "vlm_app.testing.gemma4:build_tiny_gemma4_no_audio",
            "gemma4_140": "vlm_app.testing.gemma4:build_tiny_gemma4_140"}
    real_sizes = tuple(REAL_SIZES)

    # ---- loading and model calls --------------------------------------------------------------------------------
    @classmethod
    def load_model(cls, path: str, **from_pretrained_kwargs):
        """The audio tower has only eager attention: the chosen implementation goes to the other towers."""
        attention = from_pretrained_kwargs.pop("attn_implementation", None) or "sdpa"
        return super().load_model(path, attn_implementation=by_tower(attention), **from_pretrained_kwargs)

    def forward(self, prepared, output_hidden_states: bool = True, output_attentions: bool = False):
        """Attention weights need eager attention in every tower; the towers get their own back afterwards."""
        if not output_attentions:
            return super().forward(prepared, output_hidden_states, False)
        towers = by_tower(self.model.config.text_config._attn_implementation)
        self.model.set_attn_implementation("eager")
        try:
            return super().forward(prepared, output_hidden_states, True)
        finally:
            self.model.set_attn_implementation(towers)

    # ---- what a video costs and reads ----------------------------------------------------------------------------
    @classmethod
    def visual_tokens(cls, video, model_name: str) -> int:
        """One token per 48 x 48 square of each frame."""
        return len(video.frames_indices) * (video.resized_height // SIDE) * (video.resized_width // SIDE)

    @classmethod
    def frame_labels(cls, video) -> list[str]:
        """The text before each frame, exactly as the processor writes it (`MM:SS`, truncated; no hours)."""
        metadata = timed_video_metadata(video)
        return [f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"
                for seconds in (index / metadata.fps for index in metadata.frames_indices)]

    # ---- inputs --------------------------------------------------------------------------------------------------
    def sampling_policy(self, options: dict | None = None) -> SamplingPolicy:
        """The family policy with this checkpoint's frame count (`num_frames`)."""
        policy = super().sampling_policy(options)
        return policy.with_overrides(max_frames=self.processor.video_processor.num_frames)

    def sampling_defaults(self, policy: str) -> dict:
        """The checkpoint's per-frame budget (its video `max_soft_tokens`) as our `max_pixels`; for a model that
        hears, the soundtrack when the file has one, up to the length one audio holds."""
        defaults = {"max_pixels": budget_pixels(self.processor.video_processor.max_soft_tokens)}
        if self.hears:
            defaults.update(audio="auto", max_audio_seconds=self.audio_seconds)
        return defaults

    @property
    def hears(self) -> bool:
        return getattr(self.config, "audio_config", None) is not None

    @property
    def audio_seconds(self) -> float:
        """The longest audio the processor gives tokens to: `audio_seq_length` tokens of `audio_ms_per_token`."""
        return self.processor.audio_seq_length * self.processor.audio_ms_per_token / 1000

    def load_audio(self, source, limits):
        """An audio item, whole, as long as one audio holds."""
        if not self.hears:
            return super().load_audio(source, limits)
        return load_audio(source, limits, max_seconds=self.audio_seconds)

    def audio_positions(self, prepared) -> torch.Tensor:
        return (prepared.inputs["input_ids"][0] == self.config.audio_token_id).nonzero().flatten()

    @classmethod
    def sound_tokens(cls, seconds: float) -> int:
        """At the hub files' settings: one token per 40 ms, at most 750 (30 s)."""
        return min(math.ceil(seconds * 1000 / HUB_AUDIO_MS_PER_TOKEN), HUB_AUDIO_SEQ_LENGTH)

    def audio_tokens(self, seconds: float) -> int:
        """Tokens of `seconds` of audio (one per `audio_ms_per_token`, at most `audio_seq_length`)."""
        return min(math.ceil(seconds * 1000 / self.processor.audio_ms_per_token), self.processor.audio_seq_length)

    def video_options(self, messages: list[dict], overrides: dict, item_options: dict | None = None,
                      max_new_tokens: int | None = None) -> dict:
        options = super().video_options(messages, overrides, item_options, max_new_tokens)
        for name in ("resized_height", "resized_width", "min_pixels", "total_pixels", "cap_pixels_per_frame"):
            if options.get(name) is not None:
                raise OptionsError(f"Gemma 4 sizes each frame by its token budget; {name} does not apply (set "
                                   f"max_pixels = tokens x {POOLING**2 * PATCH**2}, e.g. "
                                   f"{budget_pixels(140)} for 140 tokens)")
        if self.hears and options.get("max_audio_seconds", 0) > self.audio_seconds:
            raise OptionsError(f"max_audio_seconds {options['max_audio_seconds']:g} is over the {self.audio_seconds:g} s "
                               "one audio holds (the processor would cut the rest); use chapters for longer sound")
        return options

    def build_inputs(self, messages: list[dict], media: list, max_new_tokens: int | None = None):
        """Videos (each with its soundtrack right after it, when it brings one), images and audio items, in the
        order of the messages, through the processor; our frames go as they are."""
        from vlm_app.media import SampledImage, SampledVideo

        videos = [item for item in media if isinstance(item, SampledVideo)]
        images = [item.image for item in media if isinstance(item, SampledImage)]
        processor = self.processor
        refuse_placeholders(messages, tuple(token for token in (processor.image_token, processor.video_token,
                                                                processor.audio_token, processor.boi_token,
                                                                processor.eoi_token) if token), "Gemma 4")
        prompt = processor.apply_chat_template(with_soundtracks(for_template(messages), media), tokenize=False,
                                               add_generation_prompt=True)
        videos_kwargs = {"do_sample_frames": False, "do_resize": False}
        if videos:
            videos_kwargs["max_soft_tokens"] = max(self._soft_tokens(video) for video in videos)
        heard = [sound for sound in (getattr(item, "soundtrack", item) for item in media)
                 if isinstance(sound, Soundtrack)]
        inputs = processor(text=[prompt], images=images or None, videos=[video.frames for video in videos] or None,
                           video_metadata=[timed_video_metadata(video) for video in videos] or None,
                           audio=[sound.samples for sound in heard] or None, videos_kwargs=videos_kwargs,
                           add_special_tokens=False, return_tensors="pt")
        for sound, count in zip(heard, token_runs(inputs["input_ids"][0], processor.audio_token_id)):
            sound.tokens = count
        visual_map = self._visual_map(inputs, media)
        return ({key: value for key, value in inputs.items() if key not in processor.unused_input_names},
                visual_map, prompt)

    def _soft_tokens(self, video) -> int:
        """The processor's `max_soft_tokens` for our frames: the checkpoint's when they fit it, else the smallest
        budget the processor knows that holds them (a larger `max_pixels`); patches are padded to it."""
        tokens = (video.resized_height // SIDE) * (video.resized_width // SIDE)
        own = self.processor.video_processor.max_soft_tokens
        if tokens <= own:
            return own
        return next((known for known in SOFT_TOKENS if known >= tokens), tokens)

    def _visual_map(self, inputs, media: list) -> VisualMap:
        """Per video, its frames in order, each `MM:SS <|image>` + (h/48)(w/48) tokens + `<image|>`; token k of a
        frame is its (row, col) square in row-major order. Images are one view; sound has no visual tokens."""
        from vlm_app.media import SampledImage, SampledVideo

        spans = []
        image_counts = iter(token_runs(inputs["input_ids"][0], self.config.image_token_id))  # one run per image
        for media_index, item in enumerate(media):
            if isinstance(item, SampledVideo):
                per_frame = (item.resized_height // SIDE) * (item.resized_width // SIDE)
                frames = [k // per_frame for k in range(per_frame * len(item.frames_indices))]
                spans.append({"token_id": self.config.video_token_id, "media_index": media_index,
                              "frame_index": frames, "tile_index": 0,
                              "timestamp": [item.timestamps[f] for f in frames]})
            elif isinstance(item, SampledImage):
                count = next(image_counts)
                spans.append({"token_id": self.config.image_token_id, "media_index": media_index,
                              "frame_index": [-1] * count, "tile_index": 0, "timestamp": math.nan})
        return VisualMap.from_spans(inputs["input_ids"], spans)

    # ---- batching ------------------------------------------------------------------------------------------------
    def collate(self, inputs_list: list[dict]) -> dict:
        """As the processor batches: sequences left-padded; frames, images and audio clips joined in batch order,
        padded to the widest as the processor pads them (patches with zeros at position -1, audio frames masked)."""
        from vlm_app.batching import collate_rows, sequence_rules

        return collate_rows(inputs_list, sequence_rules(self, "mm_token_type_ids"), concatenated={
            "pixel_values_videos": 0, "video_position_ids": -1, "num_frames_per_video": 0, "pixel_values": 0,
            "image_position_ids": -1, "input_features": 0, "input_features_mask": False})

    # ---- memory --------------------------------------------------------------------------------------------------
    def memory_dims(self) -> ModelDims:
        """Each layer keeps its own keys and values (full-attention layers have wider heads: `global_head_dim`);
        the last `num_kv_shared_layers` reuse earlier layers' caches and store none."""
        text, vision = self.config.text_config, self.config.vision_config
        layers = [text.per_layer_config[index] for index in range(text.num_hidden_layers)]
        storing = layers[:len(layers) - (text.num_kv_shared_layers or 0)]
        kv_width = -(-sum(2 * layer.num_key_value_heads * layer.head_dim for layer in storing) // len(layers))
        mlp = text.intermediate_size * (2 if text.use_double_wide_mlp else 1)
        return ModelDims(text=TextDims(hidden=text.hidden_size, mlp_width=mlp, layers=text.num_hidden_layers,
                                       kv_width=kv_width, vocab=text.vocab_size),
                         vision=VisionDims(hidden=vision.hidden_size, mlp_width=vision.intermediate_size,
                                           heads=vision.num_attention_heads, mlp_tensors=3))

    def video_shape(self, metadata, options: dict) -> tuple[RequestShape, int, int]:
        """Our frames at their resized size; each frame is one encoder sequence padded to the budget's patches,
        one token per 3x3 patches."""
        from vlm_app.media.video import choose_frames, output_size

        policy = self.sampling_policy(options)
        frames = len(choose_frames(metadata, policy, options)[0])
        height, width = output_size(metadata.height, metadata.width, frames, policy, options)
        tokens = (height // SIDE) * (width // SIDE)
        padded = max(tokens, self.processor.video_processor.max_soft_tokens) * POOLING**2
        media = frames * 3 * height * width + frames * padded * (3 * PATCH**2 + 2 * 2) * 4  # uint8 frames, patches
        heard = self.heard_seconds(metadata, options)
        audio = self.audio_tokens(heard) + 2 if heard else 0  # and its begin/end tokens
        media += int(heard * 100) * AUDIO_FEATURE_BYTES + int(heard * SOUND_RATE) * 4  # features (10 ms), samples
        shape = RequestShape(text_tokens=frames * FRAME_TEXT_TOKENS + audio, visual_tokens=frames * tokens,
                             encoder_sequences=frames, encoder_sequence=padded, media_bytes=media, encoder_masked=True)
        return shape, frames, int(options.get("max_pixels", policy.max_pixels))

    def heard_seconds(self, metadata, options: dict) -> float:
        """The soundtrack a video with these options will bring at most (counted as if the file had one)."""
        if not self.hears or (options.get("audio") or "off") == "off":
            return 0.0
        start = options.get("video_start") or 0.0
        end = min(options.get("video_end") or metadata.duration, metadata.duration)
        seconds = max(end - start, 0.0)
        return seconds if seconds <= options.get("max_audio_seconds", self.audio_seconds) + 1e-6 else 0.0

    def encoder_batch(self, inputs: dict) -> tuple[int, int]:
        shapes = [inputs[name].shape for name in ("pixel_values_videos", "pixel_values") if name in inputs]
        if not shapes:
            return 0, 0
        return sum(int(shape[0]) for shape in shapes), max(int(shape[1]) for shape in shapes)

    def encoder_masked(self, inputs: dict) -> bool:
        return True

    def fit_rules(self, options: dict) -> FitRules:
        """The fit lowers frames; the per-frame budget goes down only in whole budgets the model knows, to 70."""
        step = budget_pixels(DEFAULT_SOFT_TOKENS)
        return FitRules(min_frames=1, pixel_step=step, min_pixels=step)

    # ---- real sizes (bench model) --------------------------------------------------------------------------------
    @classmethod
    def real_size(cls, size: str, layers: tuple[int, int] | None = None):
        """(model class, config, processor) of a published size with our tokenizer; `layers` (vision, text) makes
        a reduced model of the real widths (the last layers' sliding/full pattern; every layer keeps its own cache)."""
        from transformers import Gemma4Config, Gemma4ForConditionalGeneration

        from vlm_app.testing.gemma4 import gemma4_processor, token_ids

        processor = gemma4_processor()
        text, vision = dict(REAL_SIZES[size]["text"]), dict(REAL_SIZES[size]["vision"])
        if layers is not None:
            vision["num_hidden_layers"] = layers[0]
            text.update(num_hidden_layers=layers[1], layer_types=text["layer_types"][-layers[1]:],
                        num_kv_shared_layers=0)
        config = Gemma4Config(text_config=dict(**text, pad_token_id=0, eos_token_id=1, bos_token_id=2),
                              vision_config=vision, audio_config=REAL_SIZES[size]["audio"],
                              **token_ids(processor.tokenizer))
        return Gemma4ForConditionalGeneration, config, processor


ADAPTER = Gemma4Adapter
