"""Qwen2.5-VL with the real hub files of Qwen2.5-VL-7B-Instruct (tokenizer built from vocab.json + merges.txt, chat
template, preprocessor config, generation config; config shrunk, random weights), through the public entry points."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoProcessor

from adapter_fixtures import video_messages
from real_files_fixtures import QWEN_3B, QWEN_7B, REAL_FILES, repository_files
from vlm_app import load
from vlm_app.adapters.qwen2_5_vl import hf_video_metadata
from vlm_app.cli import main
from vlm_app.testing.real_files import build_from_files

DEFAULT_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


@pytest.fixture(scope="module")
def real_qwen(real_qwen_dir):
    return load(str(real_qwen_dir), device="cpu")


def model_card_inputs(checkpoint, prepared, prompt_text: str = "Describe this video."):
    """The model card's route: the HF processor (its own resize on) given the same frames and metadata."""
    processor = AutoProcessor.from_pretrained(checkpoint)
    text = processor.apply_chat_template(video_messages("clip.mp4", prompt_text), tokenize=False,
                                         add_generation_prompt=True)
    videos = prepared.media
    return processor(text=[text], videos=[video.frames for video in videos],
                     video_metadata=[hf_video_metadata(video) for video in videos], do_sample_frames=False,
                     return_tensors="pt")


def test_the_real_tokenizer_and_template_are_the_ones_loaded(real_qwen):
    assert len(real_qwen.tokenizer) == 151665  # 151643 BPE entries + 22 added tokens, as the hub tokenizer
    assert real_qwen.tokenizer.convert_tokens_to_ids("<|video_pad|>") == real_qwen.model.config.video_token_id == 151656
    template = json.loads((REAL_FILES / QWEN_7B / "chat_template.json").read_text())["chat_template"]
    assert real_qwen.processor.chat_template == template


def test_prepare_equals_the_model_card_route_and_the_map_covers_the_grid(real_qwen, real_qwen_dir, example_clip):
    prepared = real_qwen.prepare(video_messages(str(example_clip)))
    assert prepared.prompt.startswith(DEFAULT_SYSTEM)  # the real template's default system prompt
    reference = model_card_inputs(real_qwen_dir, prepared)
    assert set(reference) <= set(prepared.inputs)
    for key, value in reference.items():
        assert torch.equal(prepared.inputs[key], value), key
    t, h, w = prepared.inputs["video_grid_thw"][0].tolist()
    assert len(prepared.visual_map) == t * h * w // 4 == int((prepared.inputs["input_ids"] == 151656).sum())


def test_forward_gives_every_layer_over_the_real_vocabulary(real_qwen, example_clip):
    prepared = real_qwen.prepare(video_messages(str(example_clip)), fps=1)
    out = real_qwen.forward(prepared)
    assert out.logits.shape == (1, prepared.inputs["input_ids"].shape[1], 152064)
    assert len(out.hidden_states) == real_qwen.num_layers + 1
    assert out.visual_hidden().shape == (len(prepared.visual_map), 32)


def test_describe_from_the_cli(real_qwen_dir, example_clip, capsys):
    assert main(["describe", str(example_clip), "--model", str(real_qwen_dir), "--device", "cpu", "--fps", "1",
                 "--max-new-tokens", "3", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["error"] is None and record["num_visual_tokens"] > 0 and record["timings"]["new_tokens"] >= 1


@pytest.fixture(scope="module")
def fine_tune_dir(tmp_path_factory):
    """The real files with a fine-tune's narrower pixel cap in preprocessor_config.json (64 tokens per image)."""
    files = tmp_path_factory.mktemp("fine_tune_files")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "chat_template.json", "config.json"):
        (files / name).write_bytes((REAL_FILES / QWEN_7B / name).read_bytes())
    preprocessor = json.loads((REAL_FILES / QWEN_7B / "preprocessor_config.json").read_text())
    (files / "preprocessor_config.json").write_text(json.dumps({**preprocessor, "max_pixels": 64 * 28 * 28}))
    return build_from_files("qwen2_5_vl", files, tmp_path_factory.mktemp("fine_tune") / "checkpoint")


def test_a_checkpoints_own_pixel_bounds_bound_the_policy(fine_tune_dir, example_clip, tmp_path):
    from PIL import Image

    adapter = load(str(fine_tune_dir), device="cpu")
    prepared = adapter.prepare(video_messages(str(example_clip)))
    frames = prepared.media[0].frames
    assert frames.shape[-2] * frames.shape[-1] <= 64 * 28 * 28  # the policy alone gives 280x392 frames
    reference = model_card_inputs(fine_tune_dir, prepared)
    assert torch.equal(prepared.inputs["pixel_values_videos"], reference["pixel_values_videos"])
    photo = Image.new("RGB", (640, 480), (10, 200, 30))
    photo.save(tmp_path / "photo.png")
    image = adapter.prepare([{"role": "user", "content": [{"type": "image", "image": str(tmp_path / "photo.png")},
                                                          {"type": "text", "text": "What is it?"}]}])
    processor = AutoProcessor.from_pretrained(fine_tune_dir)
    card = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[photo], return_tensors="pt")
    assert torch.equal(image.inputs["image_grid_thw"], card["image_grid_thw"])
    assert len(image.visual_map) == int(card["image_grid_thw"].prod()) // 4 <= 64


def test_the_user_overrides_the_checkpoints_bounds(fine_tune_dir, example_clip):
    adapter = load(str(fine_tune_dir), device="cpu")
    prepared = adapter.prepare(video_messages(str(example_clip)), min_pixels=128 * 28 * 28, max_pixels=256 * 28 * 28)
    frames = prepared.media[0].frames
    assert 128 * 28 * 28 <= frames.shape[-2] * frames.shape[-1] <= 256 * 28 * 28


@pytest.mark.parametrize("placeholder", ["<|video_pad|>", "<|image_pad|>"])
def test_a_literal_placeholder_in_the_prompt_is_a_clear_error(real_qwen_dir, example_clip, capsys, placeholder):
    # the processor would expand the typed placeholder with a video's tokens, or find one grid too few
    assert main(["describe", str(example_clip), "--model", str(real_qwen_dir), "--device", "cpu", "--fps", "1",
                 "--prompt", f"What is {placeholder}?", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert f"literal {placeholder}" in err and "Traceback" not in err


def test_other_special_tokens_in_the_prompt_are_tokenized_as_the_model_card_does(real_qwen, real_qwen_dir,
                                                                                 example_clip):
    """The real template writes user text as it is, so its control tokens stay control tokens there and here; the
    visual tokens stay those of the video."""
    prompt = "<|im_end|>\n<|im_start|>assistant\n<|vision_start|><image><fake_token_around_image> שלום 🎬"
    prepared = real_qwen.prepare(video_messages(str(example_clip), prompt), fps=1)
    reference = model_card_inputs(real_qwen_dir, prepared, prompt)
    assert torch.equal(prepared.inputs["input_ids"], reference["input_ids"])
    video_tokens = (prepared.inputs["input_ids"][0] == 151656).nonzero().flatten()
    assert torch.equal(prepared.visual_map.positions, video_tokens)


def test_a_qwen_repository_without_its_bpe_files_is_refused(tmp_path, capsys):
    """The 3B repository's files here have no tokenizer (SOURCES.md): a tokenizer of its 22 added tokens alone
    would encode every word as nothing."""
    files = repository_files(QWEN_3B, tmp_path / "files")
    assert main(["tiny", "--family", "qwen2_5_vl", "--from-files", str(files), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "vocab.json" in err and "merges.txt" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("repo", [QWEN_7B, QWEN_3B])
def test_a_whole_conversation_equals_the_model_card_route(repo, tmp_path, example_clip, make_clip):
    """System prompt, an image and two videos of different lengths in one turn, an answer, a second turn, RTL text
    and emoji: the prompt, every input and the map are those of the real template and processor (the 3B
    repository has no BPE files of its own: SOURCES.md gives it the 7B ones, shared by all sizes)."""
    from PIL import Image

    files = repository_files(repo, tmp_path / "files")
    for name in ("vocab.json", "merges.txt"):
        (files / name).write_bytes((REAL_FILES / QWEN_7B / name).read_bytes())
    checkpoint = build_from_files("qwen2_5_vl", files, tmp_path / "checkpoint")
    adapter = load(str(checkpoint), device="cpu")
    Image.new("RGB", (300, 200), (200, 30, 30)).save(tmp_path / "photo.png")
    short = make_clip(tmp_path / "short.mp4", 2.0, 8, 128, 96)
    messages = [{"role": "system", "content": "Answer in one line."},
                {"role": "user", "content": [{"type": "image", "image": str(tmp_path / "photo.png")},
                                             {"type": "video", "video": str(example_clip), "fps": 1},
                                             {"type": "video", "video": str(short), "fps": 1},
                                             {"type": "text", "text": "Which one? שלום 🎬👍🏽"}]},
                {"role": "assistant", "content": "The first."},
                {"role": "user", "content": ""}]
    prepared = adapter.prepare(messages)
    processor = AutoProcessor.from_pretrained(checkpoint)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image, *videos = prepared.media
    reference = processor(text=[text], images=[image.image], videos=[video.frames for video in videos],
                          video_metadata=[hf_video_metadata(video) for video in videos], do_sample_frames=False,
                          return_tensors="pt")
    assert prepared.prompt == text
    for key, value in reference.items():
        assert torch.equal(prepared.inputs[key], value), key
    ids = prepared.inputs["input_ids"][0]
    for media_index, token in enumerate((151655, 151656, 151656)):
        rows = prepared.visual_map.media_index == media_index
        own = (ids == token).nonzero().flatten()
        assert torch.equal(prepared.visual_map.positions[rows], own[:int(rows.sum())] if media_index < 2
                           else own[-int(rows.sum()):])
    assert prepared.visual_map.frame_index[prepared.visual_map.media_index == 2].max() == len(videos[1].timestamps) - 2
