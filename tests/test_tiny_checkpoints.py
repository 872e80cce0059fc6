"""Tiny checkpoints: deterministic bytes, real classes, every special token, offline reload, CLI entry point."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from vlm_app.cli import main


def digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("family", ["qwen2_5_vl", "smolvlm2"])
def test_cli_builds_byte_identical_checkpoints(family, tiny_checkpoints, tmp_path, capsys):
    assert main(["tiny", "--family", family, "--out", str(tmp_path / "again")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "again")
    same = digests(tmp_path / "again")
    assert same == digests(tiny_checkpoints[family])
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
            "processor_config.json", "generation_config.json"} <= set(same)
    main(["tiny", "--family", family, "--out", str(tmp_path / "seed1"), "--seed", "1"])
    other = digests(tmp_path / "seed1")
    assert other["model.safetensors"] != same["model.safetensors"]
    assert {k: v for k, v in other.items() if k != "model.safetensors"} == \
        {k: v for k, v in same.items() if k != "model.safetensors"}


def test_reload_offline_with_real_classes(tiny_checkpoints, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    qwen = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints["qwen2_5_vl"])
    smol = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints["smolvlm2"])
    assert type(qwen).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(smol).__name__ == "SmolVLMForConditionalGeneration"
    qwen_tokens = AutoProcessor.from_pretrained(tiny_checkpoints["qwen2_5_vl"]).tokenizer
    for token in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                  "<|video_pad|>", "<|endoftext|>"):
        assert len(qwen_tokens(token, add_special_tokens=False)["input_ids"]) == 1, token
    smol_processor = AutoProcessor.from_pretrained(tiny_checkpoints["smolvlm2"])
    for token in ("<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>", "<row_6_col_6>"):
        assert len(smol_processor.tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    text = "Frame from 00:03: café 東京 <image>"
    assert smol_processor.tokenizer.decode(smol_processor.tokenizer(text)["input_ids"]) == text


def test_unknown_family_is_a_user_error(tmp_path, capsys):
    assert main(["tiny", "--family", "llava", "--out", str(tmp_path / "llava")]) == 2
    assert "unknown family 'llava'; choose one of qwen2_5_vl, qwen3_vl, qwen3_vl_thinking, qwen3_5" in \
        capsys.readouterr().err


def test_the_out_folder_must_be_new_empty_or_a_checkpoint(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    assert main(["tiny", "--family", "smolvlm2", "--out", str(tmp_path / "notes.txt")]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
    assert main(["tiny", "--family", "smolvlm2", "--out", str(tmp_path)]) == 2
    assert "holds other files" in capsys.readouterr().err and (tmp_path / "notes.txt").read_text() == "mine"
    assert main(["tiny", "--family", "smolvlm2", "--out", str(tmp_path / "empty")]) == 0
    assert main(["tiny", "--family", "smolvlm2", "--out", str(tmp_path / "empty")]) == 0  # rewrites its own
    assert (tmp_path / "empty" / "config.json").is_file()
