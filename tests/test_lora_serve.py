"""LoRA adapters as models of their own: `serve --models BASE --lora NAME=PATH ...` over HTTP (the official openai
client, loopback only) and the web app's Compare tab (its handlers in-process). Every answer equals the CLI's with
the same adapter; requests for the base and its adapters interleave on one loaded base."""

from __future__ import annotations

import json
import os
import sys
import threading

import pytest
from ui_fixtures import _free_port, running_server

# what the CLI's answers use (lora_fixtures.FAST): 4 frames, 10 tokens, greedy
GENERATION = {"max_tokens": 10, "temperature": 0, "extra_body": {"media_io_kwargs": {"video": {"num_frames": 4}}}}


@pytest.fixture(scope="module")
def lora_server(tiny_loras, second_qwen_lora, lora_clip, tmp_path_factory):
    """serve on the Qwen2.5-VL checkpoint with two adapters, `tuned` and `other`; clients may read the clip's
    folder."""
    tiny = tiny_loras["qwen2_5_vl"]
    port, log = _free_port(), tmp_path_factory.mktemp("lora_server") / "server.log"
    command = [sys.executable, "-m", "vlm_app", "serve", "--models", str(tiny.checkpoint), "--lora",
               f"tuned={tiny.lora}", "--lora", f"other={second_qwen_lora}", "--port", str(port), "--device", "cpu",
               "--allow-dir", str(lora_clip.parent)]
    with running_server(command, {**os.environ, "HF_HUB_OFFLINE": "1"}, log, f"http://127.0.0.1:{port}/health"):
        yield f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def lora_client(lora_server):
    from openai import OpenAI

    return OpenAI(base_url=lora_server, api_key="unused", max_retries=0, timeout=120)


def _ask(client, model: str, clip) -> str:
    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"file://{clip}"}},
                                             {"type": "text", "text": "Describe this video."}]}]
    return client.chat.completions.create(model=model, messages=messages, **GENERATION).choices[0].message.content


def test_models_lists_the_base_and_each_adapter_under_its_name(lora_client, tiny_loras):
    base = tiny_loras["qwen2_5_vl"].checkpoint.name  # a folder is served by its name
    listed = {model.id: model.model_extra for model in lora_client.models.list()}
    assert list(listed) == [base, "tuned", "other"]
    assert listed["tuned"]["parent"] == listed["other"]["parent"] == base and "parent" not in listed[base]


def test_base_and_adapters_interleave_each_answer_the_clis(lora_client, tiny_loras, second_qwen_lora, lora_clip,
                                                           describe_json):
    tiny = tiny_loras["qwen2_5_vl"]
    base = tiny.checkpoint.name  # a folder is served by its name
    expected = {base: describe_json(lora_clip, tiny.checkpoint)["answer"],
                "tuned": describe_json(lora_clip, tiny.checkpoint, "--adapter", tiny.lora)["answer"],
                "other": describe_json(lora_clip, tiny.checkpoint, "--adapter", second_qwen_lora)["answer"]}
    assert len(set(expected.values())) == 3
    order = ["tuned", base, "other", "tuned", "other", base]
    answers: dict[int, str] = {}

    def ask(position: int, model: str) -> None:
        answers[position] = _ask(lora_client, model, lora_clip)

    threads = [threading.Thread(target=ask, args=item) for item in enumerate(order)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [answers[position] for position in range(len(order))] == [expected[model] for model in order]


@pytest.mark.parametrize("model", ["tuned=/tmp/elsewhere", "../tuned", "lora_0", "TUNED"])
def test_a_client_value_is_never_an_adapter_path(lora_client, tiny_loras, lora_clip, model):
    import openai

    with pytest.raises(openai.NotFoundError, match="not on offer here"):
        _ask(lora_client, model, lora_clip)
    with pytest.raises(openai.NotFoundError):
        _ask(lora_client, str(tiny_loras["qwen2_5_vl"].lora), lora_clip)


def test_serve_refuses_an_adapter_for_none_of_its_models(tiny_loras, cli_error):
    qwen, smol = tiny_loras["qwen2_5_vl"], tiny_loras["smolvlm2"]
    error = cli_error("serve", "--models", qwen.checkpoint, smol.checkpoint, "--lora",
                      f"tuned={tiny_loras['deepseek_vl2'].lora}")
    assert "none of the models on offer" in error
    assert "already a model's name" in cli_error("serve", "--models", "qwen2.5-vl-3b", "--lora",
                                                 f"qwen2.5-vl-3b={qwen.lora}")


# ---- the web app -------------------------------------------------------------------------------------------------
def test_compare_tab_offers_adapters_and_says_which_each_answer_used(tiny_loras, lora_clip, tmp_path, capsys):

    from vlm_app.cli import main
    from vlm_app.ui.answer import Settings
    from vlm_app.ui.app import create_app
    from vlm_app.ui.compare import CompareHandlers

    tiny = tiny_loras["qwen2_5_vl"]
    base = str(tiny.checkpoint)
    _, backend = create_app([base], allow_dirs=(str(lora_clip.parent),), votes_path=str(tmp_path / "votes.jsonl"),
                            device="cpu", loras=[f"tuned={tiny.lora}"])
    try:
        assert backend.models == [base, "tuned"] and ("tuned", "tuned") in backend.choices()
        message = {"text": "Describe this video.", "files": [str(lora_clip)]}
        settings = Settings(max_frames=4, max_new_tokens=10)
        finished = {}
        for position, record, run in CompareHandlers(backend).results(message, [base, "tuned"], settings, "s1"):
            if run is not None:
                finished[position] = record
        assert finished[0]["stats"]["lora"] is None
        assert finished[1]["stats"]["lora"] == f"tuned ({tiny.lora}), rank 4"
        assert len(backend.cache.loaded()) == 1  # the base, once, with its adapter
        for position, flags in ((0, []), (1, ["--adapter", str(tiny.lora)])):
            capsys.readouterr()
            assert main(["describe", str(lora_clip), "--model", base, "--max-frames", "4", "--max-new-tokens", "10",
                         "--device", "cpu", "--json", *flags]) == 0
            assert json.loads(capsys.readouterr().out)["answer"] == finished[position]["answer"]
    finally:
        backend.close()


def test_ui_refuses_a_malformed_lora_flag(tiny_loras, cli_error):
    assert "give NAME=PATH" in cli_error("ui", "--models", tiny_loras["qwen2_5_vl"].checkpoint, "--lora", "=x")

