"""Checkpoints built from the real hub text files in tests/fixtures/real_checkpoint_files (see its SOURCES.md):
real tokenizer, chat template and processor settings, shrunk configs, random weights. Built once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REAL_FILES = Path(__file__).resolve().parent / "fixtures" / "real_checkpoint_files"
SMOLVLM2_REPOS = {"256m": "HuggingFaceTB__SmolVLM2-256M-Video-Instruct",
                  "500m": "HuggingFaceTB__SmolVLM2-500M-Video-Instruct",
                  "2.2b": "HuggingFaceTB__SmolVLM2-2.2B-Instruct"}
QWEN_7B = "Qwen__Qwen2.5-VL-7B-Instruct"
QWEN_3B = "Qwen__Qwen2.5-VL-3B-Instruct"
DEEPSEEK_TINY = "deepseek-ai__deepseek-vl2-tiny"


def repository_files(repo: str, into: Path) -> Path:
    """A repository's verified files, with the `_derived` ones (SOURCES.md) only where a verified one is missing."""
    into.mkdir(parents=True, exist_ok=True)
    for folder in (REAL_FILES / "_derived" / repo, REAL_FILES / repo):
        for file in folder.glob("*") if folder.is_dir() else []:
            shutil.copy(file, into / file.name)
    return into


@pytest.fixture(scope="session")
def real_qwen_dir(tmp_path_factory) -> Path:
    from vlm_app.testing.real_files import build_from_files

    return build_from_files("qwen2_5_vl", REAL_FILES / QWEN_7B, tmp_path_factory.mktemp("real_qwen") / "checkpoint")


@pytest.fixture(scope="session")
def real_smolvlm2_dirs(tmp_path_factory) -> dict[str, Path]:
    from vlm_app.testing.real_files import build_from_files

    root = tmp_path_factory.mktemp("real_smolvlm2")
    return {size: build_from_files("smolvlm2", repository_files(repo, root / f"{size}-files"), root / size)
            for size, repo in SMOLVLM2_REPOS.items()}


@pytest.fixture(scope="session")
def real_deepseek_dir(tmp_path_factory) -> Path:
    from vlm_app.testing.real_files import build_from_files

    return build_from_files("deepseek_vl2", REAL_FILES / DEEPSEEK_TINY,
                            tmp_path_factory.mktemp("real_deepseek") / "checkpoint")
