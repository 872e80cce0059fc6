"""LoRA adapters through the CLI on tiny checkpoints of every family: applied unmerged, the greedy answer is that of
the adapter merged by peft (`merge_and_unload`, `--merge`) and not the base's; the vision tower and projector count
when targeted; the record names the adapter; each wrong adapter gets its own message; `compare` runs a base and its
adapters on one loaded base, held once (peak memory measured)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lora_fixtures import FAST, families
from safetensors.torch import load_file, save_file

VISION_PARTS = ("visual", "vision", "projector", "connector", "merger", "embed_vision")
VISION_SCALE = 8


def _config(lora: Path) -> dict:
    return json.loads((lora / "adapter_config.json").read_text())


def _copy_lora(lora: Path, out: Path, config: dict | None = None, tensors: dict | None = None) -> Path:
    """A copy of the adapter folder `lora`, its config updated with `config`, its tensors replaced by `tensors`."""
    shutil.copytree(lora, out)
    if config is not None:
        (out / "adapter_config.json").write_text(json.dumps({**_config(lora), **config}))
    if tensors is not None:
        save_file(tensors, out / "adapter_model.safetensors")
    return out


def _module_of(key: str) -> str:
    """The module a peft tensor name belongs to: base_model.model.<module>.lora_A.weight -> <module>."""
    return re.sub(r"^base_model\.model\.|\.lora_[AB]\.weight$", "", key)


@pytest.mark.parametrize("family", families())
def test_adapter_answer_is_the_merged_answer_and_not_the_base(family, tiny_loras, lora_clip, describe_json):
    tiny = tiny_loras[family]
    base = describe_json(lora_clip, tiny.checkpoint)
    applied = describe_json(lora_clip, tiny.checkpoint, "--adapter", tiny.lora)
    merged = describe_json(lora_clip, tiny.checkpoint, "--adapter", tiny.lora, "--merge")
    assert applied["frames_indices"] == merged["frames_indices"] == base["frames_indices"]
    assert applied["answer"] == merged["answer"] != base["answer"]
    assert applied["timings"]["new_tokens"] == merged["timings"]["new_tokens"]
    info = applied["model_info"]["lora_adapter"]
    assert info == {**merged["model_info"]["lora_adapter"], "merged": False}
    assert info["source"] == info["name"] == str(tiny.lora) and info["path"] == str(tiny.lora.resolve())
    assert info["rank"] == _config(tiny.lora)["r"] and info["revision"] is None
    assert info["targets"] == sorted(_config(tiny.lora)["target_modules"]) and info["base"] == str(tiny.checkpoint)
    assert base["model_info"]["lora_adapter"] is None


@pytest.mark.parametrize("family", families())
def test_an_adapter_on_the_vision_side_alone_changes_the_answer(family, tiny_loras, lora_clip, describe_json,
                                                                tmp_path):
    """Only the vision tower's and the projector's layers (scaled up: what the vision side changes in a tiny model's
    prompt is small): the answer still changes, merged or not."""
    tiny = tiny_loras[family]
    tensors = load_file(tiny.lora / "adapter_model.safetensors")
    vision = {key: value * (VISION_SCALE if "lora_B" in key else 1) for key, value in tensors.items()
              if any(part in key for part in VISION_PARTS)}
    assert vision and len(vision) < len(tensors)
    targets = sorted({_module_of(key) for key in vision})
    lora = _copy_lora(tiny.lora, tmp_path / "vision_lora", {"target_modules": targets}, vision)
    base = describe_json(lora_clip, tiny.checkpoint)
    applied = describe_json(lora_clip, tiny.checkpoint, "--adapter", lora)
    assert applied["answer"] == describe_json(lora_clip, tiny.checkpoint, "--adapter", lora, "--merge")["answer"]
    assert applied["answer"] != base["answer"]


def test_tiny_lora_is_deterministic_and_refuses_a_folder_of_other_files(tiny_loras, tmp_path, cli_error):
    from vlm_app.cli import main

    tiny = tiny_loras["smolvlm2"]
    again = tmp_path / "again"
    assert main(["tiny", "--family", "smolvlm2", "--out", str(tmp_path / "ckpt"), "--lora", str(again)]) == 0
    assert (again / "adapter_model.safetensors").read_bytes() == (tiny.lora / "adapter_model.safetensors").read_bytes()
    assert all(tensor.abs().sum() > 0 for tensor in load_file(again / "adapter_model.safetensors").values())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    error = cli_error("tiny", "--family", "smolvlm2", "--out", tmp_path / "ckpt", "--lora", tmp_path / "busy")
    assert "--lora" in error and "holds other files" in error


def test_python_api_loads_an_adapter_merged_or_not(tiny_loras, lora_clip):
    from vlm_app import describe, load

    tiny = tiny_loras["smolvlm2"]
    records = [describe(lora_clip, model=load(str(tiny.checkpoint), device="cpu", lora_adapter=str(tiny.lora),
                                               merge=merge), generation={"max_new_tokens": 10}, nframes=4)
               for merge in (False, True)]
    assert records[0]["answer"] == records[1]["answer"]
    assert [record["model_info"]["lora_adapter"]["merged"] for record in records] == [False, True]


def test_an_adapter_by_hub_id_is_recorded_with_its_revision(tiny_loras, lora_clip, describe_json, tmp_path,
                                                              monkeypatch):
    from huggingface_hub import constants

    tiny, commit = tiny_loras["qwen2_5_vl"], "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-lora"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny.lora, repo / "snapshots" / commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    record = describe_json(lora_clip, tiny.checkpoint, "--adapter", "someone/tiny-lora")
    info = record["model_info"]["lora_adapter"]
    assert info["source"] == "someone/tiny-lora" and info["revision"] == commit
    assert record["answer"] == describe_json(lora_clip, tiny.checkpoint, "--adapter", tiny.lora)["answer"]


def test_resume_refuses_records_made_with_another_adapter(tiny_loras, second_qwen_lora, lora_clip, tmp_path,
                                                          cli_error):
    from vlm_app.cli import main

    tiny, folder, out = tiny_loras["qwen2_5_vl"], tmp_path / "videos", tmp_path / "out.jsonl"
    folder.mkdir()
    shutil.copy(lora_clip, folder / "a.mp4")
    run = ["describe", str(folder), "--model", str(tiny.checkpoint), "--out", str(out), *FAST]
    assert main([*run, "--adapter", str(tiny.lora)]) == 0
    assert main([*run, "--adapter", str(tiny.lora), "--resume"]) == 0  # the same adapter: nothing left to do
    assert len(out.read_text().splitlines()) == 1
    error = cli_error(*run, "--adapter", second_qwen_lora, "--resume")
    assert "other settings" in error and "model_info.lora_adapter" in error


# ---- every wrong adapter, its own message ----------------------------------------------------------------------
def _describe_error(cli_error, clip, model, lora) -> str:
    return cli_error("describe", clip, "--model", model, "--adapter", lora, *FAST)


def test_missing_folder_and_files(tiny_loras, lora_clip, cli_error, tmp_path):
    tiny = tiny_loras["qwen2_5_vl"]
    assert "is neither a folder nor a hub id" in _describe_error(cli_error, lora_clip, tiny.checkpoint,
                                                                 tmp_path / "no" / "such")
    no_config = _copy_lora(tiny.lora, tmp_path / "no_config")
    (no_config / "adapter_config.json").unlink()
    assert "has no adapter_config.json" in _describe_error(cli_error, lora_clip, tiny.checkpoint, no_config)
    no_weights = _copy_lora(tiny.lora, tmp_path / "no_weights")
    (no_weights / "adapter_model.safetensors").unlink()
    assert "has no weights" in _describe_error(cli_error, lora_clip, tiny.checkpoint, no_weights)


def test_adapter_named_for_another_base(tiny_loras, lora_clip, cli_error):
    error = _describe_error(cli_error, lora_clip, tiny_loras["smolvlm2"].checkpoint, tiny_loras["qwen2_5_vl"].lora)
    assert f"was made for {tiny_loras['qwen2_5_vl'].checkpoint}" in error and "base_model_name_or_path" in error


def test_adapter_whose_shapes_fit_another_base(tiny_loras, lora_clip, cli_error, tmp_path):
    """Named for this base, but its down-projections read 8 more features than this model's layers have."""
    tiny = tiny_loras["qwen2_5_vl"]
    tensors = load_file(tiny.lora / "adapter_model.safetensors")
    wider = {key: value.repeat(1, 2)[:, :value.shape[1] + 8].contiguous()
             if "lora_A" in key and "down_proj" in key else value for key, value in tensors.items()}
    error = _describe_error(cli_error, lora_clip, tiny.checkpoint, _copy_lora(tiny.lora, tmp_path / "wide",
                                                                              tensors=wider))
    assert "was made for another base" in error and "do not fit this model's modules" in error
    assert re.search(r"down_proj\.lora_A\.\S+: \[4, \d+\] in the adapter, \[4, \d+\] here", error)


def test_adapter_whose_tensors_match_no_module(tiny_loras, lora_clip, cli_error, tmp_path):
    tiny = tiny_loras["qwen2_5_vl"]
    tensors = load_file(tiny.lora / "adapter_model.safetensors")
    renamed = {key.replace("layers.0.", "layers.7."): value for key, value in tensors.items()}
    error = _describe_error(cli_error, lora_clip, tiny.checkpoint, _copy_lora(tiny.lora, tmp_path / "renamed",
                                                                              tensors=renamed))
    assert "match no module of this model" in error and "layers.7." in error


def test_target_modules_the_model_does_not_have(tiny_loras, lora_clip, cli_error, tmp_path):
    tiny = tiny_loras["deepseek_vl2"]
    targets = [*_config(tiny.lora)["target_modules"], "c_attn", "wqkv"]
    error = _describe_error(cli_error, lora_clip, tiny.checkpoint,
                            _copy_lora(tiny.lora, tmp_path / "gpt2ish", {"target_modules": targets}))
    assert "targets modules this model does not have: c_attn, wqkv" in error


def test_config_features_this_peft_does_not_have(tiny_loras, lora_clip, cli_error, tmp_path):
    import peft

    tiny = tiny_loras["smolvlm2"]
    future = _copy_lora(tiny.lora, tmp_path / "future", {"peft_version": "9.0.0", "hyper_lora": {"depth": 2},
                                                         "unused_flag": False})
    error = _describe_error(cli_error, lora_clip, tiny.checkpoint, future)
    assert f"uses hyper_lora, which peft {peft.__version__} does not have" in error and "peft 9.0.0" in error
    assert "pip install -U peft" in error
    unknown_kind = _copy_lora(tiny.lora, tmp_path / "kind", {"peft_type": "HYPERLORA"})
    assert "is a 'HYPERLORA' adapter, not a LoRA" in _describe_error(cli_error, lora_clip, tiny.checkpoint,
                                                                     unknown_kind)
    other_kind = _copy_lora(tiny.lora, tmp_path / "ia3", {"peft_type": "IA3"})
    assert "only LoRA adapters are supported" in _describe_error(cli_error, lora_clip, tiny.checkpoint, other_kind)


def test_merge_needs_one_adapter(tiny_loras, lora_clip, cli_error):
    error = cli_error("describe", lora_clip, "--model", tiny_loras["smolvlm2"].checkpoint, "--merge", *FAST)
    assert "--merge folds one --adapter into the model" in error


# ---- compare: the base and its adapters on one loaded base -----------------------------------------------------
def test_compare_base_and_two_adapters_on_the_same_frames(tiny_loras, second_qwen_lora, lora_clip, describe_json,
                                                          capsys):
    from vlm_app.cli import main

    tiny = tiny_loras["qwen2_5_vl"]
    assert main(["compare", str(lora_clip), "--models", f"{tiny.checkpoint},tuned,other", "--lora",
                 f"tuned={tiny.lora}", "--lora", f"other={second_qwen_lora}", "--json", *FAST]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["model"] for record in records] == [str(tiny.checkpoint), "tuned", "other"]
    assert records[0]["frames_indices"] == records[1]["frames_indices"] == records[2]["frames_indices"]
    assert [(record["model_info"]["lora_adapter"] or {}).get("name") for record in records] == [None, "tuned", "other"]
    assert records[1]["model_info"]["lora_adapter"]["source"] == str(tiny.lora)
    assert records[0]["answer"] == describe_json(lora_clip, tiny.checkpoint)["answer"]
    assert records[1]["answer"] == describe_json(lora_clip, tiny.checkpoint, "--adapter", tiny.lora)["answer"]
    assert records[2]["answer"] == describe_json(lora_clip, tiny.checkpoint, "--adapter", second_qwen_lora)["answer"]
    assert len({record["answer"] for record in records}) == 3


def test_compare_refuses_unlisted_adapters_and_adapters_of_another_base(tiny_loras, lora_clip, cli_error):
    qwen, smol = tiny_loras["qwen2_5_vl"], tiny_loras["smolvlm2"]
    error = cli_error("compare", lora_clip, "--models", f"{qwen.checkpoint},{smol.checkpoint}", "--lora",
                      f"tuned={qwen.lora}", *FAST)
    assert "--lora tuned: name each adapter in --models too" in error
    error = cli_error("compare", lora_clip, "--models", f"{smol.checkpoint},tuned", "--lora", f"tuned={qwen.lora}",
                      *FAST)
    assert f"was made for {qwen.checkpoint}" in error
    assert "give NAME=PATH" in cli_error("compare", lora_clip, "--models", f"{qwen.checkpoint},x", "--lora",
                                         str(qwen.lora), *FAST)


FAT_ROWS = 800_000  # embedding rows: ~390 MiB of weights, more than the process's own memory varies by


def _fat_checkpoint(tiny: Path, out: Path) -> Path:
    """The tiny checkpoint with FAT_ROWS embedding rows (the extra ones are never generated: their output rows are
    zero), so that a second copy of its weights would show in the process's peak memory."""
    import torch
    from transformers import AutoModelForImageTextToText

    shutil.copytree(tiny, out)
    model = AutoModelForImageTextToText.from_pretrained(tiny)
    rows = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(FAT_ROWS, mean_resizing=False)
    with torch.no_grad():
        model.get_output_embeddings().weight[rows:] = 0
    model.save_pretrained(out)
    return out


def _peak_rss(*argv) -> int:
    """The peak memory (RSS, bytes) of one CLI run in a fresh process."""
    script = ("import resource, sys\nfrom vlm_app.cli import main\nassert main(sys.argv[1:]) == 0\n"
              "print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    done = subprocess.run([sys.executable, "-c", script, *map(str, argv)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split("peak")[-1])


def test_compare_holds_the_base_once(tiny_loras, lora_clip, tmp_path):
    """Peak memory of comparing the base and two adapters <= 1.15 x (describing with the base alone + the adapters'
    files): the base's weights, most of the process's memory here, are held once."""
    from vlm_app.testing.lora import build_tiny_lora

    fat = _fat_checkpoint(tiny_loras["qwen2_5_vl"].checkpoint, tmp_path / "fat")
    loras = [build_tiny_lora(fat, tmp_path / f"lora{seed}", seed=seed) for seed in (0, 1)]
    adapters = sum((lora / "adapter_model.safetensors").stat().st_size for lora in loras)
    base = _peak_rss("describe", lora_clip, "--model", fat, *FAST)
    both = _peak_rss("compare", lora_clip, "--models", f"{fat},a,b", "--lora", f"a={loras[0]},b={loras[1]}", *FAST)
    weights = (fat / "model.safetensors").stat().st_size
    print(f"weights {weights / 2**20:.0f} MiB; describe with the base: peak {base / 2**20:.0f} MiB; compare of the "
          f"base and 2 adapters ({adapters / 2**20:.2f} MiB): peak {both / 2**20:.0f} MiB "
          f"({both / (base + adapters):.2f}x)")
    assert base + weights > 1.15 * (base + adapters)  # a second copy of the weights would break the bound
    assert both <= 1.15 * (base + adapters)
