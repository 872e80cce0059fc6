"""GPU-safe loading defaults, decided from the facts torch reports (monkeypatched here: CI has no GPU), memory sized
from the files before loading, offline-safe LoRA hub ids, and clear errors for broken checkpoints."""

from __future__ import annotations

import json
import shutil
import sys
import types

import pytest
import torch

from vlm_app import hub, runtime
from vlm_app.cli import main
from vlm_app.errors import ModelLoadError, OptionsError


@pytest.fixture
def gpu(monkeypatch):
    """A pretend CUDA GPU whose `.capability` and `.bf16` the test sets; flash-attn imports (an empty module)."""
    facts = types.SimpleNamespace(capability=(8, 0), bf16=True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: facts.bf16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args, **kwargs: facts.capability)
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    return facts


def test_bf16_only_where_the_gpu_supports_it(gpu):
    assert runtime.pick_dtype("auto", "cuda") == torch.bfloat16
    gpu.bf16 = False  # T4, V100
    assert runtime.pick_dtype("auto", "cuda") == torch.float16
    assert runtime.pick_dtype("auto", "cpu") == torch.float32


def test_flash_attention_only_where_it_can_run(gpu, monkeypatch):
    assert runtime.pick_attention("auto", "cuda", torch.bfloat16) == ("flash_attention_2", [])
    implementation, notes = runtime.pick_attention("auto", "cuda", torch.float32)
    assert implementation == "sdpa" and "needs fp16 or bf16 (dtype is float32)" in notes[0]
    gpu.capability = (7, 5)
    implementation, notes = runtime.pick_attention("auto", "cuda", torch.float16)
    assert implementation == "sdpa" and "compute capability 8.0 or newer (this GPU has 7.5)" in notes[0]
    gpu.capability = (9, 0)
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # what a failing import looks like
    implementation, notes = runtime.pick_attention("auto", "cuda", torch.bfloat16)
    assert implementation == "sdpa" and "flash-attention-2 is not importable" in notes[0]
    with pytest.raises(OptionsError, match="--attn flash_attention_2 cannot be used: flash-attention-2 is not"):
        runtime.pick_attention("flash_attention_2", "cuda", torch.bfloat16)
    assert runtime.pick_attention("eager", "cuda", torch.bfloat16) == ("eager", [])


def test_the_attention_note_reaches_the_record(qwen_adapter, example_clip):
    from vlm_app import describe

    record = describe(str(example_clip), model=qwen_adapter, generation={"max_new_tokens": 1}, fps=1)
    assert record["model_info"]["attn_implementation"] == "sdpa"
    assert record["model_info"]["notes"] == ["attention: sdpa, as flash-attention-2 needs a CUDA GPU (device is cpu)"]


def test_4bit_compute_dtype_follows_the_chosen_dtype(monkeypatch):
    real_find_spec = runtime.importlib.util.find_spec
    monkeypatch.setattr(runtime.importlib.util, "find_spec",
                        lambda name, *args: object() if name == "bitsandbytes" else real_find_spec(name, *args))
    assert runtime._quantization_config("4bit", "cuda", torch.float16).bnb_4bit_compute_dtype == torch.float16
    assert runtime._quantization_config("4bit", "cuda", torch.bfloat16).bnb_4bit_compute_dtype == torch.bfloat16


def test_loaded_size_is_read_from_the_files_and_rescaled_to_the_dtype(real_qwen_dir):
    from vlm_app import load

    stored = json.loads((real_qwen_dir / "config.json").read_text())
    assert (stored.get("dtype") or stored.get("torch_dtype")) == "bfloat16"
    adapter = load(str(real_qwen_dir), device="cpu", dtype="fp32")
    estimate = runtime.loaded_bytes_estimate(str(real_qwen_dir), torch.float32)
    assert estimate == pytest.approx(runtime.model_bytes(adapter), rel=0.02)
    assert runtime.loaded_bytes_estimate(str(real_qwen_dir), torch.bfloat16) == pytest.approx(estimate / 2, rel=0.01)


def test_the_cache_evicts_before_loading_a_hub_model(tiny_checkpoints, monkeypatch):
    """A hub model is sized from its (cached) files, so the old model is gone before the new one loads."""
    qwen, smol = tiny_checkpoints["qwen2_5_vl"], tiny_checkpoints["smolvlm2"]
    real_locate, real_load = runtime.locate, runtime.load_adapter
    monkeypatch.setattr(runtime, "locate", lambda ref, revision=None: (str(smol), "commit")
                        if ref.repo_id == "HuggingFaceTB/SmolVLM2-256M-Video-Instruct" else real_locate(ref, revision))
    cache = runtime.ModelCache(budget_bytes=10**12)
    first = cache.get(str(qwen), device="cpu")
    cache.budget_bytes = runtime.model_bytes(first) + runtime.loaded_bytes_estimate(str(smol), torch.float32) - 1
    loaded_when_loading = []

    def load(name, **options):
        loaded_when_loading.append([row["name"] for row in cache.loaded()])
        return real_load(str(smol) if name == "smolvlm2-256m" else name, **options)

    monkeypatch.setattr(runtime, "load_adapter", load)
    cache.get("smolvlm2-256m", device="cpu")
    assert loaded_when_loading == [[]]  # evicted first, then loaded
    assert [row["name"] for row in cache.loaded()] == ["smolvlm2-256m"]


def _hub_cache_with(tmp_path, repo_id: str, files: dict[str, str]):
    """An HF hub cache folder holding one snapshot of `repo_id`."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)
    return tmp_path / "hub", snapshot


def test_a_lora_adapter_may_be_a_hub_id_found_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache, snapshot = _hub_cache_with(tmp_path, "someone/qwen-lora", {"adapter_config.json": "{}"})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.locate_lora("someone/qwen-lora") == (str(snapshot), snapshot.name)  # the folder and its commit
    with pytest.raises(ModelLoadError, match="someone/missing-lora .* HF_HUB_OFFLINE is set"):
        hub.locate_lora("someone/missing-lora")
    with pytest.raises(ModelLoadError, match="neither a folder nor a hub id"):
        hub.locate_lora("./no/such/lora")


@pytest.fixture
def broken_copy(tiny_checkpoints, tmp_path):
    def copy():
        target = tmp_path / "checkpoint"
        shutil.copytree(tiny_checkpoints["qwen2_5_vl"], target)
        return target
    return copy


def test_a_config_transformers_rejects_is_a_clear_cli_error(broken_copy, example_clip, capsys):
    checkpoint = broken_copy()
    config = json.loads((checkpoint / "config.json").read_text())
    config["text_config"]["layer_types"] = ["full_attention"] * 3  # num_hidden_layers is 2
    (checkpoint / "config.json").write_text(json.dumps(config))
    assert main(["describe", str(example_clip), "--model", str(checkpoint), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "`num_hidden_layers` (2) must be equal to the number of `layer_types` (3)" in err
    assert str(checkpoint) in err and "Traceback" not in err


def test_missing_weight_shards_are_named_before_loading(broken_copy, example_clip, capsys):
    checkpoint = broken_copy()
    index = {"metadata": {}, "weight_map": {"a.weight": "model-00001-of-00003.safetensors",
                                            "b.weight": "model-00002-of-00003.safetensors",
                                            "c.weight": "model-00003-of-00003.safetensors"}}
    (checkpoint / "model.safetensors").rename(checkpoint / "model-00001-of-00003.safetensors")
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    assert main(["describe", str(example_clip), "--model", str(checkpoint), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "missing 2 of the 3 weight shards" in err
    assert "model-00002-of-00003.safetensors, model-00003-of-00003.safetensors" in err and "Traceback" not in err
