"""Runtime: offline failures are fast and clear, device/dtype choice, the loaded-model cache."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from vlm_app.adapters.registry import family_of
from vlm_app.errors import ModelLoadError
from vlm_app.runtime import ModelCache, pick_attention, pick_device, pick_dtype


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the socket is closed


def test_uncached_hub_id_fails_fast_without_network(tmp_path):
    """Network unreachable (endpoint on a closed port), empty HF cache, HF_HUB_OFFLINE unset."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")
    script = textwrap.dedent("""
        import json, time
        from vlm_app import load
        from vlm_app.errors import ModelLoadError
        started = time.perf_counter()
        try:
            load("Qwen/Qwen2.5-VL-3B-Instruct", device="cpu")
        except ModelLoadError as error:
            print(json.dumps({"seconds": time.perf_counter() - started, "message": str(error)}))
    """)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["seconds"] < 10
    assert "Qwen/Qwen2.5-VL-3B-Instruct" in result["message"]
    assert "--model /path/to/checkpoint" in result["message"] and "HF_HOME" in result["message"]


def test_cli_reports_missing_folder_and_unknown_names(example_clip, capsys):
    from vlm_app.cli import main

    assert main(["describe", str(example_clip), "--model", "/no/such/checkpoint"]) == 2
    assert "model folder /no/such/checkpoint does not exist" in capsys.readouterr().err
    with pytest.raises(ModelLoadError, match="cannot tell the model family"):
        family_of("someone/some-unrelated-model")
    with pytest.raises(ModelLoadError, match="unknown model"):
        family_of("gpt-17")


def test_family_detection(tiny_checkpoints):
    assert family_of("smolvlm2-256m") == "smolvlm2"
    assert family_of("qwen2.5-vl-72b") == "qwen2_5_vl"
    assert family_of("deepseek-vl2-small") == "deepseek_vl2"
    assert family_of("deepseek-ai/deepseek-vl2-tiny") == "deepseek_vl2"
    assert family_of(str(tiny_checkpoints["qwen2_5_vl"])) == "qwen2_5_vl"
    assert family_of(str(tiny_checkpoints["smolvlm2"])) == "smolvlm2"


def test_auto_choices_on_this_machine():
    device = pick_device("auto")
    assert device == ("cuda" if torch.cuda.is_available() else device)
    assert pick_dtype("auto", "cpu") == torch.float32
    assert pick_attention("auto", "cpu") == ("sdpa", ["attention: sdpa, as flash-attention-2 needs a CUDA GPU "
                                                      "(device is cpu)"])


def test_cache_reuses_unloads_and_keeps_to_budget(tiny_checkpoints):
    qwen, smol = str(tiny_checkpoints["qwen2_5_vl"]), str(tiny_checkpoints["smolvlm2"])
    cache = ModelCache(budget_bytes=10**9)
    first = cache.get(qwen, device="cpu")
    assert cache.get(qwen, device="cpu") is first
    cache.get(smol, device="cpu")
    assert [row["family"] for row in cache.loaded()] == ["qwen2_5_vl", "smolvlm2"]
    assert all(row["bytes"] > 0 for row in cache.loaded())
    assert cache.unload(qwen) == 1 and [row["name"] for row in cache.loaded()] == [smol]
    cache.get(qwen, device="cpu")
    sizes = [row["bytes"] for row in cache.loaded()]
    cache.budget_bytes = sum(sizes) - 1  # the two no longer fit together
    cache.get(qwen, device="cpu", dtype="fp32")  # a third entry: both older ones must make room
    assert [(row["name"], row["options"]["dtype"]) for row in cache.loaded()] == [(qwen, "fp32")]
    assert cache.used_bytes <= cache.budget_bytes
    assert cache.unload() == 1 and cache.loaded() == []
