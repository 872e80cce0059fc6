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


class SmolVLM2Adapter(Adapter):
    family = "smolvlm2"
    policy = "smolvlm2"

    def sampling_defaults(self) -> dict:
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

    # ---- memory ----------------------------------------------------------------------------------------------
    def memory_dims(self) -> ModelDims:
        vision = self.config.vision_config
        return ModelDims(text=text_dims(self.config.text_config),
                         vision=VisionDims(hidden=vision.hidden_size, mlp_width=vision.intermediate_size,
                                           heads=vision.num_attention_heads), pixel_copies=1)

    def video_shape(self, metadata, options: dict) -> tuple[RequestShape, int, int]:
        """Every frame is one image of the processor's frame size, `image_seq_len` tokens; the decoded frames stay
        at their native size until the processor resizes them."""
        from vlm_app.media.policies import get_policy
        from vlm_app.media.video import choose_frames

        frames = len(choose_frames(metadata, get_policy(self.policy), options)[0])
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
