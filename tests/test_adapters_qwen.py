"""Qwen2.5-VL adapter: our inputs equal the reference route (qwen-vl-utils + processor with metadata), and
second_per_grid_ts follows the sample fps."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from adapter_fixtures import video_messages
from PIL import Image

os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")  # decord and torchcodec agree on CFR files


def reference_inputs(processor, messages, prompt):
    """The model-card route fixed for transformers 5: qwen-vl-utils with metadata, passed to the processor."""
    from qwen_vl_utils import process_vision_info

    images, videos, video_kwargs = process_vision_info(messages, return_video_kwargs=True,
                                                       return_video_metadata=True)
    frames, metadata = (zip(*videos) if videos else ((), ()))
    return processor(text=[prompt], images=images, videos=list(frames) or None,
                     video_metadata=list(metadata) or None, return_tensors="pt", **video_kwargs)


def test_video_inputs_equal_qwen_vl_utils_route(qwen_adapter, example_clip):
    messages = video_messages(str(example_clip))
    prepared = qwen_adapter.prepare(messages)
    expected = reference_inputs(qwen_adapter.processor, messages, prepared.prompt)
    for key in ("input_ids", "attention_mask", "video_grid_thw", "second_per_grid_ts"):
        assert torch.equal(prepared.inputs[key], expected[key]), key
    # the compiled exact resize is within one grey level of torchvision's float path (tests/test_resize.py)
    one_level = 1 / 255 / min(qwen_adapter.processor.video_processor.image_std) + 1e-6
    assert (prepared.inputs["pixel_values_videos"] - expected["pixel_values_videos"]).abs().max() <= one_level
    assert prepared.inputs["second_per_grid_ts"].item() == pytest.approx(1.0)  # fps 2, two frames per grid


def test_image_inputs_equal_qwen_vl_utils_route(qwen_adapter, tmp_path):
    path = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (250, 333, 3), dtype=np.uint8)).save(path)
    messages = [{"role": "user", "content": [{"type": "image", "image": str(path)},
                                             {"type": "text", "text": "What is this?"}]}]
    prepared = qwen_adapter.prepare(messages)
    expected = reference_inputs(qwen_adapter.processor, messages, prepared.prompt)
    for key in ("input_ids", "pixel_values", "image_grid_thw"):
        assert torch.equal(prepared.inputs[key], expected[key]), key
    assert math.isnan(prepared.visual_map.timestamp[0]) and prepared.visual_map.frame_index[0] == -1


@pytest.mark.parametrize("options", [{"fps": 1.0}, {"fps": 2.0}, {"fps": 4.0}, {"nframes": 6}])
def test_second_per_grid_ts_follows_sample_fps(qwen_adapter, example_clip, options):
    prepared = qwen_adapter.prepare(video_messages(str(example_clip), **options))
    video = prepared.media[0]
    if "fps" in options:
        assert video.sample_fps == pytest.approx(options["fps"])
    else:
        assert len(video.frames_indices) == 6 and video.sample_fps == pytest.approx(6 / 96 * 24)
    assert prepared.inputs["second_per_grid_ts"].item() == pytest.approx(2 / video.sample_fps, rel=1e-6)


def test_visual_map_pairs_frames_with_their_times(qwen_adapter, example_clip):
    prepared = qwen_adapter.prepare(video_messages(str(example_clip), fps=2.0))
    ids = prepared.inputs["input_ids"][0]
    vmap = prepared.visual_map
    assert torch.equal(vmap.positions, (ids == qwen_adapter.model.config.video_token_id).nonzero().flatten())
    t, h, w = prepared.inputs["video_grid_thw"][0].tolist()
    per_pair = h * w // 4
    assert len(vmap) == t * per_pair == prepared.num_tokens.visual
    assert prepared.num_tokens.total == ids.numel()
    timestamps = prepared.media[0].timestamps
    for pair in range(t):
        rows = slice(pair * per_pair, (pair + 1) * per_pair)
        assert set(vmap.frame_index[rows].tolist()) == {2 * pair}
        assert set(vmap.timestamp[rows].tolist()) == {timestamps[2 * pair]}
