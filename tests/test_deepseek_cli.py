"""DeepSeek-VL2 through the front doors (`describe`, `compare`, the Python API) on a tiny checkpoint: the answer
budget the caller generates with is the one the frame count leaves room for."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vlm_app import describe
from vlm_app.cli import main
from vlm_app.messages import conversation

PROMPT = "Describe this video."


@pytest.fixture(scope="module")
def deepseek_dir(tiny_deepseek_dirs) -> str:
    return str(tiny_deepseek_dirs["tiny"])


def _frames_for(adapter, video, max_new_tokens: int) -> int:
    return adapter.frame_budget(conversation(PROMPT, video=str(video)), max_new_tokens)


def test_describe_sizes_frames_by_max_new_tokens(deepseek_dir, deepseek_adapter, deepseek_long_video, capsys):
    # 16 answer tokens leave room for more frames than the family's default budget (512) would
    assert _frames_for(deepseek_adapter, deepseek_long_video, 16) > \
        _frames_for(deepseek_adapter, deepseek_long_video, 512)
    assert main(["describe", str(deepseek_long_video), "--model", deepseek_dir, "--max-new-tokens", "16",
                 "--device", "cpu", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["error"] is None and record["model_info"]["family"] == "deepseek_vl2"
    assert len(record["frames_indices"]) == _frames_for(deepseek_adapter, deepseek_long_video, 16)
    assert record["num_tokens"]["total"] + 16 <= deepseek_adapter.context_tokens
    assert record["num_visual_tokens"] == 421 * len(record["frames_indices"])
    assert 1 <= record["timings"]["new_tokens"] <= 16


def test_api_describe_passes_the_budget_too(deepseek_adapter, deepseek_long_video):
    record = describe(str(deepseek_long_video), model=deepseek_adapter, prompt=PROMPT,
                      generation={"max_new_tokens": 60})
    assert record["error"] is None
    frames = len(record["frames_indices"])
    assert frames == _frames_for(deepseek_adapter, deepseek_long_video, 60)
    assert frames != _frames_for(deepseek_adapter, deepseek_long_video, 512)
    assert record["num_tokens"]["total"] + 60 <= deepseek_adapter.context_tokens


def test_describe_plain_text_with_a_deepseek_checkpoint(deepseek_dir, example_clip, capsys):
    assert main(["describe", str(example_clip), "--model", deepseek_dir, "--max-new-tokens", "4",
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip()  # the (random-weight) answer


def test_compare_qwen_and_deepseek(tiny_checkpoints, deepseek_dir, example_clip, capsys):
    models = f"{tiny_checkpoints['qwen2_5_vl']},{deepseek_dir}"
    assert main(["compare", str(example_clip), "--models", models, "--max-new-tokens", "4", "--device", "cpu",
                 "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["model_info"]["family"] for r in records] == ["qwen2_5_vl", "deepseek_vl2"]
    assert all(r["error"] is None for r in records)
    assert len(records[1]["frames_indices"]) == 4 and records[1]["num_visual_tokens"] == 4 * 421  # 4 s at 1 fps
    assert main(["compare", str(example_clip), "--models", models, "--max-new-tokens", "4", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert f"[{deepseek_dir}]" in table and "1684" in table


GROUNDED = ("<|ref|>the red square<|/ref|><|det|>[[100,200,400,600]]<|/det|> under "
            "<|ref|>the sky<|/ref|><|det|>[[0,0,999,300],[500,0,999,150]]<|/det|>")


@pytest.fixture
def grounded_generation(deepseek_dir, monkeypatch):
    """The model's generate replaced by one that streams the ids of a grounded answer (then end of sentence):
    decoding, parsing and drawing are what is tested, and random weights never ground anything."""
    import torch

    from vlm_app.models.deepseek_vl2 import DeepseekVLV2ForCausalLM, DeepseekVLV2Processor

    tokenizer = DeepseekVLV2Processor.from_pretrained(deepseek_dir).tokenizer
    answer = tokenizer.encode(GROUNDED, add_special_tokens=False) + [tokenizer.eos_token_id]

    def generate(self, input_ids=None, streamer=None, **kwargs):
        streamer.put(input_ids)
        for token in answer:
            streamer.put(torch.tensor([token]))
        streamer.end()
    monkeypatch.setattr(DeepseekVLV2ForCausalLM, "generate", generate)


def test_describe_image_records_and_draws_grounding_boxes(deepseek_dir, grounded_generation, tmp_path, capsys):
    image, drawn = tmp_path / "scene.png", tmp_path / "boxes.png"
    Image.new("RGB", (400, 300), (40, 90, 200)).save(image)
    assert main(["describe", str(image), "--model", deepseek_dir, "--prompt", "<|grounding|>Where is the square?",
                 "--boxes-out", str(drawn), "--json", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record["answer"] == GROUNDED  # the tags survive decoding; the end of sentence does not
    assert record["boxes"] == [{"label": "the red square", "box": [100, 200, 400, 600]},
                               {"label": "the sky", "box": [0, 0, 999, 300]},
                               {"label": "the sky", "box": [500, 0, 999, 150]}]
    assert record["frames_indices"] == [] and record["num_visual_tokens"] > 0
    assert "boxes: 3 drawn" in captured.err
    with Image.open(drawn) as out:
        assert out.size == (400, 300)
        square_left_edge = (round(100 / 999 * 400), round(500 / 999 * 300))  # 40, 150
        assert out.getpixel(square_left_edge) == (0xE6, 0x19, 0x4B)  # the first label's colour
        assert out.getpixel((100, 120)) == (40, 90, 200)  # inside the square: untouched


def test_boxes_out_needs_an_image(deepseek_dir, example_clip, capsys):
    assert main(["describe", str(example_clip), "--model", deepseek_dir, "--boxes-out", "x.png"]) == 2
    assert "--boxes-out draws on an image" in capsys.readouterr().err
