"""The pure sampling functions against qwen-vl-utils 0.0.14 and transformers' SmolVLM processor, exhaustively."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from qwen_vl_utils import vision_process as qwen

from vlm_app.errors import LimitError, OptionsError
from vlm_app.media import sampling
from vlm_app.adapters.deepseek_vl2 import deepseek_max_frames
from vlm_app.adapters.smolvlm2 import SmolVLM2Adapter
from vlm_app.media.policies import get_policy

FRAME_COUNTS = [1, 2, 3, 5, 8, 24, 37, 60, 61, 120, 299, 601, 1500, 4999, 18000, 50894]
SOURCE_FPS = [10, 23.976, 24, 25, 29.97, 30, 50, 60]


def qwen_or_error(function, *args):
    try:
        return function(*args)
    except (ValueError, AssertionError) as error:
        return type(error)


@pytest.mark.parametrize("height, width", [(1, 1), (27, 29), (59, 97), (64, 96), (240, 320), (480, 854),
                                           (720, 1280), (1080, 1920), (2160, 3840), (130, 50), (10, 1999),
                                           (3, 700)])
@pytest.mark.parametrize("min_pixels, max_pixels", [(None, None), (100352, 602112), (3136, 12845056),
                                                    (100352, 235200), (100352, 105369), (50000, 50000),
                                                    (200000, 100000)])
def test_smart_resize_matches_qwen(height, width, min_pixels, max_pixels):
    expected = qwen_or_error(qwen.smart_resize, height, width, 28, min_pixels, max_pixels)
    if expected is AssertionError:
        with pytest.raises(OptionsError, match="max_pixels .* smaller than min_pixels"):
            sampling.smart_resize(height, width, 28, min_pixels, max_pixels)
    elif expected is ValueError:
        with pytest.raises(LimitError, match="aspect ratio"):
            sampling.smart_resize(height, width, 28, min_pixels, max_pixels)
    else:
        assert sampling.smart_resize(height, width, 28, min_pixels, max_pixels) == expected


OPTION_SETS = [{}, {"fps": 1.0}, {"fps": 4}, {"fps": 0.5}, {"nframes": 7}, {"nframes": 16}, {"nframes": 3},
               {"min_frames": 64}, {"max_frames": 1000}, {"max_frames": 9}, {"fps": 1, "min_frames": 5,
                                                                                 "max_frames": 33}]


@pytest.mark.parametrize("options", OPTION_SETS, ids=str)
def test_smart_nframes_matches_qwen(options):
    for total, video_fps in itertools.product(FRAME_COUNTS, SOURCE_FPS):
        expected = qwen_or_error(qwen.smart_nframes, options, total, video_fps)
        if expected is ValueError:
            with pytest.raises(OptionsError, match=f"clip has {total} frames"):
                sampling.smart_nframes(total, video_fps, **options)
        else:
            assert sampling.smart_nframes(total, video_fps, **options) == expected, (total, video_fps)


def test_smart_nframes_rejects_fps_with_nframes():
    with pytest.raises(OptionsError, match="either fps or nframes"):
        sampling.smart_nframes(100, 24, fps=1, nframes=8)


RANGES = [(None, None), (1.0, 3.5), (0.0, None), (None, 2.0), (2.5, 2.6), (-1, 100), (3.0, 1.0), (0.04, 0.09),
          (10, 20)]


@pytest.mark.parametrize("video_start, video_end", RANGES)
def test_frame_range_matches_qwen(video_start, video_end):
    ele = {key: value for key, value in (("video_start", video_start), ("video_end", video_end)) if value is not None}
    for total, video_fps in itertools.product(FRAME_COUNTS, SOURCE_FPS):
        expected = qwen_or_error(qwen.calculate_video_frame_range, ele, total, video_fps)
        if expected is ValueError:
            with pytest.raises(OptionsError, match="at least two frames"):
                sampling.frame_range(total, video_fps, video_start, video_end)
        else:
            assert sampling.frame_range(total, video_fps, video_start, video_end) == expected


def test_linspace_indices_are_float32_torch_not_float64():
    indices = sampling.linspace_indices(0, 50893, 600)
    assert indices[422] == 35854  # a float64 linspace rounds this one to 35855
    assert round(np.linspace(0, 50893, 600)[422]) == 35855
    for total, count in [(48, 4), (150, 10), (18000, 768), (50894, 600), (61, 4)]:
        first = total // 7
        expected = torch.linspace(first, total - 1, count).round().long().tolist()
        assert sampling.linspace_indices(first, total - 1, count) == expected


def test_sample_fps_is_qwen_formula():
    assert sampling.sample_fps(4, 61, 24) == pytest.approx(4 / 61 * 24)
    assert sampling.sample_fps(10, 150, 30000 / 1001) == 10 / max(150, 1e-6) * (30000 / 1001)


@pytest.mark.parametrize("nframes, expected", [(4, 602112), (300, 602112), (302, 598124.5), (384, 470400),
                                               (768, 235200), (2000, 105369)])
def test_video_max_pixels_budget(nframes, expected):
    policy = get_policy("qwen2_5_vl")
    budget = sampling.video_max_pixels(nframes, 28, policy.min_pixels, policy.total_pixels, 768, 2)
    assert budget == pytest.approx(expected)
    assert sampling.video_max_pixels(nframes, 28, policy.min_pixels, policy.total_pixels, 768, 2, 50000) == 50000


def test_qwen_policy_total_budget_is_qwen_default(monkeypatch):
    monkeypatch.delenv("VIDEO_MAX_PIXELS", raising=False)
    assert get_policy("qwen2_5_vl").total_pixels == qwen.MODEL_SEQ_LEN * 28 * 28 * 0.9


def test_smolvlm_indices_match_transformers():
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor
    from transformers.video_utils import VideoMetadata

    processor = SmolVLMVideoProcessor(video_sampling={"fps": 1, "max_frames": 64, "video_size": {"longest_edge": 512}})
    for total, video_fps in itertools.product(FRAME_COUNTS, SOURCE_FPS):
        duration = total / video_fps
        metadata = VideoMetadata(total_num_frames=total, fps=video_fps, duration=duration)
        expected = processor.sample_frames(metadata, num_frames=64, fps=1).tolist()
        assert sampling.smolvlm_indices(total, video_fps, duration) == expected, (total, video_fps)


def test_smolvlm_indices_documented_cases():
    assert sampling.smolvlm_indices(120, 24, 5.0) == [0, 29, 59, 89, 119]
    assert sampling.smolvlm_indices(1981, 30, 1981 / 30)[0] == 30
    assert sampling.smolvlm_indices(1, 24, 1 / 24) == [0]


def test_time_uniform_indices_pick_nearest_frames():
    times = [i / 30 for i in range(60)] + [2 + i / 10 for i in range(30)]  # 30 fps then 10 fps
    indices = sampling.time_uniform_indices(times, 0, 89, 8)
    targets = np.linspace(0, times[-1], 8)
    for index, target in zip(indices, targets):
        assert abs(times[index] - target) == min(abs(t - target) for t in times)


def test_deepseek_max_frames():
    assert deepseek_max_frames(0, 0) == 4096 // 431
    assert deepseek_max_frames(128, 512, tokens_per_frame=421, text_tokens_per_frame=10) == (4096 - 640) // 431
    assert deepseek_max_frames(4000, 512) == 0
    assert get_policy("deepseek_vl2").max_frames == deepseek_max_frames(128, 512)


def test_smolvlm2_tokens_per_frame():
    three_frames = SimpleNamespace(frames_indices=[0, 5, 9])
    assert SmolVLM2Adapter.visual_tokens(three_frames, "HuggingFaceTB/SmolVLM2-2.2B-Instruct") == 3 * 81
    assert SmolVLM2Adapter.visual_tokens(three_frames, "smolvlm2-256m") == 3 * 64
    assert get_policy("smolvlm2").tokens_per_frame == 64


def test_unknown_policy():
    with pytest.raises(OptionsError, match="unknown sampling policy 'llava'"):
        get_policy("llava")
