"""LoRA-area fixtures: for every family, a tiny checkpoint and a random LoRA for it, written by
`python -m vlm_app tiny --family F --out DIR --lora DIR` (once per session); a second adapter on the Qwen2.5-VL
checkpoint; a short clip; and `describe_json`, one `describe --json` record through the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

FAST = ["--device", "cpu", "--max-new-tokens", "10", "--nframes", "4"]


@dataclass(frozen=True)
class TinyLora:
    family: str
    checkpoint: Path
    lora: Path


def families() -> tuple[str, ...]:
    from vlm_app.adapters.registry import FAMILIES

    return FAMILIES


class TinyLoras(dict):
    """family -> TinyLora, each written on first use."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, family: str) -> TinyLora:
        from vlm_app.cli import main

        checkpoint, lora = self.root / family, self.root / f"{family}_lora"
        assert main(["tiny", "--family", family, "--out", str(checkpoint), "--lora", str(lora)]) == 0
        self[family] = TinyLora(family, checkpoint, lora)
        return self[family]


@pytest.fixture(scope="session")
def tiny_loras(tmp_path_factory) -> TinyLoras:
    return TinyLoras(tmp_path_factory.mktemp("tiny_loras"))


@pytest.fixture(scope="session")
def second_qwen_lora(tiny_loras, tmp_path_factory) -> Path:
    """Another random adapter (another seed) on the Qwen2.5-VL checkpoint of `tiny_loras`."""
    from vlm_app.testing.lora import build_tiny_lora

    return build_tiny_lora(tiny_loras["qwen2_5_vl"].checkpoint, tmp_path_factory.mktemp("loras") / "second", seed=1)


@pytest.fixture(scope="session")
def lora_clip(tmp_path_factory, make_clip) -> Path:
    return make_clip(tmp_path_factory.mktemp("lora_clips") / "clip.mp4", 2.0, 12, 160, 120)


@pytest.fixture
def describe_json(capsys):
    """describe_json(clip, model, *flags) -> the record `describe --json` prints (the CLI must succeed)."""
    from vlm_app.cli import main

    def describe(clip, model, *flags) -> dict:
        capsys.readouterr()  # what came before (a checkpoint written on first use) is not the record
        assert main(["describe", str(clip), "--model", str(model), "--json", *FAST, *map(str, flags)]) == 0, \
            capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    return describe


@pytest.fixture
def cli_error(capsys):
    """cli_error(*argv) -> the error line the CLI prints when it refuses (exit status 2, no traceback)."""
    from vlm_app.cli import main

    def refused(*argv) -> str:
        status = main([str(arg) for arg in argv])
        err = capsys.readouterr().err
        assert status == 2 and "Traceback" not in err, err
        return err

    return refused
