"""The default ("exact") resize is the float32 bicubic-antialias reference (torchvision's tensor resize, which
qwen-vl-utils uses) within one grey level on every value and equal on at least 99.9 % of them, over many sizes and
aspect ratios, shrinking and enlarging; `--resize fast` stays torch's uint8 kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlm_app.media import load_video
from vlm_app.media.video import resize_frame

SIZES = [  # (input height, width) -> (output height, width)
    ((720, 1280), (560, 1008)), ((720, 1280), (336, 588)), ((1080, 1920), (448, 812)), ((1080, 1920), (1092, 1932)),
    ((240, 320), (476, 644)), ((480, 640), (224, 308)), ((360, 640), (364, 644)), ((720, 1280), (720, 644)),
    ((720, 1280), (392, 1280)), ((1280, 720), (1008, 560)), ((1920, 1080), (252, 140)), ((37, 100), (333, 11)),
    ((31, 517), (8, 900)), ((50, 50), (51, 49)), ((2, 300), (28, 28)), ((300, 3), (56, 28)), ((97, 211), (1, 1)),
    ((64, 64), (640, 640)), ((1000, 20), (28, 784)), ((405, 719), (403, 721)), ((1, 1), (5, 7)),
]


def reference(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The float path the exact resize stands for (what `resize_frame` computed before it was compiled)."""
    resized = F.interpolate(image[None].float(), size=size, mode="bicubic", align_corners=False, antialias=True)
    return resized[0].clamp_(0, 255).round_().to(torch.uint8)


def camera_like(height: int, width: int, seed: int) -> torch.Tensor:
    """uint8 (3, H, W) laid out as a decoded frame (H, W, 3): gradients, hard-edged blocks and noise, so that many
    sums land near a half and hard edges overshoot past 0 and 255 (the clamp)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    gradient = (x * 255 // max(width - 1, 1) + y * 97 // max(height - 1, 1))[..., None] % 256
    blocks = rng.integers(0, 2, (height // 7 + 1, width // 7 + 1, 3)).repeat(7, 0).repeat(7, 1)[:height, :width] * 255
    noise = rng.normal(0, 12, (height, width, 3))
    pixels = np.where(rng.random((height, width, 1)) < 0.5, gradient, blocks) + noise
    return torch.from_numpy(np.clip(pixels, 0, 255).astype(np.uint8)).permute(2, 0, 1)


def test_exact_resize_matches_the_float_reference_over_a_sweep():
    equal = total = 0
    for seed, (source, size) in enumerate(SIZES):
        image = camera_like(*source, seed)
        ours, expected = resize_frame(image, size), reference(image, size)
        assert ours.dtype == torch.uint8 and ours.shape == expected.shape == (3, *size)
        difference = (ours.int() - expected.int()).abs()
        assert difference.max() <= 1, f"{source} -> {size}: {difference.max()} levels off"
        equal += int((difference == 0).sum())
        total += difference.numel()
    assert equal / total >= 0.999, f"only {equal / total:.5%} of the values are equal"


def test_a_rotated_frame_is_resized_as_its_contiguous_copy():
    """Decoded frames with rotation arrive as transposed views; the kernel reads any layout."""
    image = camera_like(200, 120, 7)
    turned = image.transpose(1, 2)  # (3, 120, 200), not contiguous
    assert torch.equal(resize_frame(turned, (84, 140)), resize_frame(turned.contiguous(), (84, 140)))
    assert (resize_frame(turned, (84, 140)).int() - reference(turned, (84, 140)).int()).abs().max() <= 1


@pytest.mark.parametrize("resize", ["exact", "fast"])
def test_load_video_resizes_with_the_kernel_asked(resize):
    """Through the public entry point: a list of frames is resized once to the video size; "exact" (the default)
    is the float reference within a level, "fast" is torch's uint8 kernel itself."""
    images = [camera_like(270, 480, seed) for seed in (1, 2)]
    frames = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
    options = {} if resize == "exact" else {"resize": "fast"}
    video = load_video(frames, "qwen2_5_vl", fps=2, **options)
    size = (video.resized_height, video.resized_width)
    assert size != (270, 480)
    for shown, image in zip(video.frames, images):
        if resize == "exact":
            assert (shown.int() - reference(image, size).int()).abs().max() <= 1
        else:
            fast = F.interpolate(image[None], size=size, mode="bicubic", align_corners=False, antialias=True)[0]
            assert torch.equal(shown, fast)
