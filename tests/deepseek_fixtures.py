"""Shared helpers for the DeepSeek-VL2 tests: the official-code reference fixtures in tests/fixtures/deepseek_vl2
(see its README, first section, for how the repository copy differs from the original set)."""

from __future__ import annotations

import json
import shutil
import tempfile
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from media_fixtures import VideoSpec, write_video

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "deepseek_vl2"
VARIANTS = ("tiny_mha", "small_mla", "base_noaux")
CASES = ("text_only", "one_image_1tile", "two_images", "three_images_no_crop", "nine_tiles", "batch_left_padded")
_CHECKPOINTS = tempfile.TemporaryDirectory(prefix="deepseek_vl2_reference_")  # removed when the run ends


@lru_cache(maxsize=1)
def reference() -> dict:
    return json.loads((FIXTURES / "reference.json").read_text())


@lru_cache(maxsize=None)
def checkpoint(variant: str) -> Path:
    """The official-format checkpoint of `variant`: its stored text files plus model.safetensors redrawn from the
    recorded seed, tensor order and shapes (byte-for-byte the tensors the official outputs were made with)."""
    out = Path(_CHECKPOINTS.name) / variant
    shutil.copytree(FIXTURES / variant / "checkpoint", out, ignore=shutil.ignore_patterns("weights.json"))
    recipe = json.loads((FIXTURES / variant / "checkpoint" / "weights.json").read_text())
    generator = torch.Generator().manual_seed(recipe["seed"])
    tensors = {}
    for name, shape in recipe["tensors"]:
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        if "norm" in name and name.endswith("weight"):
            tensors[name] = 1 + 0.05 * noise
        elif "e_score_correction_bias" in name:
            tensors[name] = 0.1 * noise
        else:
            tensors[name] = 0.05 * noise
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


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
def deepseek_adapter(tiny_deepseek_dirs):
    from vlm_app import load

    return load(str(tiny_deepseek_dirs["tiny"]), device="cpu")


@pytest.fixture(scope="session")
def deepseek_long_video(tmp_path_factory) -> Path:
    """60 s at 4 fps, 64x48: long enough that the context budget, not the 1 fps policy, decides the frames."""
    spec = VideoSpec("deepseek_60s", fps=Fraction(4), num_frames=240, width=64, height=48)
    return write_video(tmp_path_factory.mktemp("deepseek_video") / spec.filename, spec)
