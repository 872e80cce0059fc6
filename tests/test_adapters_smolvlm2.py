"""SmolVLM2 adapter: equals the HF processor's own sampling path, states real times, and is not fooled by
batch padding."""

from __future__ import annotations

import av
import numpy as np
import torch
from adapter_fixtures import video_messages
from PIL import Image


def decode_all(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
        fps = float(stream.average_rate)
    return frames, fps


def test_inputs_equal_hf_sampling_path(smol_adapter, example_clip):
    from transformers.video_utils import VideoMetadata

    prepared = smol_adapter.prepare(video_messages(str(example_clip)))
    frames, fps = decode_all(example_clip)
    metadata = VideoMetadata(total_num_frames=len(frames), fps=fps, duration=len(frames) / fps,
                             width=frames.shape[2], height=frames.shape[1])
    expected = smol_adapter.processor(text=[prepared.prompt], videos=[frames], video_metadata=[metadata],
                                      do_sample_frames=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask"):
        assert torch.equal(prepared.inputs[key], expected[key]), key


def test_prompt_states_real_times_and_count(smol_adapter, example_clip):
    prepared = smol_adapter.prepare(video_messages(str(example_clip)))
    text = smol_adapter.tokenizer.decode(prepared.inputs["input_ids"][0])
    assert prepared.media[0].frames_indices == [0, 31, 63, 95]  # fps 1 over 4 s
    assert "series of four frames from a 0:00:04 [H:MM:SS] video" in text
    for second in range(4):
        assert f"Frame from 00:0{second}:" in text
    per_frame = smol_adapter.processor.image_seq_len
    assert prepared.num_tokens.visual == 4 * per_frame == len(prepared.visual_map)
    assert prepared.visual_map.frame_index.tolist() == [k // per_frame for k in range(4 * per_frame)]


def test_batch_padding_does_not_change_stated_frame_count(smol_adapter, example_clip, make_clip, tmp_path):
    short = make_clip(tmp_path / "short.mp4", 2.0, 24, 160, 120)
    messages = [{"role": "user", "content": [{"type": "video", "video": str(example_clip)},
                                             {"type": "video", "video": str(short)},
                                             {"type": "text", "text": "Compare the videos."}]}]
    prepared = smol_adapter.prepare(messages)
    text = smol_adapter.tokenizer.decode(prepared.inputs["input_ids"][0])
    assert "series of four frames from a 0:00:04" in text
    assert "series of two frames from a 0:00:02" in text
    assert prepared.visual_map.media_index.bincount().tolist() == [4 * 4, 2 * 4]
    output = smol_adapter.forward(prepared)  # the padded frames are dropped by the model: counts line up
    assert output.logits.shape[1] == prepared.num_tokens.total


def test_image_inputs_equal_processor(smol_adapter):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "What is this?"}]}]
    prepared = smol_adapter.prepare(messages)
    expected = smol_adapter.processor(text=[prepared.prompt], images=[[image]], return_tensors="pt")
    for key in ("input_ids", "pixel_values", "pixel_attention_mask"):
        assert torch.equal(prepared.inputs[key], expected[key]), key
    tiles = prepared.visual_map.tile_index
    assert tiles.max().item() == expected["pixel_values"].shape[1] - 1 and (tiles == 0).sum() == 4
