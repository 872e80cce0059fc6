"""DeepSeek-VL2 with the real hub processor_config.json and special_tokens_map.json of deepseek-vl2-tiny, and the
model card's prompts, which place images with literal `<image>` tags."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from real_files_fixtures import DEEPSEEK_TINY, REAL_FILES
from vlm_app import load
from vlm_app.cli import main

CARD_PROMPT = "<image>\n<|ref|>The red square.<|/ref|>."


@pytest.fixture(scope="module")
def real_deepseek(real_deepseek_dir):
    return load(str(real_deepseek_dir), device="cpu")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.new("RGB", (500, 300), (200, 30, 30)).save(path)
    return path


def test_the_real_processor_settings_and_special_tokens_are_loaded(real_deepseek):
    real = json.loads((REAL_FILES / DEEPSEEK_TINY / "processor_config.json").read_text())
    processor = real_deepseek.processor
    assert processor.mask_prompt is False and real["mask_prompt"] is False  # our own tiny checkpoints say True
    assert processor.candidate_resolutions == real["candidate_resolutions"]
    assert processor.pad_token == real["pad_token"] == "<｜▁pad▁｜>"
    tokenizer = real_deepseek.tokenizer
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>")
    assert {"<|User|>", "<|Assistant|>"} <= set(tokenizer.all_special_tokens)


def test_a_model_card_prompt_places_the_image_at_its_tag(real_deepseek, photo):
    messages = [{"role": "user", "content": [{"type": "image", "image": str(photo)},
                                             {"type": "text", "text": CARD_PROMPT}]}]
    prepared = real_deepseek.prepare(messages, max_new_tokens=4)
    assert prepared.prompt == f"<|User|>: {CARD_PROMPT}\n\n<|Assistant|>:"
    image_tokens = prepared.inputs["input_ids"] == real_deepseek.processor.image_token_id
    assert len(prepared.visual_map) == int(image_tokens.sum())
    plain = real_deepseek.prepare([{"role": "user", "content": [{"type": "image", "image": str(photo)},
                                                                {"type": "text", "text": "The red square."}]}],
                                  max_new_tokens=4)
    assert len(plain.visual_map) == len(prepared.visual_map)


def test_describe_with_a_model_card_prompt_from_the_cli(real_deepseek_dir, photo, capsys):
    assert main(["describe", str(photo), "--model", str(real_deepseek_dir), "--device", "cpu", "--prompt",
                 CARD_PROMPT, "--max-new-tokens", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["error"] is None


def test_more_tags_than_images_is_a_clear_error(real_deepseek_dir, photo, capsys):
    assert main(["describe", str(photo), "--model", str(real_deepseek_dir), "--device", "cpu", "--prompt",
                 "<image><image>Compare.", "--max-new-tokens", "3"]) == 2
    err = capsys.readouterr().err
    assert "2 literal <image> tag(s) but the message has 1 image(s)" in err and "Traceback" not in err


def test_tiny_from_files_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "checkpoint"
    assert main(["tiny", "--family", "deepseek_vl2", "--from-files", str(REAL_FILES / DEEPSEEK_TINY),
                 "--out", str(out)]) == 0
    assert (out / "processor_config.json").read_bytes() == \
        (REAL_FILES / DEEPSEEK_TINY / "processor_config.json").read_bytes()
    assert main(["tiny", "--family", "deepseek_vl2", "--from-files", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "other")]) == 2
    assert "is not a folder" in capsys.readouterr().err
