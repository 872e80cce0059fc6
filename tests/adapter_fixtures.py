"""Adapter-area fixtures: tiny checkpoints of both families and small example clips, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def make_clip():
    """make_clip(path, seconds, fps, width, height) -> path of a libx264 clip (moving red square)."""
    from vlm_app.testing.videos import make_clip

    return make_clip


@pytest.fixture(scope="session")
def example_clip(tmp_path_factory, make_clip) -> Path:
    """4 s at 24 fps, 320x240 (96 frames)."""
    return make_clip(tmp_path_factory.mktemp("clips") / "example.mp4", 4.0, 24, 320, 240)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    from vlm_app.testing.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny(family, root / family) for family in ("qwen2_5_vl", "smolvlm2")}


@pytest.fixture(scope="session")
def qwen_adapter(tiny_checkpoints):
    from vlm_app import load

    return load(str(tiny_checkpoints["qwen2_5_vl"]), device="cpu")


@pytest.fixture(scope="session")
def smol_adapter(tiny_checkpoints):
    from vlm_app import load

    return load(str(tiny_checkpoints["smolvlm2"]), device="cpu")


@pytest.fixture(scope="session")
def qwen3_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny Qwen3-VL, Qwen3.5 (the hybrid text model) and a Qwen3-VL Thinking checkpoint."""
    from vlm_app.testing.tiny import build_tiny

    root = tmp_path_factory.mktemp("tiny_qwen3")
    return {name: build_tiny(name, root / name) for name in ("qwen3_vl", "qwen3_5", "qwen3_vl_thinking")}


@pytest.fixture(scope="session")
def qwen3_adapter(qwen3_checkpoints):
    from vlm_app import load

    return load(str(qwen3_checkpoints["qwen3_vl"]), device="cpu")


def video_messages(source, prompt: str = "Describe this video.", **options) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video", "video": source, **options},
                                         {"type": "text", "text": prompt}]}]


@pytest.fixture(scope="session")
def memory_clip(tmp_path_factory, make_clip) -> Path:
    """8 s at 12 fps, 320x240: 8 frames at SmolVLM2's 1 fps, room for the memory fit to lower."""
    return make_clip(tmp_path_factory.mktemp("memory_clips") / "memory.mp4", 8.0, 12, 320, 240)


def midway_limit(record: dict, fraction: float = 0.5) -> int:
    """A --max-memory halfway between what no fit lowers (the weights and the runtime's overhead) and the record's
    unconstrained estimate: its videos must be lowered to fit under it."""
    estimate = record["memory_estimate"]
    floor = estimate["weights"] + estimate["overhead"]
    return floor + int(fraction * (record["memory_estimate_bytes"] - floor))
