"""The tiny DeepSeek-VL2 builder: official layout, deterministic, loads and runs through the public path."""

import hashlib

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from deepseek_fixtures import checkpoint
from vlm_app.models.deepseek_vl2 import DeepseekVLV2Processor
from vlm_app.testing.tiny_deepseek_vl2 import build_tiny_deepseek_vl2

OFFICIAL = {"tiny": "tiny_mha", "small": "small_mla", "base": "base_noaux"}


@pytest.mark.parametrize("variant", ["tiny", "small", "base"])
def test_same_key_layout_as_the_official_checkpoints(tiny_deepseek_dirs, variant):
    ours = safe_open(tiny_deepseek_dirs[variant] / "model.safetensors", "pt").keys()
    official_file = checkpoint(OFFICIAL[variant]) / "model.safetensors"
    assert set(ours) == set(safe_open(official_file, "pt").keys())  # same depths, so the same names


@pytest.mark.parametrize("variant", ["tiny", "small", "base"])
def test_loads_and_generates(tiny_deepseek_dirs, variant):
    path = tiny_deepseek_dirs[variant]
    config = AutoConfig.from_pretrained(path)
    expected_lm = {"tiny": "deepseek_ocr2_text", "small": "deepseek_v2", "base": "deepseek_v3"}[variant]
    assert config.text_config.model_type == expected_lm
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    processor = DeepseekVLV2Processor.from_pretrained(path)
    assert [processor.tokenizer.convert_tokens_to_ids(t) for t in ("<image>", "<|User|>")] == [3, 9]
    image = Image.new("RGB", (500, 300), (200, 30, 30))
    batch = processor(conversations=[{"role": "<|User|>", "content": "<image>\nWhat is this?"},
                                     {"role": "<|Assistant|>", "content": ""}], images=[image])
    out = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, images=batch.images,
                         images_seq_mask=batch.images_seq_mask, images_spatial_crop=batch.images_spatial_crop,
                         max_new_tokens=4, do_sample=False)
    assert out.shape == (1, batch.input_ids.shape[1] + 4)


def test_deterministic(tiny_deepseek_dirs, tmp_path):
    again = build_tiny_deepseek_vl2(tmp_path / "again", variant="base")
    for name in ("model.safetensors", "config.json", "tokenizer.json", "processor_config.json"):
        assert hashlib.sha256((again / name).read_bytes()).digest() == \
            hashlib.sha256((tiny_deepseek_dirs["base"] / name).read_bytes()).digest(), name
    other_seed = build_tiny_deepseek_vl2(tmp_path / "seed1", variant="base", seed=1)
    assert (other_seed / "model.safetensors").read_bytes() != (again / "model.safetensors").read_bytes()


def test_unknown_variant(tmp_path):
    with pytest.raises(ValueError, match="unknown DeepSeek-VL2 tiny variant"):
        build_tiny_deepseek_vl2(tmp_path, variant="huge")
