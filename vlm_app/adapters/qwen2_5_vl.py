"""Qwen2.5-VL: our frames (qwen-vl-utils sampling and resizing) go to the HF processor as they are, with their
video metadata, so `second_per_grid_ts` = temporal_patch_size / sample_fps and mRoPE sees absolute time.

Without the metadata transformers 5 assumes 24 fps (0.083 s per grid instead of 1 s at fps 2), and the
model card's `fps=[...]` keyword is rejected outright; this is the fix, done once here.

The processor does not resize again (`do_resize=False`), so the checkpoint's own pixel bounds (`min_pixels` /
`max_pixels` of its preprocessor_config.json; a fine-tune may narrow them) bound our policy instead: frames and
images are sized within them unless the user sets min_pixels / max_pixels. For the released checkpoints (3136 to
12845056 pixels) the policy's sizes are unchanged.
"""

from __future__ import annotations

import math

from vlm_app.adapters.base import PatchGridAdapter
from vlm_app.media.policies import SamplingPolicy, qwen_vl_utils
from vlm_app.memory import FitRules, ModelDims, RequestShape, VisionDims, text_dims


# The real sizes (`bench model`), transcribed from the published config.json files (architecture fields only),
# checked by parameter count against the model cards (3.75B / 8.29B / 33.5B / 73.4B) and, for 3B and 7B, field by
# field against their real config.json (tests/test_adapters_bench_model.py). transformers' Qwen2_5_VLConfig
# defaults are the 72B text and the shared vision tower (but tokens_per_second 4: the files say 2).
QWEN2_5_VL_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                         spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                         fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu")
QWEN2_5_VL_TEXT = {
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "32b": dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
                num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
    "72b": dict(hidden_size=8192, intermediate_size=29568, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
}


def hf_video_metadata(video):
    """transformers' VideoMetadata for one of our SampledVideos: the source fps, the chosen indices, and the
    frame count of the sampled range (so that len(indices) / total * fps is our sample fps)."""
    from transformers.video_utils import VideoMetadata

    source = video.metadata
    in_range = max(len(video.frames_indices), round(len(video.frames_indices) * source.fps / video.sample_fps))
    return VideoMetadata(total_num_frames=in_range, fps=source.fps, duration=source.duration, width=source.width,
                         height=source.height, frames_indices=list(video.frames_indices))


def _pixel_bounds(processor) -> tuple[int, int]:
    """(min_pixels, max_pixels) of a Qwen2-VL image or video processor (transformers 5 keeps them in `size`)."""
    return processor.size["shortest_edge"], processor.size["longest_edge"]


def qwen2_5_vl_policy() -> SamplingPolicy:
    """qwen-vl-utils 0.0.14 (the model card's route): 28-px grid, frame pairs, 128..768 tokens a frame."""
    return qwen_vl_utils("qwen2_5_vl", patch_size=14)


class Qwen2_5_VLAdapter(PatchGridAdapter):
    family = "qwen2_5_vl"
    display_name = "Qwen2.5-VL"
    model_types = ("qwen2_5_vl",)
    short_names = {f"qwen2.5-vl-{size}": f"Qwen/Qwen2.5-VL-{size.upper()}-Instruct" for size in ("3b", "7b", "32b", "72b")}
    hub_pattern = r"qwen2\.5-vl"
    policies = {"qwen2_5_vl": qwen2_5_vl_policy}
    policy = "qwen2_5_vl"
    tiny = {"qwen2_5_vl": "vlm_app.testing.tiny:build_tiny_qwen2_5_vl"}
    real_sizes = tuple(QWEN2_5_VL_TEXT)

    def sampling_defaults(self, policy: str) -> dict:
        low, high = _pixel_bounds(self.processor.video_processor)
        return {"min_pixels": min(max(self.sampling_policy().min_pixels, low), high), "max_pixels": high}

    @classmethod
    def visual_tokens(cls, video, model_name: str) -> int:
        """An odd frame count is padded to pairs; every 2x2 patches of 14 px make a token."""
        return math.ceil(len(video.frames_indices) / 2) * (video.resized_height // 28) * (video.resized_width // 28)

    @classmethod
    def frame_labels(cls, video) -> list[str]:
        """Qwen2.5-VL reads time from mRoPE positions (second_per_grid_ts), not from text."""
        return []

    def image_defaults(self) -> dict:
        low, high = _pixel_bounds(self.processor.image_processor)
        return {"min_pixels": low, "max_pixels": high}

    def video_metadata(self, video):
        return hf_video_metadata(video)

    # ---- batching ------------------------------------------------------------------------------------------------
    def collate(self, inputs_list: list[dict]) -> dict:
        """As the processor batches: sequences left-padded, every video's (image's) patches and grid and time step in
        batch order."""
        from vlm_app.batching import collate_rows, sequence_rules

        return collate_rows(inputs_list, sequence_rules(self, "mm_token_type_ids"), concatenated=dict.fromkeys(
            ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts", "pixel_values", "image_grid_thw"), 0))

    # ---- memory ----------------------------------------------------------------------------------------------
    def memory_dims(self) -> ModelDims:
        vision = self.config.vision_config
        return ModelDims(text=text_dims(self.config.text_config),
                         vision=VisionDims(hidden=vision.hidden_size, mlp_width=vision.intermediate_size,
                                           heads=vision.num_heads, mlp_tensors=3))

    def video_shape(self, metadata, options: dict) -> tuple[RequestShape, int, int]:
        """Our frames at their resized size: every frame_factor frames share a grid of patches, 4 patches make a
        token; the encoder sees all patches as one sequence (window attention within it)."""
        from vlm_app.media.video import choose_frames, output_size

        policy = self.sampling_policy(options)
        frames = len(choose_frames(metadata, policy, options)[0])
        height, width = output_size(metadata.height, metadata.width, frames, policy, options)
        vision = self.config.vision_config
        patches = frames * height * width // (vision.patch_size**2 * vision.temporal_patch_size)
        media = frames * 3 * height * width * (1 + 4)  # uint8 frames and the float32 patches
        shape = RequestShape(text_tokens=2, visual_tokens=patches // vision.spatial_merge_size**2,
                             encoder_sequences=1, encoder_sequence=patches, media_bytes=media)
        return shape, frames, height * width

    def encoder_batch(self, inputs: dict) -> tuple[int, int]:
        rows = [inputs[name].shape[0] for name in ("pixel_values_videos", "pixel_values") if name in inputs]
        return (1, max(rows)) if rows else (0, 0)

    def fit_rules(self, options: dict) -> FitRules:
        policy = self.sampling_policy(options)
        min_pixels = options.get("min_pixels", policy.min_pixels)
        return FitRules(min_frames=options.get("min_frames", policy.min_frames), frame_step=policy.frame_factor,
                        pixel_step=policy.factor**2, min_pixels=int(min_pixels))

    # ---- real sizes (bench model) -------------------------------------------------------------------------------
    @classmethod
    def real_size(cls, size: str, layers: tuple[int, int] | None = None):
        """(model class, config, processor) of a published size with our tokenizer; `layers` (vision, text) makes
        a reduced model of the real widths."""
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        from vlm_app.testing.tiny import qwen2_5_vl_processor

        processor = qwen2_5_vl_processor()
        ids = processor.tokenizer.convert_tokens_to_ids
        text = QWEN2_5_VL_TEXT[size]
        vision = dict(QWEN2_5_VL_VISION)
        if layers is not None:  # the last vision layer attends fully
            vision.update(depth=layers[0], fullatt_block_indexes=[layers[0] - 1])
            text = {**text, "num_hidden_layers": layers[1]}
        config = Qwen2_5_VLConfig(
            text_config=dict(**text, max_position_embeddings=128000, rms_norm_eps=1e-6,
                             rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
                             eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>")),
            vision_config=dict(**vision, out_hidden_size=text["hidden_size"]),
            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
            tie_word_embeddings=text["tie_word_embeddings"])
        return Qwen2_5_VLForConditionalGeneration, config, processor


ADAPTER = Qwen2_5_VLAdapter
