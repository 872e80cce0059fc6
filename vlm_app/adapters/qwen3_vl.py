"""Qwen3-VL and Qwen3.5 / 3.6 (`model_type` qwen3_vl, qwen3_vl_moe, qwen3_5, qwen3_5_moe): one processor
(`Qwen3VLProcessor`), time as text — each temporal group of two frames is preceded by `<t seconds>`.

Two sampling policies, both reproduced exactly by our pipeline, and our frames go to the processor once
(`do_sample_frames=False`, `do_resize=False`), never sampled or resized a second time:
- `qwen3_vl` (default, the model card's route): transformers' `Qwen3VLVideoProcessor` with the checkpoint's own
  video settings — int(seconds · fps) frames within [min_frames, max_frames], rounded float64 linspace, one pixel
  budget over frames × height × width in multiples of 32 (`cap_pixels_per_frame` when the config or user sets it);
  an odd frame count is padded by the processor, repeating the last frame.
- `qwen3_vl_utils`: qwen-vl-utils 0.0.14 with `image_patch_size=16` (frame pairs, per-frame and total budgets).

Each video goes with its metadata (source fps, frame indices in the whole file), so the markers are the times of
the frames shown — in the whole video, also for `video_start` and chapters segments. A variable-frame-rate clip's
frames are labelled by their presentation times (index / fps is no time there).

Thinking checkpoints (Qwen3-VL-*-Thinking, Qwen3.5 by default) write their reasoning before `</think>`: the answer
is what follows it, and the record keeps the reasoning apart (`split_reasoning`).
"""

from __future__ import annotations

import math

from vlm_app.adapters.base import PatchGridAdapter, timed_video_metadata
from vlm_app.memory import FitRules, ModelDims, RequestShape, VisionDims, text_dims
from vlm_app.media.policies import SamplingPolicy, qwen_vl_utils

FACTOR = 32  # patch 16 x spatial merge 2
THINK_END = "</think>"
GROUP_TEXT_TOKENS = 12  # "<12.5 seconds>" with its vision start and end tokens

_VL_SIZES = ("2B", "4B", "8B", "32B", "30B-A3B", "235B-A22B")
_SHORT_NAMES = {
    **{f"qwen3-vl-{size.lower()}": f"Qwen/Qwen3-VL-{size}-Instruct" for size in _VL_SIZES},
    **{f"qwen3-vl-{size.lower()}-thinking": f"Qwen/Qwen3-VL-{size}-Thinking" for size in _VL_SIZES},
    **{f"qwen3.5-{size.lower()}": f"Qwen/Qwen3.5-{size}" for size in ("0.8B", "2B", "4B", "9B", "27B", "35B-A3B")},
    **{f"qwen3.6-{size.lower()}": f"Qwen/Qwen3.6-{size}" for size in ("27B", "35B-A3B")},
}

# The real sizes (`bench model`): Qwen/Qwen3-VL-2B-Instruct's config.json (architecture fields only).
REAL_SIZES = {
    "2b": dict(text=dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                         num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
               vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                           deepstack_visual_indexes=[5, 11, 17])),
}


def qwen3_vl_policy() -> SamplingPolicy:
    """transformers' Qwen3VLVideoProcessor class defaults; a checkpoint's own settings come on top
    (`Qwen3VLAdapter.sampling_defaults`)."""
    return SamplingPolicy(name="qwen3_vl", index_rule="linspace", fps=2.0, min_frames=4, max_frames=768,
                          frame_factor=2, factor=FACTOR, resize_rule="video", min_pixels=128 * FACTOR**2,
                          max_pixels=768 * FACTOR**2, max_tokens_per_frame=768, reference_resize="uint8")


def qwen3_vl_utils_policy() -> SamplingPolicy:
    """qwen-vl-utils 0.0.14 with `image_patch_size=16`."""
    return qwen_vl_utils("qwen3_vl_utils", patch_size=16)


def group_times(video) -> list[float]:
    """The time of each temporal group as the processor writes it: the mean of its two frames' times (an odd
    last frame is paired with itself)."""
    metadata = timed_video_metadata(video)
    times = [index / metadata.fps for index in metadata.frames_indices]
    times += times[-1:] * (len(times) % 2)
    return [(times[i] + times[i + 1]) / 2 for i in range(0, len(times), 2)]


class Qwen3VLAdapter(PatchGridAdapter):
    family = "qwen3_vl"
    display_name = "Qwen3-VL"
    model_types = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")
    short_names = _SHORT_NAMES
    hub_pattern = r"qwen3(\.\d+)?-vl|qwen3\.[5-9]"
    policies = {"qwen3_vl": qwen3_vl_policy, "qwen3_vl_utils": qwen3_vl_utils_policy}
    policy = "qwen3_vl"
    tiny = {"qwen3_vl": "vlm_app.testing.qwen3_vl:build_tiny_qwen3_vl",
            "qwen3_vl_thinking": "vlm_app.testing.qwen3_vl:build_tiny_qwen3_vl_thinking",
            "qwen3_5": "vlm_app.testing.qwen3_vl:build_tiny_qwen3_5"}
    real_sizes = tuple(REAL_SIZES)

    # ---- what a video costs and reads ----------------------------------------------------------------------------
    @classmethod
    def visual_tokens(cls, video, model_name: str) -> int:
        """Two frames make a temporal group (an odd last frame is repeated); 2x2 patches of 16 px make a token."""
        groups = math.ceil(len(video.frames_indices) / 2)
        return groups * (video.resized_height // FACTOR) * (video.resized_width // FACTOR)

    @classmethod
    def frame_labels(cls, video) -> list[str]:
        """The text before each temporal group, exactly as the processor writes it."""
        return [f"<{seconds:.1f} seconds>" for seconds in group_times(video)]

    def split_reasoning(self, text: str) -> tuple[str, str | None]:
        """(answer, reasoning): a Thinking checkpoint's reasoning ends at `</think>`."""
        if THINK_END not in text:
            return text, None
        reasoning, _, answer = text.partition(THINK_END)
        return answer.strip(), reasoning.removeprefix("<think>").strip()

    # ---- inputs --------------------------------------------------------------------------------------------------
    def sampling_defaults(self, policy: str) -> dict:
        """The checkpoint's video settings bound the policy: for `qwen3_vl` they are the policy (pixel budget, fps,
        frame bounds, the per-frame cap); for `qwen3_vl_utils`, its pixel bounds as they do for Qwen2.5-VL."""
        video = self.processor.video_processor
        low, high = video.size["shortest_edge"], video.size["longest_edge"]
        if policy == "qwen3_vl_utils":
            floor = qwen3_vl_utils_policy().min_pixels
            return {"min_pixels": min(max(floor, low), high)}
        defaults = {"min_pixels": low, "max_pixels": high, "fps": video.fps, "min_frames": video.min_frames,
                    "max_frames": video.max_frames}
        if getattr(video, "cap_pixels_per_frame", None):
            defaults["cap_pixels_per_frame"] = True
        return defaults

    def image_defaults(self) -> dict:
        size = self.processor.image_processor.size
        return {"min_pixels": size["shortest_edge"], "max_pixels": size["longest_edge"]}

    def video_metadata(self, video):
        return timed_video_metadata(video)

    # ---- batching ------------------------------------------------------------------------------------------------
    def collate(self, inputs_list: list[dict]) -> dict:
        """As the processor batches: sequences left-padded, every video's (image's) patches and grid in
        batch order."""
        from vlm_app.batching import collate_rows, sequence_rules

        return collate_rows(inputs_list, sequence_rules(self, "mm_token_type_ids"), concatenated=dict.fromkeys(
            ("pixel_values_videos", "video_grid_thw", "pixel_values", "image_grid_thw"), 0))

    # ---- memory --------------------------------------------------------------------------------------------------
    def memory_dims(self) -> ModelDims:
        vision = self.config.vision_config
        return ModelDims(text=text_dims(self.config.text_config),
                         vision=VisionDims(hidden=vision.hidden_size, mlp_width=vision.intermediate_size,
                                           heads=vision.num_heads, mlp_tensors=2))

    def video_shape(self, metadata, options: dict) -> tuple[RequestShape, int, int]:
        """Our frames at their resized size; each temporal group of two frames is one encoder sequence (the vision
        tower attends within a group), 4 patches make a token. The pixels the fit lowers are the budget's: per
        frame for qwen3_vl_utils, frames x height x width for qwen3_vl."""
        from vlm_app.media.video import choose_frames, output_size

        policy = self.sampling_policy(options)
        frames = len(choose_frames(metadata, policy, options)[0])
        height, width = output_size(metadata.height, metadata.width, frames, policy, options)
        groups = math.ceil(frames / 2)
        patches = height * width // 16**2
        media = frames * 3 * height * width + groups * 2 * 3 * height * width * 4  # uint8 frames, float32 patches
        shape = RequestShape(text_tokens=groups * GROUP_TEXT_TOKENS, visual_tokens=groups * patches // 4, encoder_sequences=groups,
                             encoder_sequence=patches, media_bytes=media)
        budget = frames * height * width if policy.resize_rule == "video" else height * width
        return shape, frames, budget

    def encoder_batch(self, inputs: dict) -> tuple[int, int]:
        grids = [grid for name in ("video_grid_thw", "image_grid_thw") if name in inputs for grid in inputs[name]]
        if not grids:
            return 0, 0
        return sum(int(grid[0]) for grid in grids), max(int(grid[1] * grid[2]) for grid in grids)

    def fit_rules(self, options: dict) -> FitRules:
        policy = self.sampling_policy(options)
        min_pixels = int(options.get("min_pixels", policy.min_pixels))
        return FitRules(min_frames=options.get("min_frames", policy.min_frames), frame_step=2,
                        pixel_step=FACTOR**2, min_pixels=min_pixels)

    # ---- real sizes (bench model) --------------------------------------------------------------------------------
    @classmethod
    def real_size(cls, size: str, layers: tuple[int, int] | None = None):
        """(model class, config, processor) of a published size with our tokenizer; `layers` (vision, text) makes
        a reduced model of the real widths."""
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        from vlm_app.testing.qwen3_vl import qwen3_vl_processor

        processor = qwen3_vl_processor()
        ids = processor.tokenizer.convert_tokens_to_ids
        text, vision = dict(REAL_SIZES[size]["text"]), dict(REAL_SIZES[size]["vision"])
        if layers is not None:
            vision.update(depth=layers[0], deepstack_visual_indexes=list(range(min(3, layers[0]))))
            text["num_hidden_layers"] = layers[1]
        rope = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20], "mrope_interleaved": True}
        config = Qwen3VLConfig(
            text_config=dict(**text, max_position_embeddings=262144, rms_norm_eps=1e-6, rope_parameters=rope,
                             eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>")),
            vision_config=dict(**vision, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                               num_position_embeddings=2304, out_hidden_size=text["hidden_size"]),
            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
            tie_word_embeddings=text["tie_word_embeddings"])
        return Qwen3VLForConditionalGeneration, config, processor


ADAPTER = Qwen3VLAdapter
