"""The real-size configurations of `bench model`: counted on the meta device (nothing allocated) against the
parameter totals the model cards publish, so a wrong transcribed number shows up here, not on a GPU."""

from __future__ import annotations

import json

import pytest
from transformers import DeepseekOcr2TextConfig, DeepseekV2Config, DeepseekV3Config

from vlm_app.bench.model import _count_parameters, published_sizes, real_model
from vlm_app.cli import main

PUBLISHED = {  # model-card totals
    ("qwen2_5_vl", "3b"): 3.75e9, ("qwen2_5_vl", "7b"): 8.29e9, ("qwen2_5_vl", "32b"): 33.5e9,
    ("qwen2_5_vl", "72b"): 73.4e9,
    ("smolvlm2", "256m"): 0.256e9, ("smolvlm2", "500m"): 0.507e9, ("smolvlm2", "2.2b"): 2.25e9,
    ("qwen3_vl", "2b"): 2.13e9,
    ("gemma4", "e2b"): 5.1e9,  # "2.3B effective, 5.1B with embeddings" (the per-layer embeddings are 2.3B of it)
    ("deepseek_vl2", "tiny"): 3.37e9, ("deepseek_vl2", "small"): 16.1e9, ("deepseek_vl2", "base"): 27.5e9,
}


def test_every_size_has_a_published_total():
    assert {(family, size) for family, sizes in published_sizes().items() for size in sizes} == set(PUBLISHED)


@pytest.mark.parametrize("family, size", sorted(PUBLISHED))
def test_parameter_count_matches_the_model_card(family, size):
    model_class, config, _, _ = real_model(family, size)
    assert _count_parameters(model_class, config) == pytest.approx(PUBLISHED[family, size], rel=0.01)


@pytest.mark.parametrize("size, language_class, experts", [("tiny", DeepseekOcr2TextConfig, 64),
                                                           ("small", DeepseekV2Config, 64),
                                                           ("base", DeepseekV3Config, 72)])
def test_deepseek_sizes_take_their_language_model_code_path(size, language_class, experts):
    _, config, processor, _ = real_model("deepseek_vl2", size)
    assert type(config.text_config) is language_class and config.text_config.n_routed_experts == experts
    assert config.language_config["max_position_embeddings"] == 4096
    assert config.projector_config["n_embed"] == config.language_config["hidden_size"]
    assert config.language_config["eos_token_id"] == processor.tokenizer.eos_token_id


def test_too_big_for_this_machine_is_refused_before_allocating(capsys):
    # 27.5B parameters in fp32 are ~100 GiB: more than this (or any CI) machine has free
    assert main(["bench", "model", "--family", "deepseek_vl2", "--size", "base", "--random-weights",
                 "--device", "cpu", "--dtype", "fp32"]) == 2
    assert "deepseek_vl2-base needs about 102.4 GiB for weights" in capsys.readouterr().err


QWEN_TEXT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "vocab_size", "max_position_embeddings", "rms_norm_eps", "hidden_act")
QWEN_VISION_FIELDS = ("depth", "hidden_size", "intermediate_size", "num_heads", "patch_size", "spatial_merge_size",
                      "temporal_patch_size", "window_size", "fullatt_block_indexes", "tokens_per_second",
                      "out_hidden_size", "hidden_act")


@pytest.mark.parametrize("size, repo", [("3b", "Qwen__Qwen2.5-VL-3B-Instruct"), ("7b", "Qwen__Qwen2.5-VL-7B-Instruct")])
def test_qwen_sizes_equal_the_real_config_files(size, repo):
    from transformers import AutoConfig

    from real_files_fixtures import REAL_FILES

    real = AutoConfig.from_pretrained(REAL_FILES / repo)
    _, ours, _, _ = real_model("qwen2_5_vl", size)
    for field in QWEN_TEXT_FIELDS:
        assert getattr(ours.text_config, field) == getattr(real.text_config, field), field
    for field in QWEN_VISION_FIELDS:
        assert getattr(ours.vision_config, field) == getattr(real.vision_config, field), field
    for field in ("rope_theta", "mrope_section"):
        assert ours.text_config.rope_parameters[field] == real.text_config.rope_parameters[field], field
    assert ours.tie_word_embeddings == real.tie_word_embeddings


@pytest.mark.parametrize("size", ["256m", "500m", "2.2b"])
def test_smolvlm2_sizes_equal_the_real_processor_files(size, tmp_path):
    from real_files_fixtures import SMOLVLM2_REPOS, repository_files

    files = repository_files(SMOLVLM2_REPOS[size], tmp_path)
    preprocessor = json.loads((files / "preprocessor_config.json").read_text())
    _, ours, processor, _ = real_model("smolvlm2", size)
    assert ours.vision_config.image_size == preprocessor["max_image_size"]["longest_edge"] == \
        preprocessor["video_sampling"]["video_size"]["longest_edge"]
    assert processor.image_seq_len == json.loads((files / "processor_config.json").read_text())["image_seq_len"]
