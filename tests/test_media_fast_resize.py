"""`resize="fast"`: the opt-in uint8 kernel keeps the sampling and size of the exact path, and its pixels stay close."""

import pytest
import torch

from vlm_app.cli import main
from vlm_app.errors import OptionsError
from vlm_app.media import load_video


@pytest.mark.parametrize("name", ["h264_25fps_odd", "h264_2997fps_bframes", "h264_rotated90"])
def test_fast_resize_keeps_frames_and_size_and_stays_close(media_videos, frame_cache, name):
    exact = load_video(str(media_videos[name]))
    fast = load_video(str(media_videos[name]), resize="fast")
    assert fast.frames_indices == exact.frames_indices
    assert fast.frames.shape == exact.frames.shape and fast.frames.dtype == torch.uint8
    difference = (fast.frames.int() - exact.frames.int()).abs()
    assert difference.max() <= 40  # hard synthetic edges under upscaling are the worst case
    assert (difference > 1).float().mean() < 0.01


def test_exact_is_the_default(media_videos, frame_cache):
    path = str(media_videos["h264_25fps_odd"])
    assert torch.equal(load_video(path).frames, load_video(path, resize="exact").frames)


def test_bad_resize_value_and_non_resizing_policy(media_videos, capsys):
    path = str(media_videos["h264_24fps_2s"])
    with pytest.raises(OptionsError, match="resize must be one of exact, fast"):
        load_video(path, resize="lanczos")
    with pytest.raises(OptionsError, match="does not resize"):
        load_video(path, policy="smolvlm2", resize="fast")
    assert main(["inspect", path, "--model", "qwen2_5_vl", "--resize", "fast", "--json"]) == 0
    assert '"resized_height"' in capsys.readouterr().out
