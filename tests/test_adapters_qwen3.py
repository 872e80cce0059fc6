"""Qwen3-VL / Qwen3.5: our inputs equal the model card's call on the same file for both policies, the markers carry
the frames' absolute times, and every front door runs the tiny checkpoints."""

from __future__ import annotations

import json
import os
import re
import sys
from types import SimpleNamespace

import pytest
import torch
from adapter_fixtures import video_messages
from test_media_real_clips import real_clip
from ui_fixtures import _free_port, running_server

from vlm_app.cli import main

ONE_GREY_LEVEL = 2 / 255 + 1e-6  # after normalisation with mean 0.5, std 0.5
FAST = ["--max-new-tokens", "4", "--device", "cpu"]
MARKER = re.compile(r"<(\d+\.\d) seconds>")


@pytest.fixture(scope="module")
def qwen3(qwen3_adapter):
    return qwen3_adapter


@pytest.fixture(scope="module")
def minute_clip(tmp_path_factory, make_clip):
    """130 s at 2 fps, 64x48: long enough for a segment from 60 s to 120 s."""
    return make_clip(tmp_path_factory.mktemp("qwen3_clips") / "minutes.mp4", 130.0, 2, 64, 48)


def model_card_inputs(processor, source: str, **processor_kwargs):
    """The model card's call: the processor decodes and samples the file itself."""
    messages = video_messages(source)
    return processor.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True,
                                         return_tensors="pt", processor_kwargs=processor_kwargs)


def assert_same_inputs(prepared, expected):
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "video_grid_thw"):
        assert torch.equal(prepared.inputs[key], expected[key]), key
    ours, theirs = prepared.inputs["pixel_values_videos"], expected["pixel_values_videos"]
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= ONE_GREY_LEVEL


@pytest.mark.parametrize("options, processor_kwargs", [
    ({}, {}),
    ({"fps": 1.0}, {"fps": 1}),
    ({"fps": 3.0}, {"fps": 3}),
    ({"nframes": 7}, {"num_frames": 7, "fps": None}),
    ({"max_pixels": 200_000}, {"size": {"shortest_edge": 4096, "longest_edge": 200_000}}),
    ({"cap_pixels_per_frame": True}, {"cap_pixels_per_frame": True}),
])
def test_default_policy_equals_the_model_card_call(qwen3, example_clip, options, processor_kwargs):
    prepared = qwen3.prepare(video_messages(str(example_clip), **options))
    assert_same_inputs(prepared, model_card_inputs(qwen3.processor, str(example_clip), **processor_kwargs))


@pytest.mark.parametrize("name", ["megamind_divx_avi", "vtest_msmpeg4_avi"])
def test_default_policy_on_real_clips(qwen3, name):
    """AVI files Debian ships: the same frames chosen, the same size and the same time text as the model card's call
    (the pixels are each decoder's: torchcodec seeks an AVI's packed frames to others, and converts colours with
    other rounding; our frames are the ones their indices name, tests/test_media_real_clips.py)."""
    path = str(real_clip(name))
    prepared = qwen3.prepare(video_messages(path, nframes=6))
    expected = model_card_inputs(qwen3.processor, path, num_frames=6, fps=None)
    for key in ("input_ids", "mm_token_type_ids", "video_grid_thw"):
        assert torch.equal(prepared.inputs[key], expected[key]), key


def test_variable_rate_clip_is_labelled_with_presentation_times(qwen3):
    """tree.avi's frames are not evenly spaced: index / fps is no time there, so the markers are the frames' own."""
    prepared = qwen3.prepare(video_messages(str(real_clip("tree_cinepak_avi")), nframes=6))
    video = prepared.media[0]
    assert video.metadata.is_vfr
    markers = [float(seconds) for seconds in MARKER.findall(qwen3.tokenizer.decode(prepared.inputs["input_ids"][0]))]
    pairs = [(video.timestamps[i] + video.timestamps[i + 1]) / 2 for i in range(0, 6, 2)]
    assert markers == [round(seconds, 1) for seconds in pairs]


def test_mpeg_ps_clip_that_the_reference_cannot_seek(qwen3):
    """cityCC0.mpg: the model card's decoder fails on it; ours decodes it counting frames."""
    path = str(real_clip("city_mpeg2_ps"))
    with pytest.raises(RuntimeError):
        model_card_inputs(qwen3.processor, path, num_frames=6, fps=None)
    prepared = qwen3.prepare(video_messages(path, nframes=6))
    assert prepared.inputs["video_grid_thw"][0, 0] == 3


def utils_reference(processor, source: str, **options):
    """qwen-vl-utils 0.0.14 with image_patch_size=16, fed to the processor without a second resize."""
    from qwen_vl_utils import fetch_video

    frames, metadata = fetch_video({"video": source, **options}, image_patch_size=16, return_video_metadata=True)
    messages = video_messages(source)
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return processor(text=[prompt], videos=[frames], video_metadata=[metadata], do_resize=False,
                     do_sample_frames=False, return_tensors="pt")


@pytest.mark.parametrize("options", [{}, {"fps": 1.0}, {"nframes": 6}, {"max_pixels": 200 * 32 * 32},
                                     {"video_start": 1.0, "video_end": 3.5}])
def test_utils_policy_equals_qwen_vl_utils(qwen3, example_clip, options):
    os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")
    prepared = qwen3.prepare(video_messages(str(example_clip), policy="qwen3_vl_utils", **options))
    expected = utils_reference(qwen3.processor, str(example_clip), **options)
    for key in ("input_ids", "mm_token_type_ids", "video_grid_thw", "pixel_values_videos"):
        assert torch.equal(prepared.inputs[key], expected[key]), key


def test_markers_are_the_frames_times_in_the_whole_video(qwen3, minute_clip):
    prepared = qwen3.prepare(video_messages(str(minute_clip), video_start=60.0, video_end=120.0, fps=0.5))
    video = prepared.media[0]
    markers = [float(seconds) for seconds in MARKER.findall(qwen3.tokenizer.decode(prepared.inputs["input_ids"][0]))]
    assert markers and min(markers) >= 60.0 and max(markers) <= 120.0
    pairs = [(video.timestamps[i] + video.timestamps[min(i + 1, len(video.timestamps) - 1)]) / 2
             for i in range(0, len(video.timestamps), 2)]
    assert markers == [round(seconds, 1) for seconds in pairs]
    assert qwen3.frame_labels(video) == [f"<{seconds:.1f} seconds>" for seconds in markers]


def test_visual_map_gives_each_token_its_frame_and_time(qwen3, example_clip):
    prepared = qwen3.prepare(video_messages(str(example_clip), nframes=5))
    t, h, w = prepared.inputs["video_grid_thw"][0].tolist()
    assert t == 3  # five frames: the processor repeats the last one
    vmap = prepared.visual_map
    assert len(vmap) == t * h * w // 4 == prepared.num_tokens.visual
    assert torch.equal(vmap.positions, (prepared.inputs["input_ids"][0] == qwen3.config.video_token_id).nonzero()[:, 0])
    assert sorted(set(vmap.frame_index.tolist())) == [0, 2, 4]
    assert vmap.timestamp[-1].item() == prepared.media[0].timestamps[4]


def test_logits_equal_the_plain_transformers_call(qwen3, example_clip):
    prepared = qwen3.prepare(video_messages(str(example_clip), fps=1.0))
    with torch.inference_mode():
        expected = qwen3.model(**prepared.inputs).logits
    out = qwen3.forward(prepared)
    assert torch.equal(out.logits, expected)
    assert len(out.hidden_states) == qwen3.num_layers + 1
    assert out.visual_hidden().shape == (prepared.num_tokens.visual, qwen3.config.text_config.hidden_size)


def test_qwen3_5_hybrid_generates(qwen3_checkpoints, example_clip):
    from vlm_app import load

    adapter = load(str(qwen3_checkpoints["qwen3_5"]), device="cpu")
    assert adapter.family == "qwen3_vl" and adapter.config.model_type == "qwen3_5"
    prepared = adapter.prepare(video_messages(str(example_clip), fps=1.0))
    assert_same_inputs(prepared, model_card_inputs(adapter.processor, str(example_clip), fps=1))
    generation = adapter.generate(prepared, max_new_tokens=3, min_new_tokens=3)
    assert len(generation.token_ids) == 3


def test_thinking_answer_excludes_the_reasoning(qwen3):
    assert qwen3.split_reasoning("<think>\nlook at frame 2\n</think>\n\nA dog runs.") == ("A dog runs.",
                                                                                        "look at frame 2")
    assert qwen3.split_reasoning("A dog runs.") == ("A dog runs.", None)


def test_thinking_checkpoint_record_keeps_reasoning_apart(qwen3_checkpoints, example_clip, capsys):
    model = str(qwen3_checkpoints["qwen3_vl_thinking"])
    assert main(["describe", str(example_clip), "--model", model, "--json", "--max-new-tokens", "12",
                 "--device", "cpu"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["error"] is None and "</think>" not in record["answer"]
    assert "reasoning" in record


@pytest.mark.parametrize("name", ["qwen3_vl", "qwen3_5"])
def test_describe_both_policies(qwen3_checkpoints, example_clip, capsys, name):
    model = str(qwen3_checkpoints[name])
    for policy in ("qwen3_vl", "qwen3_vl_utils"):
        assert main(["describe", str(example_clip), "--model", model, "--policy", policy, "--json", *FAST]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["error"] is None and record["sampling"]["policy"] == policy
        assert record["num_visual_tokens"] > 0 and len(record["frames_indices"]) == len(record["timestamps"])


def test_a_policy_of_another_family_is_refused(qwen3_checkpoints, example_clip, capsys):
    model = str(qwen3_checkpoints["qwen3_vl"])
    assert main(["describe", str(example_clip), "--model", model, "--policy", "smolvlm2", *FAST]) == 2
    assert "qwen3_vl samples video with the qwen3_vl or qwen3_vl_utils policy, not 'smolvlm2'" in \
        capsys.readouterr().err


def test_compare_qwen2_5_and_qwen3_on_the_same_frames(tiny_checkpoints, qwen3_checkpoints, example_clip, capsys):
    models = f"{tiny_checkpoints['qwen2_5_vl']},{qwen3_checkpoints['qwen3_vl']}"
    assert main(["compare", str(example_clip), "--models", models, "--policy", "qwen3_vl_utils", "--json",
                 *FAST]) == 0  # each model's own record: qwen2_5_vl has no such policy
    refused, answered = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert refused["error"] == "qwen2_5_vl samples video with the qwen2_5_vl policy, not 'qwen3_vl_utils'"
    assert answered["error"] is None and answered["sampling"]["policy"] == "qwen3_vl_utils"
    assert main(["compare", str(example_clip), "--models", models, "--json", "--nframes", "6", *FAST]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [record["error"] for record in records] == [None, None]
    assert records[0]["frames_indices"] != [] and len(records[1]["frames_indices"]) == 6


def test_inspect_prints_the_timestamp_text(qwen3_checkpoints, example_clip, capsys):
    assert main(["inspect", str(example_clip), "--model", str(qwen3_checkpoints["qwen3_vl"]), "--fps", "1",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["family"] == "qwen3_vl" and report["policy"] == "qwen3_vl" and report["num_frames"] == 4
    assert report["frame_labels"] == ["<0.7 seconds>", "<3.3 seconds>"]
    assert main(["inspect", str(example_clip), "--fps", "1"]) == 0
    assert "the model reads: <0.7 seconds> <3.3 seconds>" in capsys.readouterr().out


def test_chapters_markers_carry_the_whole_videos_time(qwen3_checkpoints, minute_clip, capsys):
    assert main(["describe", str(minute_clip), "--model", str(qwen3_checkpoints["qwen3_vl"]), "--chapters",
                 "--segment-seconds", "60", "--fps", "0.25", "--json", *FAST]) == 0
    record = json.loads(capsys.readouterr().out)
    second = record["segments"][1]
    assert second["start"] == 60 and min(second["timestamps"]) >= 60
    assert record["error"] is None


def test_ui_chat_answers_with_qwen3(qwen3_checkpoints, ui_clip, tmp_path):
    from vlm_app.ui.backend import Backend
    from vlm_app.ui.chat import ChatHandlers
    from vlm_app.ui.limits import UploadPolicy

    policy = UploadPolicy(max_file_mb=1, max_duration_s=6, upload_dir=str(ui_clip.parent))
    backend = Backend([str(qwen3_checkpoints["qwen3_5"])], policy, str(tmp_path / "votes.jsonl"), device="cpu")
    try:
        history = [{"role": "user", "content": [{"type": "file", "file": {"path": str(ui_clip)}},
                                                {"type": "text", "text": "Describe."}]}]
        values = [None, None, None, None, None, 4, 0.0, 1.0, 0, ""]
        outputs = list(ChatHandlers(backend).respond(SimpleNamespace(session_hash="q3"), history, backend.models[0],
                                                     True, *values))
        shown, gallery, stats = outputs[-1][:3]
        assert shown[-1]["role"] == "assistant" and gallery and "| new tokens | 4 |" in stats
    finally:
        backend.close()


def test_serve_answers_video_url_with_vllm_sampling_names(qwen3_checkpoints, example_clip, tmp_path):
    from openai import OpenAI

    port = _free_port()
    models = [str(qwen3_checkpoints["qwen3_vl"]), str(qwen3_checkpoints["qwen3_5"])]
    command = [sys.executable, "-m", "vlm_app", "serve", "--models", *models, "--host", "127.0.0.1",
               "--port", str(port), "--allow-dir", str(example_clip.parent), "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with running_server(command, env, tmp_path / "serve.log", f"http://127.0.0.1:{port}/health"):
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
        served = [model.id for model in client.models.list().data]
        sampling = [{"mm_processor_kwargs": {"fps": 1}}, {"media_io_kwargs": {"video": {"num_frames": 4}}}]
        for model, extra in zip(served, sampling):
            reply = client.chat.completions.create(
                model=model, max_tokens=3,
                messages=[{"role": "user", "content": [
                    {"type": "video_url", "video_url": {"url": f"file://{example_clip}"}},
                    {"type": "text", "text": "Describe."}]}],
                extra_body=extra)
            assert reply.choices[0].message.content is not None and reply.usage.completion_tokens == 3


def test_one_frame_clip_is_a_pair(qwen3, make_clip, tmp_path):
    clip = make_clip(tmp_path / "one.mp4", 1 / 24, 24, 96, 64)
    with pytest.raises(ValueError, match="must be larger than temporal_factor"):
        model_card_inputs(qwen3.processor, str(clip))
    prepared = qwen3.prepare(video_messages(str(clip)))
    assert prepared.media[0].frames_indices == [0, 0] and "repeated to 2" in prepared.media[0].notes[0]
    assert prepared.inputs["video_grid_thw"][0, 0] == 1


@pytest.mark.parametrize("repo", ["Qwen__Qwen3-VL-2B-Instruct", "Qwen__Qwen3.5-0.8B"])
def test_tiny_processor_settings_are_the_hub_files(qwen3, repo):
    """The tiny checkpoints' processor is configured as the verified hub files (tests/fixtures/real_checkpoint_files)."""
    from real_files_fixtures import REAL_FILES

    for name, ours in (("video_preprocessor_config.json", qwen3.processor.video_processor),
                       ("preprocessor_config.json", qwen3.processor.image_processor)):
        hub = json.loads((REAL_FILES / repo / name).read_text())
        for key in ("size", "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std"):
            value = getattr(ours, key)
            assert (list(value) if isinstance(value, tuple) else value) == hub[key], (name, key)


def test_real_size_2b_is_the_hub_config():
    from real_files_fixtures import REAL_FILES

    from vlm_app.bench.model import real_model

    _, config, _, _ = real_model("qwen3_vl", "2b")
    hub = json.loads((REAL_FILES / "Qwen__Qwen3-VL-2B-Instruct" / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "vocab_size", "max_position_embeddings", "tie_word_embeddings"):
        assert getattr(config.text_config, key) == hub["text_config"][key], key
    for key in ("depth", "hidden_size", "intermediate_size", "num_heads", "deepstack_visual_indexes",
                "num_position_embeddings", "out_hidden_size", "patch_size"):
        assert getattr(config.vision_config, key) == hub["vision_config"][key], key


@pytest.mark.parametrize("model_type", ["qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"])
def test_every_qwen3_model_type_is_this_family(tmp_path, model_type):
    from vlm_app.adapters.registry import family_of

    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    assert family_of(str(tmp_path)) == "qwen3_vl"


@pytest.mark.parametrize("name, family", [("qwen3-vl-8b-thinking", "qwen3_vl"), ("qwen3.5-0.8b", "qwen3_vl"),
                                          ("Qwen/Qwen3.6-35B-A3B", "qwen3_vl"), ("Qwen/Qwen3-VL-30B-A3B-Instruct", "qwen3_vl"),
                                          ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl")])
def test_short_names_and_hub_ids_find_the_family(name, family):
    from vlm_app.adapters.registry import family_of

    assert family_of(name) == family
