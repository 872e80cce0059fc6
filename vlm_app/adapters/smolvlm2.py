"""SmolVLM2: our pipeline samples frames the way SmolVLM's video processor would (fps 1, at most 64 frames,
skipping the ends of long clips); the HF processors resize and normalise them, and the prompt says each frame's
real "Frame from MM:SS" time and the video's duration.

The media placeholders are expanded here, one media item at a time, with the processor's own expansion: the
stock call reads a video's frame count from the padded batch, so a short video next to a long one would be
announced with the long one's count.

The prompt comes from the checkpoint's own chat template. The hub template has no video branch (it drops video
items); only then is transformers' SmolVLM default template, which has one, used instead. (transformers itself
swaps in its default for every video prompt, even when a fine-tune's own template handles videos.)
"""

from __future__ import annotations

import math
import re

import torch

from vlm_app.adapters.base import Adapter, VisualMap
from vlm_app.errors import OptionsError
from vlm_app.media.policies import SamplingPolicy
from vlm_app.memory import ModelDims, RequestShape, VisionDims, text_dims
from vlm_app.messages import for_template, refuse_placeholders

PLACEHOLDER = re.compile(r"(<image>|<video>)")
FRAME_TEXT_TOKENS = 12  # "Frame from MM:SS:" and the tokens around each frame's image
VIDEO_TEXT_TOKENS = 40  # "You are provided the following series of N frames from a H:MM:SS video." and the end


def hf_video_metadata(video):
    """transformers' VideoMetadata for one of our SampledVideos: source frame count, fps, duration, indices."""
    from transformers.video_utils import VideoMetadata

    source = video.metadata
    return VideoMetadata(total_num_frames=source.num_frames, fps=source.fps, duration=source.duration,
                         width=source.width, height=source.height, frames_indices=list(video.frames_indices))


TOKENS_PER_FRAME = {"256m": 64, "500m": 64, "2.2b": 81}  # 512 px frames for 256M/500M, 384 px for 2.2B

# The real sizes (`bench model`), from the published config.json files, checked by parameter count (256M / 507M / 2.25B)
# and, for tile size and image_seq_len, against the real processor files (tests/test_adapters_bench_model.py).
REAL_SIZES = {
    "256m": dict(text=dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                           num_key_value_heads=3, head_dim=64, rope_theta=1e5, max_position_embeddings=8192),
                 vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                             image_size=512, patch_size=16), scale_factor=4),
    "500m": dict(text=dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                           num_key_value_heads=5, head_dim=64, rope_theta=1e5, max_position_embeddings=8192),
                 vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                             image_size=512, patch_size=16), scale_factor=4),
    # the 1.7B backbone was stretched to a 16k context with a larger RoPE base (third-party transcription of the
    # SmolVLM 2.2B text config; unverified against the SmolVLM2 hub file)
    "2.2b": dict(text=dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                           num_key_value_heads=32, head_dim=64, rope_theta=273768.0, max_position_embeddings=16384),
                 vision=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                             image_size=384, patch_size=14), scale_factor=3),
}
REAL_VOCAB = 49280


def smolvlm2_policy() -> SamplingPolicy:
    """transformers' SmolVLM video processor: fps 1, at most 64 frames, 1 s skipped at both ends of long clips. No
    resize here: the SmolVLM processor does its own two-stage resize."""
    return SamplingPolicy(name="smolvlm2", index_rule="smolvlm", fps=1.0, min_frames=1, max_frames=64, skip_secs=1.0,
                          tokens_per_frame=TOKENS_PER_FRAME["256m"])


class SmolVLM2Adapter(Adapter):
    family = "smolvlm2"
    model_types = ("smolvlm",)
    short_names = {"smolvlm2-256m": "HuggingFaceTB/SmolVLM2-256M-Video-Instruct",
                   "smolvlm2-500m": "HuggingFaceTB/SmolVLM2-500M-Video-Instruct",
                   "smolvlm2-2.2b": "HuggingFaceTB/SmolVLM2-2.2B-Instruct"}
    hub_pattern = r"smolvlm2"
    policies = {"smolvlm2": smolvlm2_policy}
    policy = "smolvlm2"
    tiny = {"smolvlm2": "vlm_app.testing.tiny:build_tiny_smolvlm2"}
    real_sizes = tuple(REAL_SIZES)

    @classmethod
    def visual_tokens(cls, video, model_name: str) -> int:
        """64 tokens a frame for SmolVLM2-256M/500M, 81 for SmolVLM2-2.2B (told apart by the model's name)."""
        lowered = model_name.lower()
        per_frame = next((tokens for size, tokens in TOKENS_PER_FRAME.items() if size in lowered),
                         TOKENS_PER_FRAME["256m"])
        return len(video.frames_indices) * per_frame

    @classmethod
    def frame_labels(cls, video) -> list[str]:
        return [f"Frame from {int(seconds) // 60:02d}:{int(seconds) % 60:02d}:" for seconds in video.timestamps]

    def sampling_defaults(self, policy: str) -> dict:
        video_processor = self.processor.video_processor
        return {"fps": video_processor.fps, "max_frames": video_processor.num_frames}

    def build_inputs(self, messages: list[dict], media: list, max_new_tokens: int | None = None):
        from vlm_app.media import SampledVideo

        videos = [item for item in media if isinstance(item, SampledVideo)]
        if videos and len(videos) != len(media):
            raise OptionsError("SmolVLM2 takes either images or videos in one conversation, not both")
        prompt = self._prompt(messages, len(media))
        pixels, expansions = self._process_videos(videos) if videos else self._process_images(media)
        views = [expansion.count(self.processor.image_token) // self.processor.image_seq_len
                 for expansion in expansions]
        pending = iter(expansions)
        text = "".join(next(pending) if piece in ("<image>", "<video>") else piece
                       for piece in PLACEHOLDER.split(prompt))
        inputs = {**self.processor.tokenizer(text, return_tensors="pt"), **pixels}
        return inputs, self._visual_map(inputs["input_ids"], media, views), prompt

    def _prompt(self, messages: list[dict], num_media: int) -> str:
        from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

        refuse_placeholders(messages, ("<image>", "<video>"), "SmolVLM2")
        conversation = for_template(messages)
        prompt = self.processor.apply_chat_template(conversation, chat_template=self.processor.chat_template,
                                                    tokenize=False, add_generation_prompt=True)
        if len(PLACEHOLDER.findall(prompt)) < num_media:  # a template without a video branch
            prompt = self.processor.apply_chat_template(conversation, chat_template=DEFAULT_CHAT_TEMPLATE,
                                                        tokenize=False, add_generation_prompt=True)
        return prompt

    def _process_videos(self, videos: list) -> tuple[dict, list[str]]:
        video_processor = self.processor.video_processor
        metadata = [hf_video_metadata(video) for video in videos]
        batch = video_processor(videos=[video.frames for video in videos], video_metadata=metadata,
                                do_sample_frames=False, return_metadata=True, return_tensors="pt")
        expansions = []
        for index, video in enumerate(videos):
            own = {"pixel_values": batch["pixel_values"][index:index + 1, :len(video.frames_indices)],
                   "video_metadata": [batch["video_metadata"][index]]}
            expansions.append(self.processor.replace_video_token(own, 0))
        return {"pixel_values": batch["pixel_values"], "pixel_attention_mask": batch["pixel_attention_mask"]}, \
            expansions

    def _process_images(self, images: list) -> tuple[dict, list[str]]:
        if not images:
            return {}, []
        batch = self.processor.image_processor(images=[[item.image for item in images]], return_row_col_info=True,
                                               return_tensors="pt")
        expansions = [self.processor.replace_image_token(batch, index) for index in range(len(images))]
        return {"pixel_values": batch["pixel_values"], "pixel_attention_mask": batch["pixel_attention_mask"]}, \
            expansions

    def _visual_map(self, input_ids: torch.Tensor, media: list, views: list[int]) -> VisualMap:
        """Every frame, or image view, is `image_seq_len` <image> tokens. A split image lists its tiles row by
        row and its global view last: tiles get 1..n, the global view 0. `views`: views per media item."""
        from vlm_app.media import SampledVideo

        per_view = self.processor.image_seq_len
        token_id = self.processor.image_token_id
        spans = []
        for media_index, item in enumerate(media):
            if isinstance(item, SampledVideo):
                frames = [k // per_view for k in range(len(item.frames_indices) * per_view)]
                spans.append({"token_id": token_id, "media_index": media_index, "frame_index": frames,
                              "tile_index": 0, "timestamp": [item.timestamps[f] for f in frames]})
            else:
                count = views[media_index]
                tiles = [(k // per_view + 1) % count for k in range(count * per_view)]
                spans.append({"token_id": token_id, "media_index": media_index, "frame_index": [-1] * len(tiles),
                              "tile_index": tiles, "timestamp": math.nan})
        return VisualMap.from_spans(input_ids, spans)

    # ---- batching ------------------------------------------------------------------------------------------------
    def collate(self, inputs_list: list[dict]) -> dict:
        """As the processor batches: sequences left-padded; each row's frames (views) stacked, a shorter row padded
        with exactly-zero images and masks, which the model drops before its encoder."""
        from vlm_app.batching import collate_rows, sequence_rules

        return collate_rows(inputs_list, sequence_rules(self), stacked={"pixel_values": 0, "pixel_attention_mask": 0})

    # ---- memory ----------------------------------------------------------------------------------------------
    def memory_dims(self) -> ModelDims:
        vision = self.config.vision_config
        return ModelDims(text=text_dims(self.config.text_config),
                         vision=VisionDims(hidden=vision.hidden_size, mlp_width=vision.intermediate_size,
                                           heads=vision.num_attention_heads), pixel_copies=1)

    def video_shape(self, metadata, options: dict) -> tuple[RequestShape, int, int]:
        """Every frame is one image of the processor's frame size, `image_seq_len` tokens; the decoded frames stay
        at their native size until the processor resizes them."""
        from vlm_app.media.video import choose_frames

        frames = len(choose_frames(metadata, self.sampling_policy(options), options)[0])
        side = self.processor.video_processor.max_image_size["longest_edge"]
        pixels = frames * 3 * side * side * 4  # float32 frames (and a one-byte patch mask per pixel)
        shape = RequestShape(text_tokens=VIDEO_TEXT_TOKENS + frames * FRAME_TEXT_TOKENS,
                             visual_tokens=frames * self.processor.image_seq_len, encoder_sequences=frames,
                             encoder_sequence=(side // self.config.vision_config.patch_size) ** 2,
                             media_bytes=frames * (3 * metadata.height * metadata.width + side * side) + pixels,
                             pixel_bytes=pixels, encoder_masked=metadata.width != metadata.height)
        return shape, frames, 0

    def encoder_masked(self, inputs: dict) -> bool:
        return "pixel_attention_mask" in inputs and not bool(inputs["pixel_attention_mask"].all())

    def encoder_batch(self, inputs: dict) -> tuple[int, int]:
        if "pixel_values" not in inputs:
            return 0, 0
        batch, views, _, height, width = inputs["pixel_values"].shape
        patch = self.config.vision_config.patch_size
        return batch * views, (height // patch) * (width // patch)

    # ---- real sizes (bench model) -------------------------------------------------------------------------------
    @classmethod
    def real_size(cls, size: str, layers: tuple[int, int] | None = None):
        """(model class, config, processor) of a published size with our tokenizer; `layers` (vision, text) makes
        a reduced model of the real widths."""
        from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

        from vlm_app.testing.tiny import smolvlm2_processor

        spec = REAL_SIZES[size]
        vision = spec["vision"] if layers is None else {**spec["vision"], "num_hidden_layers": layers[0]}
        seq_len = (vision["image_size"] // vision["patch_size"]) ** 2 // spec["scale_factor"] ** 2
        processor = smolvlm2_processor(image_size=vision["image_size"], image_seq_len=seq_len, max_frames=64)
        ids = processor.tokenizer.convert_tokens_to_ids
        config = SmolVLMConfig(
            vision_config=vision, scale_factor=spec["scale_factor"], image_token_id=ids("<image>"),
            text_config=dict(model_type="llama", vocab_size=REAL_VOCAB, rms_norm_eps=1e-5,
                             eos_token_id=ids("<end_of_utterance>"), pad_token_id=ids("<|im_end|>"),
                             tie_word_embeddings=False,
                             **(spec["text"] if layers is None else {**spec["text"], "num_hidden_layers": layers[1]})))
        return SmolVLMForConditionalGeneration, config, processor


ADAPTER = SmolVLM2Adapter
