"""Shared helpers for the DeepSeek-VL2 tests: the official-code reference fixtures (see their README)."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import pytest
from PIL import Image

from media_fixtures import VideoSpec, write_video

FIXTURES = Path(os.environ.get("DEEPSEEK_VL2_FIXTURES",
                               Path(__file__).resolve().parents[2] / "shared/reference/deepseek_vl2_fixtures"))
VARIANTS = ("tiny_mha", "small_mla", "base_noaux")
CASES = ("text_only", "one_image_1tile", "two_images", "three_images_no_crop", "nine_tiles", "batch_left_padded")

needs_fixtures = pytest.mark.skipif(not (FIXTURES / "reference.json").exists(),
                                    reason=f"DeepSeek-VL2 reference fixtures not found at {FIXTURES}")


@lru_cache(maxsize=1)
def reference() -> dict:
    return json.loads((FIXTURES / "reference.json").read_text())


def checkpoint(variant: str) -> Path:
    return FIXTURES / variant / "checkpoint"


def load_image(name: str) -> Image.Image:
    return Image.open(FIXTURES / "images" / name).convert("RGB")


def row_calls(case: str) -> list[dict]:
    """The processor keyword arguments of each row of a case, with the images opened."""
    calls = []
    for row in reference()["cases"][case]["rows"]:
        call = dict(row["call"])
        for message in call.get("conversations", []):
            message.pop("images", None)
        call["images"] = [load_image(name) for name in row["images"]]
        call.setdefault("system_prompt", "")
        calls.append(call)
    return calls


def run_processor(processor, case: str):
    """The batched processor output of a case, made the way the reference made it."""
    calls = row_calls(case)
    if len(calls) == 1:
        return processor(**calls[0], force_batchify=True)
    return processor.batchify([processor(**call, force_batchify=False) for call in calls])


@pytest.fixture(scope="session")
def tiny_deepseek_dirs(tmp_path_factory) -> dict:
    """variant -> folder of a tiny DeepSeek-VL2 checkpoint built by our builder (official layout)."""
    from vlm_app.testing.tiny_deepseek_vl2 import build_tiny_deepseek_vl2

    root = tmp_path_factory.mktemp("tiny_deepseek_vl2")
    return {variant: build_tiny_deepseek_vl2(root / variant, variant=variant) for variant in ("tiny", "small", "base")}


@pytest.fixture(scope="session")
def deepseek_long_video(tmp_path_factory) -> Path:
    """60 s at 4 fps, 64x48: long enough that the context budget, not the 1 fps policy, decides the frames."""
    spec = VideoSpec("deepseek_60s", fps=Fraction(4), num_frames=240, width=64, height=48)
    return write_video(tmp_path_factory.mktemp("deepseek_video") / spec.filename, spec)
