"""The DeepSeek-VL2 adapter on a tiny checkpoint: video frames within the context budget, timestamps in the
prompt, the visual-token map, images, forward/generate/stream."""

import math
import re

import pytest
import torch
from PIL import Image

from vlm_app.adapters.deepseek_vl2 import DeepseekVL2Adapter, frame_label
from vlm_app.errors import LimitError


@pytest.fixture(scope="module")
def adapter(tiny_deepseek_dirs):
    return DeepseekVL2Adapter.load(str(tiny_deepseek_dirs["tiny"]), device="cpu", dtype="float32")


def _video_messages(video, prompt):
    return [{"role": "user", "content": [{"type": "video", "video": str(video)}, {"type": "text", "text": prompt}]}]


@pytest.mark.parametrize("prompt_words", [2, 150])
@pytest.mark.parametrize("max_new_tokens", [16, 512, 1500])
def test_frames_fill_the_context_budget(adapter, deepseek_long_video, prompt_words, max_new_tokens):
    prompt = "Describe the video. " + " ".join(["detail"] * prompt_words)
    prepared = adapter.prepare(_video_messages(deepseek_long_video, prompt), max_new_tokens=max_new_tokens)
    video = prepared.media[0]
    frames = len(video.frames_indices)
    total = prepared.num_tokens.total
    assert total + max_new_tokens <= adapter.context_tokens  # fits
    label = max(len(adapter.processor.encode(frame_label(t) + "\n", bos=False)) for t in video.timestamps)
    assert total + max_new_tokens + 421 + label + 1 > adapter.context_tokens or frames == 60  # one more would not
    assert prepared.num_tokens.visual == 421 * frames  # three or more frames: no tiling
    assert frames == adapter.frame_budget(_video_messages(deepseek_long_video, prompt), max_new_tokens)


def test_timestamps_in_the_prompt_are_the_frames_real_times(adapter, deepseek_long_video):
    prepared = adapter.prepare(_video_messages(deepseek_long_video, "What happens?"), max_new_tokens=256)
    video = prepared.media[0]
    shown = re.findall(r"Frame at (\d\d):(\d\d): <image>", prepared.prompt)
    assert [int(m) * 60 + int(s) for m, s in shown] == [int(t) for t in video.timestamps]
    # the frames are spread over the whole minute, at their decoded presentation times
    assert video.timestamps[0] < 5 and video.timestamps[-1] > 50
    assert all(abs(t - i / 4) < 1e-6 for t, i in zip(video.timestamps, video.frames_indices))
    assert frame_label(3725.2) == "Frame at 1:02:05: "


def test_visual_map_points_to_frames_and_tiles(adapter, deepseek_long_video):
    prepared = adapter.prepare(_video_messages(deepseek_long_video, "What happens?"), max_new_tokens=256)
    video, vmap = prepared.media[0], prepared.visual_map
    ids = prepared.inputs["input_ids"][0]
    assert torch.equal(vmap.positions, (ids == adapter.processor.image_token_id).nonzero().flatten())
    frames = len(video.frames_indices)
    assert vmap.frame_index.tolist() == [f for f in range(frames) for _ in range(421)]
    assert torch.allclose(vmap.timestamp, torch.tensor(video.timestamps, dtype=torch.float64).repeat_interleave(421))
    assert vmap.tile_index[:421].tolist() == [0] * 211 + [1] * 210  # global view + separator, then the tile


def test_image_tiles_in_the_visual_map_and_generation(adapter):
    image = Image.new("RGB", (800, 420), (20, 90, 200))
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "What colour is it?"}]}]
    prepared = adapter.prepare(messages)
    vmap = prepared.visual_map
    assert prepared.inputs["images_spatial_crop"][0].tolist() == [[3, 2]]
    assert len(vmap) == 1415 and math.isnan(vmap.timestamp[0]) and vmap.frame_index.unique().tolist() == [-1]
    local = vmap.tile_index[211:].view(28, 43)  # 2 tile rows x 14, 3 tile columns x 14 + newline
    assert local[0, :14].unique().tolist() == [1] and local[0, 14:28].unique().tolist() == [2]
    assert local[14, 28:].unique().tolist() == [6] and local[27, 42] == 6
    out = adapter.forward(prepared)
    assert len(out.hidden_states) == adapter.num_layers + 1
    assert out.visual_hidden().shape == (1415, 64)
    generation = adapter.generate(prepared, max_new_tokens=5)
    assert 1 <= generation.timings.new_tokens <= 5
    streamed = "".join(adapter.stream(prepared, max_new_tokens=5))
    assert streamed == generation.text


def test_no_room_for_frames_is_a_clear_error(adapter, deepseek_long_video):
    with pytest.raises(LimitError, match="no video frame fits"):
        adapter.prepare(_video_messages(deepseek_long_video, "Describe."), max_new_tokens=4000)
