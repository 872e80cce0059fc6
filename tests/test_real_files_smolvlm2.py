"""SmolVLM2 with the real hub processor files of each size (processor_config.json, preprocessor_config.json with
`video_sampling`, chat_template.json, special tokens); tokenizer and weights are ours (none are public)."""

from __future__ import annotations

import json

import pytest

from adapter_fixtures import video_messages
from real_files_fixtures import SMOLVLM2_REPOS, repository_files
from vlm_app import load
from vlm_app.cli import main
from vlm_app.testing.real_files import build_from_files

REAL = {"256m": (512, 64), "500m": (512, 64), "2.2b": (384, 81)}  # longest video edge, image_seq_len


@pytest.fixture(scope="module")
def real_smol(real_smolvlm2_dirs):
    return {size: load(str(path), device="cpu") for size, path in real_smolvlm2_dirs.items()}


@pytest.mark.parametrize("size", sorted(REAL))
def test_sampling_and_sizes_come_from_the_real_files(real_smol, size, example_clip):
    adapter = real_smol[size]
    edge, seq_len = REAL[size]
    assert adapter.sampling_defaults("smolvlm2") == {"fps": 1, "max_frames": 64}
    assert adapter.processor.image_seq_len == seq_len
    prepared = adapter.prepare(video_messages(str(example_clip)))
    frames = len(prepared.media[0].frames_indices)
    assert prepared.inputs["pixel_values"].shape[-2:] == (edge, edge)
    assert len(prepared.visual_map) == frames * seq_len
    assert prepared.prompt.startswith("<|im_start|>User: <video>")


def test_video_sampling_is_read_from_the_checkpoint(tmp_path, make_clip):
    files = repository_files(SMOLVLM2_REPOS["256m"], tmp_path / "files")
    preprocessor = json.loads((files / "preprocessor_config.json").read_text())
    preprocessor["video_sampling"].update(fps=2, max_frames=6)
    (files / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    adapter = load(str(build_from_files("smolvlm2", files, tmp_path / "checkpoint")), device="cpu")
    clip = make_clip(tmp_path / "long.mp4", 20.0, 4, 64, 48)
    shown = adapter.load_media(video_messages(str(clip)), {})[0]
    assert len(shown.frames_indices) == 6 and adapter.sampling_defaults("smolvlm2") == {"fps": 2, "max_frames": 6}


def test_the_real_template_has_no_video_branch_and_videos_still_get_their_frames(real_smol, real_smolvlm2_dirs,
                                                                                  example_clip):
    template = json.loads((real_smolvlm2_dirs["500m"] / "chat_template.json").read_text())["chat_template"]
    assert "video" not in template
    adapter = real_smol["500m"]
    prepared = adapter.prepare(video_messages(str(example_clip)))
    text = adapter.tokenizer.decode(prepared.inputs["input_ids"][0])
    assert "Frame from 00:00" in text and text.count("<image>") == len(prepared.visual_map)


def test_a_fine_tunes_own_video_template_is_kept(real_smolvlm2_dirs, example_clip):
    adapter = load(str(real_smolvlm2_dirs["256m"]), device="cpu")
    adapter.processor.chat_template = (
        "<|im_start|>{% for message in messages %}Fine-tuned {{ message['role'] }}: "
        "{% for line in message['content'] %}"
        "{% if line['type'] == 'text' %}{{ line['text'] }}{% elif line['type'] == 'video' %}<video>{% endif %}"
        "{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")
    prepared = adapter.prepare(video_messages(str(example_clip)))
    assert prepared.prompt.startswith("<|im_start|>Fine-tuned user: <video>")


def test_a_literal_placeholder_in_the_prompt_is_a_clear_error(real_smolvlm2_dirs, example_clip, capsys):
    assert main(["describe", str(example_clip), "--model", str(real_smolvlm2_dirs["256m"]), "--device", "cpu",
                 "--prompt", "<image>What is shown?", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert "literal <image>" in err and "Traceback" not in err
